import { describeRedis, redisUrl } from '../helpers/app';
import { describeFuzzStack } from './helpers-fuzz-stack';

// Issue #11: the permanent hostile suite, with every store on the test Redis (its own key prefix).
// Generous: a run stops early on a dead server (tooManyLost), so this only bounds a run on a badly overloaded machine.
jest.setTimeout(600_000);

// Skipped with the global notice when there is no test Redis (a failure under CI=true).
describeRedis('on the test Redis', () => {
  describeFuzzStack('hostile fuzz: the whole stack on Redis (#11)', { kind: 'redis', redis: redisUrl as string, batches: 4, perBatch: 1_250, heap: true });
});
