import { createServer, request as httpRequest, type Agent, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Express } from 'express';
import type { StackConfig } from '../../lib/create-stack';
import type { PerimeterHandler } from '../../types/express-augment';
import { newApp } from './app';
import { withClient } from './postgres';

/** A stack with only the audit log doing anything (and health): records are the subject. */
export const ONLY_AUDIT: StackConfig = {
  requestLogger: false, metrics: false, securityHeaders: false, ipFilter: false, sizeLimit: false, timeout: false,
  rateLimit: false, sanitize: false, cache: false,
};

/** An app behind `stack` whose POST /api/games answers 201 with the body's `n` as the created id. */
export function gamesApp(handler: PerimeterHandler): Express {
  const app = newApp();
  app.use(handler);
  app.post('/api/games', (req, res) => {
    res.status(201).json({ id: req.body?.n });
  });
  return app;
}

/** Listens on a free port of 127.0.0.1; resolves to the server and its base URL. */
export function listen(app: Express): Promise<{ server: Server; url: string }> {
  const server = createServer(app);
  return new Promise((done) => server.listen(0, '127.0.0.1', () => done({ server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` })));
}

export function closeServer(server: Server): Promise<void> {
  return new Promise((done) => server.close(() => done()));
}

/** POSTs JSON through `agent`; resolves to the status. */
export function post(agent: Agent, url: string, body: unknown): Promise<number> {
  const data = JSON.stringify(body);
  return new Promise((done, fail) => {
    const req = httpRequest(url, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } }, (res) => {
      res.resume();
      res.on('end', () => done(res.statusCode as number));
    });
    req.on('error', fail);
    req.end(data);
  });
}

export { withClient };

/** The rows of `<prefix>audit` as stored, in seq order (seq as a number). */
export function auditRows(url: string, prefix = 'perimeter_'): Promise<Array<{ seq: number; record: Record<string, any>; hash: string; prev_hash: string }>> {
  return withClient(url, async (client) => {
    const { rows } = await client.query(`SELECT seq, record, hash, prev_hash FROM ${prefix}audit ORDER BY seq`);
    return rows.map((r) => ({ ...r, seq: Number(r.seq) }));
  });
}
