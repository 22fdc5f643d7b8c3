// Compiled as a program of its own, and only this file is checked: @openfeature/server-sdk 1.23's
// own declarations do not compile against @types/node 26 (`EventEmitter<[never]>`), which is
// theirs to fix; what is checked here is the provider as a user of ours writes it.
import { expectTypeOf } from 'expect-type';
import { OpenFeature } from '@openfeature/server-sdk';
import { featureFlags } from 'express-perimeter/feature-flags';
import { PerimeterProvider } from 'express-perimeter/openfeature';

const flags = featureFlags({ flags: { 'new-ui': { enabled: true, percentage: 20 } } });
const provider = new PerimeterProvider(flags);
void OpenFeature.setProviderAndWait(provider);
const client = OpenFeature.getClient();
expectTypeOf(client.getBooleanValue('new-ui', false, { targetingKey: 'user-1' })).toEqualTypeOf<Promise<boolean>>();

export { provider };
