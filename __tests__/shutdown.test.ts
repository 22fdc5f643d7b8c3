import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, existsSync } from 'node:fs';
import { Agent, request as httpRequest, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { eventually } from './helpers/app';

// Each test starts a server in a child process (TypeScript compiled on load): roomy on a loaded machine.
jest.setTimeout(60_000);

const FIXTURE = join(__dirname, 'fixtures', 'graceful-server.ts');
const ROOT = join(__dirname, '..');

interface Running {
  child: ChildProcess;
  port: number;
  lines: Array<Record<string, any>>;
  exited: Promise<number | null>;
  auditFile: string;
}

/** Starts the fixture server in a child process and waits for its "listening" line. */
async function startServer(env: Record<string, string> = {}): Promise<Running> {
  const auditFile = join(mkdtempSync(join(tmpdir(), 'perimeter-shutdown-')), 'audit.jsonl');
  const child = spawn(process.execPath, ['-r', join(__dirname, 'fixtures', 'swc-register.js'), FIXTURE], {
    cwd: ROOT,
    env: { ...process.env, AUDIT_FILE: auditFile, NODE_ENV: 'test', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: Array<Record<string, any>> = [];
  let rest = '';
  child.stdout?.on('data', (chunk: Buffer) => {
    const parts = (rest + chunk.toString()).split('\n');
    rest = parts.pop() ?? '';
    for (const part of parts) if (part.trim()) lines.push(JSON.parse(part));
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  try {
    await eventually(() => expect(lines.some((l) => l.event === 'listening')).toBe(true), 20_000);
  } catch (err) {
    child.kill('SIGKILL');
    throw new Error(`the fixture server did not start: ${stderr}`, { cause: err });
  }
  const port = lines.find((l) => l.event === 'listening')?.port as number;
  return { child, port, lines, exited, auditFile };
}

interface Reply {
  status: number;
  headers: IncomingHttpHeaders;
  body: string;
}

function send(port: number, method: string, path: string, agent?: Agent): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port, method, path, agent: agent ?? false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

function auditLines(file: string): Array<Record<string, any>> {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l));
}

let running: Running | undefined;
afterEach(() => {
  if (running && running.child.exitCode === null) running.child.kill('SIGKILL');
  running = undefined;
});

describe('graceful shutdown of a real server on SIGTERM', () => {
  it('finishes five requests in flight, refuses new connections, reports draining and loses no audit record; exit 0', async () => {
    running = await startServer({ DRAIN_DELAY: '1s', GRACE: '20s' });
    const { child, port, lines } = running;
    for (let i = 0; i < 3; i++) expect((await send(port, 'POST', `/work/before-${i}`)).status).toBe(200);

    // Keep-alive connections: an idle one is closed by the drain, a busy one gets Connection: close.
    const agent = new Agent({ keepAlive: true });
    await send(port, 'POST', '/work/warm', agent);
    const slow = Array.from({ length: 5 }, (_, i) => send(port, 'POST', `/work/slow-${i}?ms=2500`, agent));
    await eventually(() => expect(lines.filter((l) => l.event === 'started' && String(l.id).startsWith('slow-'))).toHaveLength(5), 10_000);

    child.kill('SIGTERM');
    await eventually(() => expect(lines.some((l) => l.code === 'PERIMETER_DRAINING' && l.message.startsWith('Draining'))).toBe(true), 5_000);
    const ready = await send(port, 'GET', '/health/ready');
    expect(ready.status).toBe(503);
    expect(JSON.parse(ready.body)).toEqual({ status: 'draining' });
    expect(ready.headers.connection).toBe('close');
    // A repeated SIGTERM does not start a second drain.
    child.kill('SIGTERM');

    await eventually(() => expect(lines.some((l) => l.code === 'PERIMETER_LISTENER_CLOSED')).toBe(true), 5_000);
    await expect(send(port, 'GET', '/health')).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    const replies = await Promise.all(slow);
    expect(replies.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    expect(replies.map((r) => JSON.parse(r.body).done)).toEqual(['slow-0', 'slow-1', 'slow-2', 'slow-3', 'slow-4']);
    expect(replies.every((r) => r.headers.connection === 'close')).toBe(true);
    agent.destroy();

    expect(await running.exited).toBe(0);
    expect(lines.filter((l) => l.message?.startsWith('Draining'))).toHaveLength(1);
    expect(lines.some((l) => l.code === 'PERIMETER_DRAIN_INCOMPLETE')).toBe(false);
    // Every audited request, before and during the drain, is in the file once the process is gone.
    const expected = ['before-0', 'before-1', 'before-2', 'slow-0', 'slow-1', 'slow-2', 'slow-3', 'slow-4', 'warm'];
    for (const file of [running.auditFile, `${running.auditFile}.slow`]) {
      expect(auditLines(file).map((r) => r.resource_id as string).sort()).toEqual(expected);
    }
  });

  it('ends a request still running after grace, counts it in one log line and exits 1', async () => {
    running = await startServer({ GRACE: '300ms' });
    const { child, port, lines } = running;
    const stuck = send(port, 'POST', '/work/stuck?ms=60000');
    await eventually(() => expect(lines.some((l) => l.event === 'started' && l.id === 'stuck')).toBe(true), 10_000);
    child.kill('SIGTERM');
    await expect(stuck).rejects.toMatchObject({ code: 'ECONNRESET' });
    expect(await running.exited).toBe(1);
    expect(lines.filter((l) => l.code === 'PERIMETER_DRAIN_INCOMPLETE')).toEqual([expect.objectContaining({ level: 'error', count: 1 })]);
  });

  it('exits 0 at once on SIGINT with nothing in flight', async () => {
    running = await startServer();
    running.child.kill('SIGINT');
    expect(await running.exited).toBe(0);
    expect(running.lines.some((l) => l.code === 'PERIMETER_SHUTDOWN_COMPLETE' && l.clean === true)).toBe(true);
  });
});
