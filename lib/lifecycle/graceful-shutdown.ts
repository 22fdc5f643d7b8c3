import type { IncomingMessage, Server, ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import { ConfigError } from '../errors';
import type { Logger } from '../logger';
import { checkOptions } from '../options';
import { describe, parseDuration } from '../units';
import { applySafeTimeouts } from './server-timeouts';

/** Options of `stack.shutdown()`. */
export interface ShutdownOptions {
  /** How long requests already accepted may take to finish once the listener is closed; any still running then are ended. Defaults to '30s'. */
  grace?: number | string;
  /** Time between readiness turning 503 draining and the listener closing, so load balancers stop sending traffic first. Defaults to '0s'. */
  drainDelay?: number | string;
}

/** Options of `stack.attach()`. */
export interface AttachOptions extends ShutdownOptions {
  /** Signals that start the graceful shutdown. Defaults to ['SIGTERM', 'SIGINT']. */
  signals?: NodeJS.Signals[];
  /** Exit once the shutdown is over: 0 after a clean drain, 1 otherwise. Defaults to true. */
  exit?: boolean;
}

const ATTACH_OPTIONS = ['signals', 'grace', 'drainDelay', 'exit'] as const;
const SHUTDOWN_OPTIONS = ['grace', 'drainDelay'] as const;

/** What the shutdown needs from the stack. */
export interface ShutdownHooks {
  logger: Logger;
  /** Readiness turns 503 draining. */
  onDraining(): void;
  /** `stack.close()`: flushes the audit queue and closes the stores. */
  close(): Promise<void>;
  /** The stack refuses an HTTP/1.1 request without Host itself (requestId is on), so Node's own check can be turned off. */
  refusesMissingHost: boolean;
}

/**
 * A stack's graceful shutdown. It follows the servers it is attached to through their own
 * 'connection' and 'request' events (nothing of Node's or Express's is patched): the sockets, and
 * the responses still being written. The sequence runs once, however often it is asked for.
 */
export class GracefulShutdown {
  private readonly servers: Server[] = [];
  private readonly sockets = new Set<Socket>();
  private readonly inFlight = new Set<ServerResponse>();
  private draining = false;
  private running?: Promise<boolean>;
  private signalHandlers: Array<[NodeJS.Signals, () => void]> = [];
  private onIdle?: () => void;
  private exiting = false;

  constructor(private readonly hooks: ShutdownHooks) {}

  /** True from the moment the shutdown begins. */
  get isDraining(): boolean {
    return this.draining;
  }

  attach(server: Server, options: AttachOptions = {}): void {
    checkOptions('attach', options, ATTACH_OPTIONS);
    if (server === null || typeof server !== 'object' || typeof (server as Server).close !== 'function' || typeof (server as Server).on !== 'function') {
      throw new ConfigError('attach', `expected the http.Server that app.listen() returns, got ${describe(server)}`);
    }
    const signals = options.signals ?? ['SIGTERM', 'SIGINT'];
    if (!Array.isArray(signals) || signals.some((s) => typeof s !== 'string' || !s.startsWith('SIG'))) {
      throw new ConfigError('attach.signals', `expected signal names like ['SIGTERM', 'SIGINT'], got ${describe(signals)}`);
    }
    const exit = options.exit ?? true;
    const shutdownOptions = { grace: options.grace, drainDelay: options.drainDelay };
    parseTimes(shutdownOptions); // a bad duration fails at attach, not at the signal
    if (this.servers.includes(server)) return;
    this.servers.push(server);
    applySafeTimeouts(server);
    // Node answers an HTTP/1.1 request without Host with a bare 400 (no envelope, no request id,
    // no log line) before the app sees it; it reads this flag per request, and the stack's
    // requestId gives the same 400 in the envelope.
    if (this.hooks.refusesMissingHost) (server as Server & { requireHostHeader?: boolean }).requireHostHeader = false;
    server.on('connection', (socket: Socket) => {
      this.sockets.add(socket);
      socket.once('close', () => this.sockets.delete(socket));
    });
    server.on('request', (_req: IncomingMessage, res: ServerResponse) => this.track(res));

    for (const signal of signals) {
      if (this.signalHandlers.some(([s]) => s === signal)) continue;
      const handler = (): void => this.onSignal(signal, shutdownOptions, exit);
      process.on(signal, handler);
      this.signalHandlers.push([signal, handler]);
    }
  }

  /** Called by the stack for each request: once draining, its response asks the client to close the connection. */
  markResponse(res: ServerResponse): void {
    if (this.draining && !res.headersSent) res.setHeader('Connection', 'close');
  }

  /** Runs the shutdown once; resolves true when every accepted request finished within grace. */
  shutdown(options: ShutdownOptions = {}): Promise<boolean> {
    if (this.running === undefined) {
      checkOptions('shutdown', options, SHUTDOWN_OPTIONS);
      const { graceMs, drainDelayMs } = parseTimes(options);
      this.running = this.run(graceMs, drainDelayMs);
    }
    return this.running;
  }

  /** Removes the signal handlers (stack.close() leaves the process as it found it), unless a signal's exit is pending. */
  detach(): void {
    if (this.exiting) return;
    for (const [signal, handler] of this.signalHandlers.splice(0)) process.off(signal, handler);
  }

  private track(res: ServerResponse): void {
    this.inFlight.add(res);
    if (this.draining && !res.headersSent) res.setHeader('Connection', 'close');
    res.once('close', () => {
      this.inFlight.delete(res);
      if (this.inFlight.size === 0) this.onIdle?.();
    });
  }

  private onSignal(signal: NodeJS.Signals, options: ShutdownOptions, exit: boolean): void {
    if (this.running !== undefined) {
      // An orchestrator may repeat SIGTERM: the drain under way goes on. A second Ctrl-C at a
      // terminal means "now".
      if (signal === 'SIGINT' && exit) {
        this.hooks.logger.warn('Second SIGINT: exiting without waiting for the drain', { code: 'PERIMETER_FORCED_EXIT', in_flight: this.inFlight.size });
        process.exit(1);
      }
      this.hooks.logger.info(`${signal} again: the graceful shutdown is already under way`, { code: 'PERIMETER_DRAINING', signal });
      return;
    }
    this.hooks.logger.info(`${signal} received: shutting down gracefully`, { code: 'PERIMETER_SIGNAL', signal });
    this.shutdown(options).then(
      (clean) => finish(exit, clean ? 0 : 1),
      (err: unknown) => {
        this.hooks.logger.error('Graceful shutdown failed', { code: 'PERIMETER_SHUTDOWN_FAILED', err: errorFields(err) });
        finish(exit, 1);
      },
    );
    if (exit) this.exiting = true;
  }

  private async run(graceMs: number, drainDelayMs: number): Promise<boolean> {
    this.draining = true;
    this.hooks.onDraining();
    for (const res of this.inFlight) if (!res.headersSent) res.setHeader('Connection', 'close');
    this.hooks.logger.info('Draining: readiness answers 503 draining', {
      code: 'PERIMETER_DRAINING',
      in_flight: this.inFlight.size,
      drain_delay_ms: drainDelayMs,
      grace_ms: graceMs,
    });
    if (drainDelayMs > 0) await new Promise((resolve) => setTimeout(resolve, drainDelayMs));

    // Stop accepting connections; idle keep-alive connections are closed now, busy ones when their
    // response (sent with Connection: close) is done.
    const closed = Promise.all(this.servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve()))));
    for (const server of this.servers) server.closeIdleConnections();
    this.hooks.logger.info('Listener closed: no new connections are accepted', { code: 'PERIMETER_LISTENER_CLOSED', in_flight: this.inFlight.size });

    const clean = await this.waitForInFlight(graceMs);
    if (!clean) {
      this.hooks.logger.error(`Graceful shutdown: ${this.inFlight.size} request(s) still running after the ${graceMs} ms grace were ended`, {
        code: 'PERIMETER_DRAIN_INCOMPLETE',
        count: this.inFlight.size,
        grace_ms: graceMs,
      });
    }
    // No accepted request is left: what remains is idle, or a request not yet read in full.
    for (const socket of this.sockets) socket.destroy();
    await closed;
    await this.hooks.close();
    // While exiting the handlers stay, so a repeated signal cannot kill the process mid-exit.
    if (!this.exiting) this.detach();
    this.hooks.logger.info('Graceful shutdown complete', { code: 'PERIMETER_SHUTDOWN_COMPLETE', clean });
    return clean;
  }

  private waitForInFlight(graceMs: number): Promise<boolean> {
    if (this.inFlight.size === 0) return Promise.resolve(true);
    return new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => {
        this.onIdle = undefined;
        resolve(false);
      }, graceMs);
      this.onIdle = () => {
        clearTimeout(timer);
        this.onIdle = undefined;
        resolve(true);
      };
    });
  }

}

function parseTimes(options: ShutdownOptions): { graceMs: number; drainDelayMs: number } {
  return {
    graceMs: parseDuration(options.grace ?? '30s', 'shutdown.grace'),
    drainDelayMs: parseDuration(options.drainDelay ?? '0s', 'shutdown.drainDelay'),
  };
}

function finish(exit: boolean, code: number): void {
  if (!exit) return;
  // One turn of the loop so the last log lines reach stdout before the process ends.
  setImmediate(() => process.exit(code));
}

function errorFields(err: unknown): Record<string, unknown> {
  return err instanceof Error ? { name: err.name, message: err.message } : { message: String(err) };
}
