import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Client } from 'pg';
import { freePort } from './redis-server';

/** Whether `initdb` and `postgres` are on the PATH (a private server can be started). */
export const hasPostgresServer = spawnSync('initdb', ['--version']).status === 0 && spawnSync('postgres', ['--version']).status === 0;

// PostgreSQL refuses to run as root; when the tests run as root (CI here), the server runs as the
// `postgres` system user the Debian package creates.
const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;

function systemUser(): { uid: number; gid: number } | undefined {
  if (!asRoot) return undefined;
  const id = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (id.status !== 0 || gid.status !== 0) throw new Error('running as root needs a `postgres` system user to start PostgreSQL as');
  return { uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/**
 * A PostgreSQL server of the tests' own: `initdb` into a temporary directory, then `postgres` on
 * a free port of 127.0.0.1 with trust authentication, so tests never touch anyone else's data and
 * a test can stop and restart it to prove fault handling.
 */
export class OwnPostgresServer {
  readonly port: number;
  readonly url: string;
  private child?: ChildProcess;
  private readonly dir: string;
  private readonly user = systemUser();

  private constructor(port: number) {
    this.port = port;
    this.url = `postgres://postgres@127.0.0.1:${port}/postgres`;
    this.dir = mkdtempSync(join(tmpdir(), 'perimeter-own-pg-'));
    if (this.user !== undefined) {
      chownSync(this.dir, this.user.uid, this.user.gid);
      chmodSync(this.dir, 0o700);
    }
  }

  /** Creates a cluster, starts it on a free port and waits until it accepts connections. */
  static async start(): Promise<OwnPostgresServer> {
    const server = new OwnPostgresServer(await freePort());
    const init = spawnSync('initdb', ['-D', join(server.dir, 'data'), '-U', 'postgres', '-A', 'trust', '--no-sync', '-E', 'UTF8', '--locale=C'], {
      encoding: 'utf8',
      uid: server.user?.uid,
      gid: server.user?.gid,
    });
    if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
    await server.restart();
    return server;
  }

  /** (Re)starts the server on the same port and data directory. */
  async restart(): Promise<void> {
    const args = [
      '-D', join(this.dir, 'data'),
      '-p', String(this.port),
      '-h', '127.0.0.1',
      '-k', this.dir,
      // Test data is disposable: no fsync makes the server start and commit fast.
      '-c', 'fsync=off',
      '-c', 'synchronous_commit=off',
      '-c', 'full_page_writes=off',
      '-c', 'max_connections=200',
    ];
    this.child = spawn('postgres', args, { stdio: 'ignore', uid: this.user?.uid, gid: this.user?.gid });
    await waitForPostgres(this.url);
  }

  /** Stops the server abruptly (SIGKILL of the postmaster: a crash, not a polite shutdown) and waits for it to exit. */
  async kill(): Promise<void> {
    await this.signal('SIGKILL');
  }

  /** Stops the server with a fast shutdown (SIGINT: sessions are terminated) and waits for it to exit. */
  async stop(): Promise<void> {
    await this.signal('SIGINT');
  }

  /** Stops the server and removes its data directory. */
  async destroy(): Promise<void> {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  private async signal(signal: NodeJS.Signals): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    await exited;
    if (signal === 'SIGKILL') {
      // The postmaster's children outlive a SIGKILL of their parent for a moment and hold the
      // shared memory; a restart waits for them to leave.
      spawnSync('pkill', ['-KILL', '-f', `postgres.*-p ${this.port}`]);
    }
  }
}

async function waitForPostgres(url: string): Promise<void> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const client = new Client({ connectionString: url, connectionTimeoutMillis: 1000 });
    client.on('error', () => undefined);
    try {
      await client.connect();
      await client.query('select 1');
      await client.end();
      return;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) throw new Error(`postgres did not start at ${url}: ${(err as Error).message}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/** A fresh database on the test server, so suites running at once never share tables. */
export async function createTestDatabase(baseUrl: string, name: string): Promise<string> {
  const client = new Client({ connectionString: baseUrl });
  await client.connect();
  try {
    await client.query(`drop database if exists "${name}" with (force)`);
    await client.query(`create database "${name}"`);
  } finally {
    await client.end();
  }
  const url = new URL(baseUrl);
  url.pathname = `/${name}`;
  return url.toString();
}
