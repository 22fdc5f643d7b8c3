import type { Express, RequestHandler } from 'express';
import request from 'supertest';
import { ConfigError, errorNormalizer, ipFilter, rateLimit, requestId, type AuditRecord } from '../index';
import { canonicalClientAddress } from '../lib/ip-list';
import { MemoryStores } from '../lib/stores';
import { closeStacks, eventually, newApp, stackApp } from './helpers/app';

afterEach(closeStacks);

/** `middleware` alone behind requestId, with Express trusting `trust` (every test here is behind a proxy). */
function aloneWith(middleware: RequestHandler, trust: boolean | string = true): Express {
  const app = newApp();
  app.set('trust proxy', trust);
  app.use(requestId());
  app.use(middleware);
  app.use((req, res) => {
    res.json({ ip: req.context.ip });
  });
  app.use(errorNormalizer());
  return app;
}

const from = (app: Express, forwarded: string, path = '/') => request(app).get(path).set('X-Forwarded-For', forwarded);

// Every spelling a proxy may forward for one client, and the one value the stack uses for it.
const V4_FORMS = [
  '198.51.100.9',
  '198.51.100.9:1234',
  '198.51.100.9:0',
  '198.51.100.9:65535',
  '[198.51.100.9]',
  '[198.51.100.9]:80',
  '198.51.100.9%eth0',
  '::ffff:198.51.100.9',
  '::FFFF:198.51.100.9',
  '[::ffff:198.51.100.9]:443',
  '::ffff:c633:6409',
  '0:0:0:0:0:ffff:198.51.100.9',
];
const V6_FORMS = [
  '2001:db8::1',
  '2001:DB8:0:0:0:0:0:1',
  '2001:0db8:0000::0001',
  '[2001:db8::1]',
  '[2001:db8::1]:443',
  '2001:db8::1%eth0',
  '[2001:db8::1%eth0]:443',
];
const FORMS: Array<[string, string]> = [
  ...V4_FORMS.map((form): [string, string] => [form, '198.51.100.9']),
  ...V6_FORMS.map((form): [string, string] => [form, '2001:db8::1']),
  ['fe80::1%eth0', 'fe80::1'],
  ['7.7.7.7%a', '7.7.7.7'],
  ['::1', '::1'],
];

// Nothing an address can be read from: refused, never an unknown client let through.
const GARBAGE: Array<[string, string]> = [
  ['a word', 'unknown'],
  ['an RFC 7239 obfuscated name', '_hidden'],
  ['five parts', '1.2.3.4.5'],
  ['an IPv4-mapped address with an octet over 255', '::ffff:999.1.1.1'],
  ['a very long value', '1'.repeat(5000)],
  ['a long run of colons', ':'.repeat(200)],
  ['a port out of range', '198.51.100.9:65536'],
  ['an empty port', '198.51.100.9:'],
  ['an unclosed bracket', '[2001:db8::1'],
  ['text after the brackets', '[2001:db8::1]x'],
  ['an IPv6 address with a bare port', '[2001:db8::1]:'],
  ['an empty zone', 'fe80::1%'],
  ['a zone with a space in it', 'fe80::1%eth 0'],
  ['an octal-looking IPv4 address', '010.0.0.1'],
  ['a shortened IPv4 address', '127.1'],
  ['a hex IPv4 address', '0x7f.0.0.1'],
  ['a decimal IPv4 number', '2130706433'],
  ['a hostname', 'client.example.com'],
  ['brackets around nothing', '[]'],
];

describe('client address normalisation (#11)', () => {
  it.each(FORMS)('reads %s as %s', (form, canonical) => {
    expect(canonicalClientAddress(form)).toBe(canonical);
  });

  it.each([...GARBAGE, ['an empty value', ''], ['no value', undefined]])('reads nothing from %s', (_name, value) => {
    expect(canonicalClientAddress(value)).toBeUndefined();
  });

  it.each(FORMS)('gives req.context.ip %s as %s behind a trusted proxy', async (form, canonical) => {
    const res = await from(aloneWith((_req, _res, next) => next()), form).expect(200);
    expect(res.body.ip).toBe(canonical);
  });

  it('takes the client entry a trusted proxy appended, whatever its spelling', async () => {
    const app = aloneWith((_req, _res, next) => next(), 'loopback');
    const res = await from(app, '203.0.113.50, [198.51.100.9]:1234').expect(200);
    expect(res.body.ip).toBe('198.51.100.9');
  });
});

