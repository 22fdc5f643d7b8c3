import { connect, createServer, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';

interface Pair {
  client: Socket;
  upstream?: Socket;
  /** Bytes held while silent, delivered (late) when the proxy heals. */
  toUpstream: Buffer[];
  toClient: Buffer[];
}

/**
 * A TCP proxy in front of a Redis, for fault tests: it forwards, or goes silent (accepts
 * connections and reads, but passes nothing either way, as a hung server or a route that drops
 * packets would), then heals and delivers what it held, so commands sent during the silence
 * arrive late. When the upstream goes away (a stopped server), its clients are cut too.
 */
export class FaultProxy {
  readonly url: string;
  private silent = false;
  private readonly pairs = new Set<Pair>();

  private constructor(private readonly server: Server, private readonly upstreamPort: number) {
    this.url = `redis://127.0.0.1:${(server.address() as AddressInfo).port}`;
  }

  /** A proxy on a free port, forwarding to 127.0.0.1:`upstreamPort`. */
  static async start(upstreamPort: number): Promise<FaultProxy> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const proxy = new FaultProxy(server, upstreamPort);
    server.on('connection', (client: Socket) => proxy.accept(client));
    return proxy;
  }

  /** From now on nothing passes in either direction; connections stay open and are accepted. */
  silence(): void {
    this.silent = true;
  }

  /** Passes again, first delivering everything held while silent. */
  heal(): void {
    this.silent = false;
    for (const pair of this.pairs) this.flush(pair);
  }

  async close(): Promise<void> {
    for (const pair of this.pairs) this.drop(pair);
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  private accept(client: Socket): void {
    const pair: Pair = { client, toUpstream: [], toClient: [] };
    this.pairs.add(pair);
    client.on('data', (chunk: Buffer) => {
      if (this.silent || pair.upstream === undefined) pair.toUpstream.push(chunk);
      else pair.upstream.write(chunk);
    });
    client.on('error', () => this.drop(pair));
    client.on('close', () => this.drop(pair));
    if (!this.silent) this.flush(pair);
  }

  private flush(pair: Pair): void {
    if (pair.upstream === undefined) {
      const upstream = connect(this.upstreamPort, '127.0.0.1');
      pair.upstream = upstream;
      upstream.on('data', (chunk: Buffer) => {
        if (this.silent) pair.toClient.push(chunk);
        else pair.client.write(chunk);
      });
      upstream.on('error', () => this.drop(pair));
      upstream.on('close', () => this.drop(pair));
    }
    for (const chunk of pair.toUpstream.splice(0)) pair.upstream.write(chunk);
    for (const chunk of pair.toClient.splice(0)) pair.client.write(chunk);
  }

  private drop(pair: Pair): void {
    if (!this.pairs.delete(pair)) return;
    pair.client.destroy();
    pair.upstream?.destroy();
  }
}
