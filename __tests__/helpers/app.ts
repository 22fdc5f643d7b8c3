import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import type { Express } from 'express';
import winston from 'winston';
import { createStack, type StackConfig } from '../../lib/create-stack';
import type { Logger } from '../../lib/logger';

/** Express as the run asks for it: EXPRESS_MAJOR=4 tests Express 4, otherwise Express 5. */
export function loadExpress(): typeof import('express') {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return process.env.EXPRESS_MAJOR === '4' ? require('express4') : require('express');
}

/** The Express major under test. */
export const EXPRESS_MAJOR = process.env.EXPRESS_MAJOR === '4' ? 4 : 5;

/** A new Express app (of the version under test). */
export function newApp(): Express {
  const express = loadExpress();
  return express();
}

/** A logger that records every line it writes, parsed, in `lines`. */
export function recordingLogger(level = 'debug'): { logger: Logger; lines: Array<Record<string, any>> } {
  const lines: Array<Record<string, any>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      for (const part of String(chunk).split('\n')) if (part.trim()) lines.push(JSON.parse(part));
      cb();
    },
  });
  const logger = winston.createLogger({
    level,
    format: winston.format.combine(winston.format.timestamp(), winston.format.json()),
    transports: [new winston.transports.Stream({ stream })],
  });
  return { logger, lines };
}

/** URL of the tests' private Redis, or undefined when none could be started. */
export const redisUrl: string | undefined = process.env.PERIMETER_TEST_REDIS_URL;

/** `describe` for suites that need Redis: skipped (with the global notice) when there is none. */
export const describeRedis: jest.Describe = redisUrl ? describe : describe.skip;

/** A key prefix no other test uses, so tests share one Redis without seeing each other's keys. */
export function uniquePrefix(): string {
  return `test:${randomUUID().slice(0, 8)}:`;
}

/**
 * Waits until `check` passes or `ms` elapse. The deadline only bounds a failure: on a loaded
 * machine (several suites at once on two cores) a change that takes milliseconds can take seconds.
 */
export async function eventually(check: () => void | Promise<void>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      await check();
      return;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((r) => setTimeout(r, 20));
    }
  }
}

const openStacks: Array<{ close(): Promise<void> }> = [];

/**
 * An app with `createStack(config)` (logger recorded, rate limit off unless configured) in front
 * of `routes` and its error handler after them. Call {@link closeStacks} in afterEach.
 */
export function stackApp(config: StackConfig, routes: (app: Express) => void) {
  const { logger, lines } = recordingLogger();
  const stack = createStack({ logger, rateLimit: false, ...config });
  openStacks.push(stack);
  const app = newApp();
  app.use(stack);
  routes(app);
  app.use(stack.errorHandler);
  return { app, stack, lines };
}

/** Closes every stack {@link stackApp} made since the last call. */
export async function closeStacks(): Promise<void> {
  await closeAll(openStacks);
}

/** Empties `stacks` and closes what it held. */
export async function closeAll(stacks: Array<{ close(): Promise<void> }>): Promise<void> {
  await Promise.all(stacks.splice(0).map((s) => s.close()));
}

/** A list the calling describe block pushes its stacks into; they are closed after each test. */
export function stacksClosedAfterEach<T extends { close(): Promise<void> }>(): T[] {
  const stacks: T[] = [];
  afterEach(() => closeAll(stacks));
  return stacks;
}
