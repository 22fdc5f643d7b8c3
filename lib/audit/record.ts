import type { Request, Response } from 'express';
import { redact } from '../redact';
import { UNMATCHED_ROUTE, routeTemplate } from '../route-template';
import type { ChainFields } from './chain';
import { eventName, resourceFromPath, templateInfo, type TemplateInfo } from './event-name';
import { clientIp } from '../client-ip';

/** One audit record: who did what to which resource, when, from where, and how it ended. */
export interface AuditRecord extends ChainFields {
  /** When the response finished, ISO 8601 UTC. */
  timestamp: string;
  /** `GAME_CREATED`, or the name given by `audit('EVENT')` on the route. */
  event: string;
  /** `req.user.id` (else the API key's `userId`), or null for an anonymous request. */
  user_id: string | number | null;
  /** `req.tenant.id`, or null. */
  tenant_id: string | number | null;
  /** Method and path as called, without the query string: `POST /api/games`. */
  action: string;
  /** The route template that answered (`/api/games/:id`), `#unmatched` when none did. */
  route: string;
  /** Client IP (`req.ip`, so Express `trust proxy` applies). */
  ip: string | null;
  /** Response status; 499 when the client left before the response was sent. */
  status: number;
  /** The resource's id: the route's own `:id`-like parameter, else the JSON response's `id`, else null. */
  resource_id: string | number | null;
  /** The request id (`X-Request-ID`). */
  request_id: string | null;
  /** Name of the API key that authenticated the request, when one did. */
  api_key?: string;
  /** True when the client closed the connection before the response finished. */
  aborted?: true;
  /** With `includeBody`: the request body, secrets replaced by `[REDACTED]`, bounded by `maxBodySize`. */
  changes?: unknown;
  /** With `includeBody`: true when `changes` was shortened to fit `maxBodySize`. */
  changes_truncated?: true;
  [field: string]: unknown;
}

/** What the audit middleware keeps about one recorded request between its start and its finish. */
export interface AuditRequestState {
  /** Event name set by `audit('EVENT')`; `false` when the route opted out with `audit(false)`. */
  event?: string | false;
  /** The first body given to `res.json`, read for its `id` at finish. */
  responseBody?: unknown;
  /** The summary of the request body, taken when the request reached the middleware. */
  changes?: { value: unknown; truncated: boolean };
}

// Templates are bounded (one per route), so their analysis is kept for the process's life.
const templates = new Map<string, TemplateInfo>();
const MAX_TEMPLATES = 10_000;

function infoOf(template: string): TemplateInfo {
  let info = templates.get(template);
  if (info === undefined) {
    info = templateInfo(template);
    if (templates.size < MAX_TEMPLATES) templates.set(template, info);
  }
  return info;
}

function pathnameOf(req: Request): string {
  const url = req.originalUrl ?? req.url ?? '/';
  const q = url.indexOf('?');
  // A bound on what an attacker-chosen URL can put in every record.
  return (q === -1 ? url : url.slice(0, q)).slice(0, 2048);
}

/** Builds the record of a finished request. */
export function buildRecord(req: Request, res: Response, state: AuditRequestState): AuditRecord {
  const method = req.method;
  const path = pathnameOf(req);
  const route = routeTemplate(req);
  const info = route === UNMATCHED_ROUTE ? undefined : infoOf(route);
  const resource = info?.resource ?? (info === undefined || info.segments === undefined ? resourceFromPath(path) : undefined);
  // on-finished also fires when the client leaves first; the status is then not the one it will never get.
  const aborted = !res.writableFinished;
  const user = req.user ?? req.context?.user;
  const userId = user?.id ?? req.apiKey?.userId ?? null;
  const tenantId = req.tenant?.id ?? req.context?.tenant?.id ?? null;
  const record: AuditRecord = {
    timestamp: new Date().toISOString(),
    event: typeof state.event === 'string' ? state.event : eventName(resource, method),
    user_id: scalar(userId),
    tenant_id: scalar(tenantId),
    action: `${method} ${path}`,
    route,
    ip: clientIp(req) ?? req.socket?.remoteAddress ?? null,
    status: aborted && !res.headersSent ? 499 : res.statusCode,
    resource_id: resourceId(req, info, path, state.responseBody),
    request_id: req.id ?? req.context?.requestId ?? null,
  };
  const apiKey = req.apiKey?.name;
  if (typeof apiKey === 'string') record.api_key = apiKey;
  if (aborted) record.aborted = true;
  if (state.changes !== undefined) {
    record.changes = state.changes.value;
    if (state.changes.truncated) record.changes_truncated = true;
  }
  return record;
}

function scalar(value: unknown): string | number | null {
  if (typeof value === 'string' || (typeof value === 'number' && Number.isFinite(value))) return value;
  if (typeof value === 'bigint') return value.toString();
  // An ObjectId or similar id class: its own toString gives the id.
  if (value !== null && typeof value === 'object' && value.toString !== Object.prototype.toString) return String(value).slice(0, 256);
  return null;
}

