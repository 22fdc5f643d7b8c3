// Compiled as a program of its own: importing one subpath alone brings the Request augmentation
// (`req.id`, `req.context`), with nothing imported from the package root.
import express from 'express';
import { expectTypeOf } from 'expect-type';
import { requestId } from 'express-perimeter/request-id';

const app = express();
app.use(requestId());
app.get('/games/:id', (req, res) => {
  expectTypeOf(req.id).toEqualTypeOf<string>();
  expectTypeOf(req.context.requestId).toEqualTypeOf<string>();
  expectTypeOf(req.params.id).toEqualTypeOf<string>();
  res.json({ id: req.params.id, requestId: req.id });
});

export { app };
