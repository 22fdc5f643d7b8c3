import type { OutgoingHttpHeaders } from 'node:http';
import type { Response } from 'express';
import type { IdempotencyOutcome, StoredHeader } from '../stores/idempotency-store';

/**
 * Never kept: cookies (a replay must not hand one caller's session to a retry, nor renew it),
 * headers of one connection or one message (hop-by-hop, framing, Date), and headers that describe
 * this request rather than its result (its id and timing, the rate-limit state, the replay mark),
 * which the middleware in front set afresh on the replay.
 */
const NOT_KEPT = new Set([
  'set-cookie',
  'connection',
  'keep-alive',
  'proxy-connection',
  'transfer-encoding',
  'te',
  'trailer',
  'upgrade',
  'content-length',
  'date',
  'x-request-id',
  'x-response-time',
  'x-ratelimit-limit',
  'x-ratelimit-remaining',
  'x-ratelimit-reset',
  'ratelimit',
  'ratelimit-policy',
  'idempotent-replayed',
]);

/**
 * The headers of a response worth keeping: those the handler (or middleware after idempotency)
 * set, not those already on the response before it ran with the same value (security headers,
 * CORS, request id: the middleware in front set them again on the replay), minus {@link NOT_KEPT}.
 */
export function keptHeaders(head: OutgoingHttpHeaders, before: OutgoingHttpHeaders): StoredHeader[] {
  const kept: StoredHeader[] = [];
  for (const name of Object.keys(head)) {
    const lower = name.toLowerCase();
    if (NOT_KEPT.has(lower)) continue;
    const value = head[name];
    if (value === undefined || before[lower] === value) continue;
    kept.push([lower, Array.isArray(value) ? value.map(String) : String(value)]);
  }
  return kept;
}

// Statuses whose responses never carry a body (RFC 9110 §6.4.1): no Content-Length either.
function bodiless(status: number): boolean {
  return status < 200 || status === 204 || status === 304;
}

/** Answers with a kept response: its status, headers and body, marked `Idempotent-Replayed: true`. */
export function replay(res: Response, outcome: IdempotencyOutcome & { body: Buffer }, head: boolean): void {
  res.statusCode = outcome.status;
  for (const [name, value] of outcome.headers ?? []) res.setHeader(name, value);
  res.setHeader('Idempotent-Replayed', 'true');
  if (bodiless(outcome.status)) {
    res.end();
    return;
  }
  res.setHeader('Content-Length', outcome.body.length);
  res.end(head ? undefined : outcome.body);
}
