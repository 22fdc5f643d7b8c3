import http from 'node:http';
import request from 'supertest';
import { bodyParser, errorNormalizer, getContext, requestId } from '../index';
import { newApp } from './helpers/app';

function app(options?: Parameters<typeof bodyParser>[0]) {
  const a = newApp();
  a.use(requestId(), bodyParser(options));
  a.post('/echo', (req, res) => {
    // The context survives the stream callbacks the parser runs in.
    res.json({ body: req.body ?? null, contextId: getContext()?.requestId === req.id });
  });
  a.use(errorNormalizer());
  return a;
}

describe('bodyParser', () => {
  it('parses JSON and urlencoded bodies and keeps the request context', async () => {
    await request(app()).post('/echo').send({ a: 1 }).expect(200, { body: { a: 1 }, contextId: true });
    await request(app()).post('/echo').type('form').send('name=Go&genre=board').expect(200, { body: { name: 'Go', genre: 'board' }, contextId: true });
  });

  it('turns malformed JSON into 400 INVALID_JSON with the request id', async () => {
    const res = await request(app()).post('/echo').set('Content-Type', 'application/json').send('{"a":').expect(400);
    expect(res.body.error).toMatchObject({ code: 'INVALID_JSON', request_id: res.headers['x-request-id'] });
  });

  it('refuses bodies over the limit with 413, also when chunked', async () => {
    const big = JSON.stringify({ text: 'x'.repeat(2048) });
    const res = await request(app({ limit: '1kb' })).post('/echo').set('Content-Type', 'application/json').send(big).expect(413);
    expect(res.body.error.code).toBe('PAYLOAD_TOO_LARGE');
    // No Content-Length: the limit holds while the body streams in.
    const server = app({ limit: '1kb' }).listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    try {
      const port = (server.address() as { port: number }).port;
      const answer = await new Promise<{ status?: number; body: string }>((resolve, reject) => {
        const req = http.request({ port, host: '127.0.0.1', method: 'POST', path: '/echo', headers: { 'Content-Type': 'application/json' } }, (res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode, body }));
        });
        req.on('error', reject);
        req.write(big.slice(0, 1000));
        req.end(big.slice(1000));
      });
      expect(answer.status).toBe(413);
      expect(JSON.parse(answer.body).error.code).toBe('PAYLOAD_TOO_LARGE');
    } finally {
      server.close();
    }
  });

  it('leaves bodyless requests and turned-off parsers alone', async () => {
    await request(app()).post('/echo').expect(200, { body: null, contextId: true });
    const res = await request(app({ urlencoded: false })).post('/echo').type('form').send('a=1').expect(200);
    expect(res.body.body).toBeNull();
  });

  it('refuses a bad limit at setup', () => {
    expect(() => bodyParser({ limit: 'huge' })).toThrow(/bodyParser.limit: expected a size/);
  });
});
