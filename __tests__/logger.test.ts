import { Writable } from 'node:stream';
import winston from 'winston';
import { createLogger, redact } from '../index';

function capture(options: Parameters<typeof createLogger>[0] = {}) {
  const lines: Array<Record<string, any>> = [];
  const stream = new Writable({
    write(chunk, _enc, cb) {
      lines.push(JSON.parse(String(chunk)));
      cb();
    },
  });
  return { logger: createLogger({ level: 'debug', ...options, stream }), lines };
}

describe('createLogger', () => {
  it('writes JSON lines with timestamp, level and message', () => {
    const { logger, lines } = capture();
    logger.info('hello', { request_id: 'r1' });
    expect(lines[0]).toMatchObject({ level: 'info', message: 'hello', request_id: 'r1', timestamp: expect.any(String) });
  });

  it('redacts secrets at any depth, whatever their case or separator', () => {
    const { logger, lines } = capture();
    logger.info('login', {
      headers: { Authorization: 'Bearer abc.def.ghi', cookie: 'sid=1', 'set-cookie': ['a=b'], 'x-api-key': 'sk-live-1' },
      body: { user: { password: 'hunter2', profile: { apiKey: 'k', client_secret: 's', refresh_token: 't' } }, name: 'Ann' },
      token: 'top',
    });
    const text = JSON.stringify(lines[0]);
    for (const secret of ['abc.def.ghi', 'sid=1', 'a=b', 'sk-live-1', 'hunter2', '"k"', '"s"', '"t"', 'top']) expect(text).not.toContain(secret);
    expect(lines[0].body.name).toBe('Ann');
    expect(lines[0].headers.Authorization).toBe('[REDACTED]');
  });

  it('keeps winston behaviour: levels, child metadata, order, and transports added later', async () => {
    const { logger, lines } = capture({ level: 'info' });
    logger.debug('hidden');
    logger.info('one');
    logger.child({ request_id: 'r9' }).warn('two', { extra: 1 });
    logger.log({ level: 'error', message: 'three' });
    expect(lines.map((l) => l.message)).toEqual(['one', 'two', 'three']);
    expect(lines[1]).toMatchObject({ level: 'warn', request_id: 'r9', extra: 1 });
    const added: string[] = [];
    logger.add(
      new winston.transports.Stream({
        stream: new Writable({
          write(chunk, _enc, cb) {
            added.push(JSON.parse(String(chunk)).message);
            cb();
          },
        }),
      }),
    );
    logger.info('four');
    await new Promise((r) => setImmediate(r));
    expect(lines.map((l) => l.message)).toEqual(['one', 'two', 'three', 'four']);
    expect(added).toEqual(['four']);
    logger.level = 'error';
    logger.info('muted');
    await new Promise((r) => setImmediate(r));
    expect(lines).toHaveLength(4);
    const silent = capture({ level: 'silent' });
    silent.logger.error('nothing');
    expect(silent.lines).toHaveLength(0);
  });

  it("adds severity in format 'gcp'", () => {
    const { logger, lines } = capture({ format: 'gcp' });
    logger.warn('careful');
    logger.error('broken');
    expect(lines.map((l) => l.severity)).toEqual(['WARNING', 'ERROR']);
  });

  it('keeps the message and stack of logged errors', () => {
    const { logger, lines } = capture();
    logger.error('failed', { err: new Error('boom') });
    expect(lines[0].err).toMatchObject({ message: 'boom', stack: expect.stringContaining('Error: boom') });
  });

  it("is silent at level 'silent'", () => {
    const { logger, lines } = capture({ level: 'silent' });
    logger.error('nothing');
    expect(lines).toHaveLength(0);
  });
});

describe('redact', () => {
  it('returns clean objects as they are and copies only what it changes', () => {
    const clean = { a: 1, b: { c: [1, 2] } };
    expect(redact(clean)).toBe(clean);
    const dirty = { a: 1, nested: { password: 'x' } };
    const out = redact(dirty);
    expect(out).toEqual({ a: 1, nested: { password: '[REDACTED]' } });
    expect(dirty.nested.password).toBe('x');
  });

  it('survives cycles', () => {
    const a: Record<string, unknown> = { name: 'a' };
    a.self = a;
    expect(() => redact(a)).not.toThrow();
  });
});