/**
 * The route's own parameter (the one after its last literal segment: `/games/:id`), else the
 * JSON response's `id` (a create on a collection), else the `id` parameter or the last one.
 */
function resourceId(req: Request, info: TemplateInfo | undefined, path: string, body: unknown): string | number | null {
  const params = (req.params ?? {}) as Record<string, unknown>;
  if (info?.ownParam !== undefined) {
    const own = scalar(params[info.ownParam]) ?? fromPath(info, info.ownParam, path);
    if (own !== null) return own;
  }
  const fromBody = bodyId(body);
  if (fromBody !== null) return fromBody;
  if (params.id !== undefined) return scalar(params.id);
  const names = Object.keys(params);
  if (names.length > 0) return scalar(params[names[names.length - 1]]);
  // An error answered outside the route (Express restores req.params on the way out): read it from the URL.
  return info?.segments !== undefined ? lastParamFromPath(info, path) : null;
}

function bodyId(body: unknown): string | number | null {
  if (body === null || typeof body !== 'object') return null;
  const direct = scalar((body as { id?: unknown }).id);
  if (direct !== null) return direct;
  // The common `{ data: { id } }` envelope.
  const data = (body as { data?: unknown }).data;
  return data !== null && typeof data === 'object' && !Array.isArray(data) ? scalar((data as { id?: unknown }).id) : null;
}

const PARAM_NAME = /^:([A-Za-z0-9_$]+)/;

// Express has reset req.params by the time an error handler answers; a template whose segments
// are all literals or plain parameters still tells which part of the path was the parameter.
function fromPath(info: TemplateInfo, name: string, path: string): string | null {
  const segments = info.segments;
  if (segments === undefined) return null;
  const parts = path.split('/').filter((s) => s !== '');
  if (parts.length !== segments.length) return null;
  for (let i = 0; i < segments.length; i++) {
    if (PARAM_NAME.exec(segments[i])?.[1] === name) return decode(parts[i]);
  }
  return null;
}

function lastParamFromPath(info: TemplateInfo, path: string): string | null {
  const segments = info.segments as string[];
  for (let i = segments.length - 1; i >= 0; i--) {
    const name = PARAM_NAME.exec(segments[i])?.[1];
    if (name !== undefined) return fromPath(info, name, path);
  }
  return null;
}

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    return segment;
  }
}

const MAX_DEPTH = 6;
const MAX_ITEMS = 50;
const MAX_STRING = 512;

/**
 * A redacted, bounded copy of a request body for `changes`: secrets replaced by `[REDACTED]`, long
 * strings and arrays shortened, and fields left out once the JSON would pass `maxBytes`. A copy,
 * so what the handler does to `req.body` afterwards does not change the record.
 */
export function summarizeBody(body: unknown, maxBytes: number): { value: unknown; truncated: boolean } | undefined {
  if (body === undefined || body === null) return undefined;
  if (Buffer.isBuffer(body)) return { value: `[${body.length} bytes]`, truncated: false };
  if (typeof body === 'object' && !Array.isArray(body) && Object.keys(body).length === 0) return undefined;
  const budget = { left: maxBytes, truncated: false };
  const value = copy(redact(body), budget, 0);
  return { value, truncated: budget.truncated };
}

function copy(value: unknown, budget: { left: number; truncated: boolean }, depth: number): unknown {
  switch (typeof value) {
    case 'string': {
      const limit = Math.max(0, Math.min(MAX_STRING, budget.left - 2));
      if (value.length > limit) {
        budget.truncated = true;
        const cut = `${value.slice(0, limit)}…`;
        budget.left -= cut.length + 2;
        return cut;
      }
      budget.left -= value.length + 2;
      return value;
    }
    case 'number':
    case 'boolean':
      budget.left -= 6;
      return Number.isNaN(value) ? null : value;
    case 'bigint':
      budget.left -= 20;
      return value.toString();
    case 'object': {
      if (value === null) {
        budget.left -= 4;
        return null;
      }
      if (depth >= MAX_DEPTH) {
        budget.truncated = true;
        budget.left -= 10;
        return '[Object]';
      }
      if (Array.isArray(value)) {
        const out: unknown[] = [];
        budget.left -= 2;
        for (let i = 0; i < value.length; i++) {
          if (i >= MAX_ITEMS || budget.left <= 0) {
            budget.truncated = true;
            break;
          }
          out.push(copy(value[i], budget, depth + 1));
        }
        return out;
      }
      if (value instanceof Date) return copy(value.toISOString(), budget, depth);
      const out: Record<string, unknown> = {};
      budget.left -= 2;
      for (const key of Object.keys(value)) {
        // Would set the copy's prototype; sanitize drops it from bodies anyway.
        if (key === '__proto__') continue;
        if (budget.left - key.length - 3 <= 0) {
          budget.truncated = true;
          break;
        }
        budget.left -= key.length + 3;
        out[key] = copy((value as Record<string, unknown>)[key], budget, depth + 1);
      }
      return out;
    }
    default:
      return undefined;
  }
}
