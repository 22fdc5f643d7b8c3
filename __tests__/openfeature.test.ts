import { ErrorCode, OpenFeature, ProviderEvents, type EventDetails } from '@openfeature/server-sdk';
import request from 'supertest';
import { createStack, featureFlags } from '../index';
import { MemoryStores } from '../lib/stores';
import { contextFromRequest, PerimeterProvider } from '../openfeature';
import { eventually, newApp, recordingLogger } from './helpers/app';

const FLAGS = {
  everyone: {},
  killed: { enabled: false },
  pro: { plans: ['pro'] },
  rollout: { percentage: 50 },
  eu: { countries: ['DE', 'FR'], tenants: ['acme'] },
  de: { countries: ['DE'] },
  vip: { users: ['u-vip'] },
  beta: { beta: true, routes: ['/api/v2'] },
};

afterEach(async () => {
  await OpenFeature.clearProviders();
});

describe('PerimeterProvider through the OpenFeature SDK', () => {
  it('answers getBooleanValue from the flags, with OpenFeature reasons', async () => {
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    const client = OpenFeature.getClient();
    expect(await client.getBooleanValue('everyone', false)).toBe(true);
    expect(await client.getBooleanDetails('everyone', false)).toMatchObject({ value: true, reason: 'STATIC', variant: 'on' });
    expect(await client.getBooleanDetails('killed', true)).toMatchObject({ value: false, reason: 'DISABLED' });
    expect(await client.getBooleanDetails('pro', false, { targetingKey: 'u1', plan: 'pro' })).toMatchObject({ value: true, reason: 'TARGETING_MATCH' });
    expect(await client.getBooleanDetails('pro', true, { targetingKey: 'u1', plan: 'free' })).toMatchObject({ value: false, reason: 'DEFAULT' });
    expect(await client.getBooleanDetails('vip', false, { targetingKey: 'u-vip' })).toMatchObject({ value: true, reason: 'TARGETING_MATCH' });
    expect(await client.getBooleanValue('eu', false, { tenant: 'acme', country: 'de' })).toBe(true);
    expect(await client.getBooleanValue('eu', false, { tenant: 'acme', country: 'US' })).toBe(false);
    expect(await client.getBooleanValue('beta', false, { beta: true, route: '/api/v2/games' })).toBe(true);
    expect(await client.getBooleanValue('beta', false, { beta: true, route: '/api/v1/games' })).toBe(false);
  });

  it('splits the rollout by targetingKey (else ip) with reason SPLIT, sticky per user', async () => {
    const provider = new PerimeterProvider({ flags: FLAGS });
    await OpenFeature.setProviderAndWait(provider);
    const client = OpenFeature.getClient();
    let on = 0;
    for (let i = 0; i < 400; i++) {
      const details = await client.getBooleanDetails('rollout', false, { targetingKey: `user-${i}` });
      expect(details.reason).toBe('SPLIT');
      expect(await client.getBooleanValue('rollout', !details.value, { targetingKey: `user-${i}` })).toBe(details.value);
      if (details.value) on++;
    }
    expect(on).toBeGreaterThan(140);
    expect(on).toBeLessThan(260);
    const byIp = await client.getBooleanValue('rollout', false, { ip: '203.0.113.9' });
    expect(await client.getBooleanValue('rollout', !byIp, { ip: '203.0.113.9' })).toBe(byIp);
  });

  it('returns the default with FLAG_NOT_FOUND for an unknown flag, and TYPE_MISMATCH for non-boolean lookups', async () => {
    await OpenFeature.setProviderAndWait(new PerimeterProvider({ flags: FLAGS }));
    const client = OpenFeature.getClient();
    expect(await client.getBooleanDetails('missing', true)).toMatchObject({ value: true, reason: 'ERROR', errorCode: ErrorCode.FLAG_NOT_FOUND });
    expect(await client.getStringDetails('everyone', 'dflt')).toMatchObject({ value: 'dflt', reason: 'ERROR', errorCode: ErrorCode.TYPE_MISMATCH });
    expect(await client.getNumberDetails('everyone', 7)).toMatchObject({ value: 7, errorCode: ErrorCode.TYPE_MISMATCH });
    expect(await client.getObjectDetails('everyone', { a: 1 })).toMatchObject({ value: { a: 1 }, errorCode: ErrorCode.TYPE_MISMATCH });
    expect(await client.getStringDetails('missing', 'dflt')).toMatchObject({ value: 'dflt', errorCode: ErrorCode.FLAG_NOT_FOUND });
  });

  it("agrees with req.features on a stack's flags, through contextFromRequest(req)", async () => {
    const stack = createStack({ logger: recordingLogger().logger, featureFlags: { flags: FLAGS } });
    await OpenFeature.setProviderAndWait(new PerimeterProvider(stack.middleware.featureFlags));
    const client = OpenFeature.getClient();
    const app = newApp();
    app.use((req, _res, next) => {
      const id = req.headers['x-user'];
      if (typeof id === 'string') req.user = { id, plan: 'pro', beta: true } as never;
      next();
    });
    app.use(stack);
    app.get('/api/v2/check', async (req, res) => {
      const ctx = contextFromRequest(req);
      const names = Object.keys(FLAGS);
      const viaSdk = await Promise.all(names.map((n) => client.getBooleanValue(n, false, ctx)));
      res.json({ ctx, sdk: Object.fromEntries(names.map((n, i) => [n, viaSdk[i]])), features: req.features?.all() });
    });
    app.use(stack.errorHandler);
    for (const user of ['u1', 'u2', 'u3', 'u4', 'u5', 'u6']) {
      const res = await request(app).get('/api/v2/check').set('X-User', user).set('CF-IPCountry', 'DE').expect(200);
      expect(res.body.sdk).toEqual(res.body.features);
      expect(res.body.ctx).toMatchObject({ targetingKey: user, plan: 'pro', country: 'DE', beta: true, route: '/api/v2/check' });
    }
    await stack.close();
  });

  it('waits for the first load of a shared source, and emits PROVIDER_CONFIGURATION_CHANGED when flags change', async () => {
    const stores = new MemoryStores();
    const flags = featureFlags({ source: 'redis', stores });
    await flags.ready();
    await flags.set('late', { plans: ['pro'] });

    const provider = new PerimeterProvider({ source: 'redis', stores });
    await OpenFeature.setProviderAndWait(provider);
    const client = OpenFeature.getClient();
    expect(await client.getBooleanValue('late', false, { plan: 'pro' })).toBe(true);

    const seen: Array<EventDetails<ProviderEvents.ConfigurationChanged> | undefined> = [];
    client.addHandler(ProviderEvents.ConfigurationChanged, (details) => seen.push(details));
    await flags.set('late', { plans: ['enterprise'] });
    await eventually(() => expect(seen.some((d) => d?.flagsChanged?.includes('late'))).toBe(true));
    expect(await client.getBooleanValue('late', false, { plan: 'pro' })).toBe(false);
    await flags.close();
  });
});