describe('ipFilter meets every spelling of a client (#11)', () => {
  const deny = ipFilter({ deny: ['198.51.100.9', '2001:db8::1', 'fe80::1', '7.7.7.7', '::1'], stores: new MemoryStores() });

  it.each(FORMS)('denies %s through a deny list naming %s', async (form) => {
    const res = await from(aloneWith(deny), form).expect(403);
    expect(res.body.error).toMatchObject({ code: 'IP_BLOCKED', details: { reason: 'denied' }, request_id: res.headers['x-request-id'] });
  });

  const blocking = ipFilter({ stores: new MemoryStores() });
  beforeAll(async () => {
    for (const ip of ['198.51.100.9', '2001:db8::1', 'fe80::1', '7.7.7.7', '::1']) await blocking.block(ip);
  });

  it.each(FORMS)('keeps %s out once %s is blocked at run time', async (form) => {
    const res = await from(aloneWith(blocking), form).expect(403);
    expect(res.body.error).toMatchObject({ code: 'IP_BLOCKED', details: { reason: 'blocked' } });
  });

  it.each(FORMS)('lets %s through an allow list naming %s', async (form) => {
    const allow = ipFilter({ allow: ['198.51.100.9', '2001:db8::1', 'fe80::1', '7.7.7.7', '::1'], stores: new MemoryStores() });
    await from(aloneWith(allow), form).expect(200);
  });
});

describe('rateLimit counts every spelling of a client in one bucket (#11)', () => {
  it.each(FORMS.filter(([form, canonical]) => form !== canonical))('counts %s with %s', async (form, canonical) => {
    const app = aloneWith(rateLimit({ limit: 1, window: '1m', key: 'ip' }));
    await from(app, canonical).expect(200);
    const res = await from(app, form).expect(429);
    expect(res.body.error.code).toBe('RATE_LIMIT_EXCEEDED');
  });

  it('counts the spellings of the issue report in one bucket', async () => {
    const app = aloneWith(rateLimit({ limit: 3, window: '1m', key: 'ip' }));
    await from(app, '7.7.7.7').expect(200);
    await from(app, '7.7.7.7:1').expect(200);
    await from(app, '7.7.7.7%a').expect(200);
    await from(app, '[7.7.7.7]:2').expect(429);
    await from(app, '7.7.7.8').expect(200);
  });
});

function expectInvalidAddress(res: request.Response): void {
  expect(res.status).toBe(400);
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.body).toEqual({
    error: {
      code: 'BAD_REQUEST',
      message: 'The client address of this request is not a valid IP address.',
      request_id: res.headers['x-request-id'],
      details: { reason: 'invalid_client_address' },
    },
  });
}

