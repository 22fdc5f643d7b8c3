import request from 'supertest';
import { errorNormalizer, notFound, requestId } from '../index';
import { newApp } from './helpers/app';

describe('notFound', () => {
  it('answers unmatched requests with 404 NOT_FOUND in the envelope, after the routes', async () => {
    const app = newApp();
    app.use(requestId());
    app.get('/games', (_req, res) => {
      res.json([]);
    });
    app.use(notFound(), errorNormalizer());
    await request(app).get('/games').expect(200);
    const res = await request(app).delete('/games').expect(404);
    expect(res.body).toEqual({ error: { code: 'NOT_FOUND', message: 'No route for DELETE /games.', request_id: res.headers['x-request-id'] } });
  });
});
