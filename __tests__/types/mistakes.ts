// Mistakes the types must catch: each line after a @ts-expect-error must fail to compile (tsc
// reports an unused @ts-expect-error as an error, so a mistake that starts compiling fails the run).
import express, { Router, type NextFunction, type Request, type Response } from 'express';
import { createStack, rateLimit, timeout, tenant } from 'express-perimeter';

const app = express();

// A misspelled createStack key.
// @ts-expect-error 'rateLimt' is not a createStack key
createStack({ rateLimt: { limit: 5 } });

// A misspelled option, in the stack and on a route.
// @ts-expect-error 'limt' is not a rateLimit option
createStack({ rateLimit: { limt: 5 } });
// @ts-expect-error 'limt' is not a rateLimit option
app.get('/x', rateLimit({ limt: 5 }));

// A misspelled postgres option, and a pool that is not one.
// @ts-expect-error 'statmentTimeout' is not a postgres option
createStack({ postgres: { url: 'postgres://localhost/app', statmentTimeout: '5s' } });
// @ts-expect-error a pool has connect(), query() and end()
createStack({ postgres: { pool: { query: () => undefined } } });

// A value of the wrong type.
// @ts-expect-error maxEventLoopUtilization is a share, not a string
createStack({ loadShedding: { maxEventLoopUtilization: '98%' } });
// @ts-expect-error tenant takes options or a boolean
createStack({ tenant: 42 });
// @ts-expect-error a duration is a string or milliseconds
createStack({ timeout: { ms: true } });
// @ts-expect-error algorithm is one of three names
createStack({ rateLimit: { algorithm: 'leaky-bucket' } });

// A factory, or the middleware it makes, passed where options are expected.
// @ts-expect-error the factory itself, not its options
createStack({ rateLimit });
// @ts-expect-error a middleware, not options
createStack({ timeout: timeout({ ms: '5s' }) });
// @ts-expect-error tenant() is not a createStack config
createStack(tenant());

// A middleware or a Router given as an option callback that takes the request alone.
// @ts-expect-error skip is (req) => boolean, not a middleware
rateLimit({ skip: (_req: Request, _res: Response, next: NextFunction) => next() });
// @ts-expect-error key is (req) => id, not a Router
rateLimit({ key: Router() });

// Route params keep their real type: not any, not widened.
app.get('/games/:id', rateLimit({ limit: 5 }), (req, res) => {
  // @ts-expect-error req.params.id is a string
  const n: number = req.params.id;
  res.json({ n });
});

// The augmentation is typed, not any.
app.get('/me', (req, res) => {
  // @ts-expect-error req.id is a string
  const id: number = req.id;
  // @ts-expect-error req.signal is read-only (as Node's own IncomingMessage.signal)
  req.signal = new AbortController().signal;
  res.json({ id });
});

export { app };