describe('a client address that cannot be parsed is refused with 400 (#11)', () => {
  it.each(GARBAGE)('ipFilter refuses %s', async (_name, value) => {
    expectInvalidAddress(await from(aloneWith(ipFilter({ stores: new MemoryStores() })), value));
  });

  it.each(GARBAGE)('rateLimit refuses %s instead of counting it as one more client', async (_name, value) => {
    expectInvalidAddress(await from(aloneWith(rateLimit({ limit: 100, window: '1m' })), value));
  });

  it.each(GARBAGE)('the stack refuses %s before any route runs, and logs the 400', async (_name, value) => {
    let ran = false;
    const { app, lines } = stackApp({ trustProxy: true }, (a) => {
      a.get('/', (_req, res) => {
        ran = true;
        res.send('ok');
      });
    });
    const res = await from(app, value);
    expectInvalidAddress(res);
    expect(ran).toBe(false);
    const line = lines.find((l) => l.message === 'Request completed');
    expect(line).toMatchObject({ status_code: 400, request_id: res.headers['x-request-id'] });
    expect(line?.ip).toBeUndefined();
  });

  it('the stack refuses at the rate limiter when ipFilter is off', async () => {
    const { app } = stackApp({ trustProxy: true, ipFilter: false, rateLimit: { limit: 100, window: '1m' } }, (a) => {
      a.get('/', (_req, res) => {
        res.send('ok');
      });
    });
    expectInvalidAddress(await from(app, 'unknown'));
  });

  it('a user-keyed limit needs no address, so it lets a signed-in user through', async () => {
    const signIn: RequestHandler = (req, _res, next) => {
      req.user = { id: 'u1' };
      next();
    };
    const app = newApp();
    app.set('trust proxy', true);
    app.use(requestId(), signIn, rateLimit({ limit: 5, window: '1m', key: 'user' }));
    app.get('/', (_req, res) => {
      res.send('ok');
    });
    app.use(errorNormalizer());
    await from(app, 'unknown').expect(200);
  });

  it('takes an empty X-Forwarded-For as no hop at all (the peer is the client), as Express does', async () => {
    const res = await from(aloneWith(ipFilter({ stores: new MemoryStores() })), '').expect(200);
    expect(res.body.ip).toBe('127.0.0.1');
  });

  it('ignores a junk X-Forwarded-For while trust proxy is off (the socket address is the client)', async () => {
    const res = await from(aloneWith(ipFilter({ stores: new MemoryStores() }), false), 'unknown').expect(200);
    expect(res.body.ip).toBe('127.0.0.1');
  });
});

describe('one client address across the stack (#11)', () => {
  it('logs, audits and keys the canonical address', async () => {
    const records: AuditRecord[] = [];
    const { app, lines } = stackApp(
      { trustProxy: true, auditLog: { sink: (record: AuditRecord) => void records.push(record) }, rateLimit: { limit: 2, window: '1m', key: 'ip' } },
      (a) => {
        a.post('/games', (req, res) => {
          res.status(201).json({ id: 'g1', ip: req.context.ip });
        });
      },
    );
    const post = (forwarded: string) => request(app).post('/games').set('X-Forwarded-For', forwarded);
    const created = await post('[2001:DB8::1]:443').expect(201);
    expect(created.body.ip).toBe('2001:db8::1');
    await post('2001:db8::1%eth0').expect(201);
    await post('2001:0db8::1').expect(429);
    const logged = lines.filter((l) => l.message === 'Request completed').map((l) => l.ip);
    expect(logged).toEqual(['2001:db8::1', '2001:db8::1', '2001:db8::1']);
    await eventually(() => expect(records.map((r) => r.ip)).toEqual(['2001:db8::1', '2001:db8::1']));
  });
});

describe('addresses in ipFilter rules are read as strictly as client addresses (#11)', () => {
  it.each(['010.0.0.1', '127.1', '0x7f.0.0.1', '2130706433', '010.0.0.0/8', '1.2.3.4:80', '[::1]'])('refuses %s in a deny list at setup', (entry) => {
    expect(() => ipFilter({ deny: [entry] })).toThrow(ConfigError);
    expect(() => ipFilter({ deny: [entry] })).toThrow(/ipFilter\.deny: '.*' is not an IPv4\/IPv6 address or CIDR/);
  });

  it.each(['010.0.0.1', '127.1', 'unknown'])('refuses block(%s)', async (ip) => {
    await expect(ipFilter({ stores: new MemoryStores() }).block(ip)).rejects.toThrow(ConfigError);
  });

  it.each(['10.0.0.0/8', '::ffff:10.0.0.0/104', '2001:db8::/32', 'fe80::1%eth0', '::ffff:10.0.0.1'])('accepts %s', (entry) => {
    expect(() => ipFilter({ deny: [entry] })).not.toThrow();
  });
});
