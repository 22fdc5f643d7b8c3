import { redisUrl } from '../helpers/app';
import { describeFuzzStack } from './helpers-fuzz-stack';

// Issue #11: the permanent hostile suite, with every store on the test Redis (its own key prefix).
// Generous: a run stops early on a dead server (tooManyLost), so this only bounds a run on a badly overloaded machine.
jest.setTimeout(600_000);

if (redisUrl === undefined) {
  describe.skip('hostile fuzz: the whole stack on Redis (#11): no test Redis', () => undefined);
} else {
  describeFuzzStack('hostile fuzz: the whole stack on Redis (#11)', { kind: 'redis', redis: redisUrl, batches: 4, perBatch: 1_250, heap: true });
}
