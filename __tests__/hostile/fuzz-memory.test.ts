import { describeFuzzStack } from './helpers-fuzz-stack';

// Issue #11: the permanent hostile suite, on memory stores. PERIMETER_FUZZ_SEED replays a run,
// PERIMETER_FUZZ_SCALE scales its size (docs/security.md).
// Generous: a run stops early on a dead server (tooManyLost), so this only bounds a run on a badly overloaded machine.
jest.setTimeout(600_000);

describeFuzzStack('hostile fuzz: the whole stack on memory stores (#11)', { kind: 'memory', batches: 4, perBatch: 1_750, heap: true });
