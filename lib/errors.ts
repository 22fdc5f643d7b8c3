/** Extra fields an error can carry into the response envelope. */
export type ErrorDetails = Record<string, unknown>;

const DEFAULT_MESSAGES: Record<number, string> = {
  400: 'The request is malformed.',
  401: 'Authentication is required.',
  402: 'Not enough credits for this request.',
  403: 'Access to this resource is forbidden.',
  404: 'The resource was not found.',
  405: 'Method not allowed.',
  409: 'The request conflicts with the current state of the resource.',
  413: 'The request body is too large.',
  415: 'The request body has an unsupported media type.',
  422: 'The request did not pass validation.',
  429: 'Too many requests.',
  500: 'An internal error occurred.',
  502: 'An upstream service answered badly.',
  503: 'The service is temporarily unavailable.',
  504: 'The request took too long to complete.',
};

const DEFAULT_CODES: Record<number, string> = {
  400: 'BAD_REQUEST',
  401: 'AUTHENTICATION_REQUIRED',
  402: 'INSUFFICIENT_CREDITS',
  403: 'FORBIDDEN',
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  406: 'NOT_ACCEPTABLE',
  408: 'REQUEST_TIMEOUT',
  409: 'CONFLICT',
  410: 'GONE',
  411: 'LENGTH_REQUIRED',
  412: 'PRECONDITION_FAILED',
  413: 'PAYLOAD_TOO_LARGE',
  414: 'URI_TOO_LONG',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  416: 'RANGE_NOT_SATISFIABLE',
  422: 'VALIDATION_ERROR',
  429: 'RATE_LIMIT_EXCEEDED',
  431: 'REQUEST_HEADER_FIELDS_TOO_LARGE',
  500: 'INTERNAL_ERROR',
  501: 'NOT_IMPLEMENTED',
  502: 'BAD_GATEWAY',
  503: 'SERVICE_UNAVAILABLE',
  504: 'GATEWAY_TIMEOUT',
};

/** The default message for a status: safe to show to any client. */
export function defaultMessage(status: number): string {
  return DEFAULT_MESSAGES[status] ?? (status >= 500 ? DEFAULT_MESSAGES[500] : DEFAULT_MESSAGES[400]);
}

/** The default error code for a status (`404` → `NOT_FOUND`). */
export function defaultCode(status: number): string {
  return DEFAULT_CODES[status] ?? (status >= 500 ? 'INTERNAL_ERROR' : 'BAD_REQUEST');
}

/**
 * The one error every express-perimeter middleware throws or passes to `next()`.
 * It leaves as `{ error: { code, message, request_id, details? } }` with `status`.
 */
export class HttpError extends Error {
  /** HTTP status code. */
  readonly status: number;
  /** Alias of `status`, for code that reads `statusCode` (http-errors, Express). */
  get statusCode(): number {
    return this.status;
  }
  /** Stable, machine-readable code such as `RATE_LIMIT_EXCEEDED`. */
  readonly code: string;
  /** Extra data for the client (never secrets). */
  readonly details?: ErrorDetails;
  /** Response headers sent with the error (`Retry-After`, `WWW-Authenticate`). */
  headers?: Record<string, string>;
  /** Whether the message may reach clients in production. Defaults to `status < 500`. */
  expose: boolean;

  constructor(status: number, code?: string, message?: string, details?: ErrorDetails) {
    super(message ?? defaultMessage(status));
    this.name = new.target.name;
    this.status = status;
    this.code = code ?? defaultCode(status);
    if (details !== undefined) this.details = details;
    this.expose = status < 500;
  }

  /** Adds response headers; returns `this` so it chains after `new`. */
  withHeaders(headers: Record<string, string>): this {
    this.headers = { ...this.headers, ...headers };
    return this;
  }
}

/** Whether `err` is an express-perimeter {@link HttpError} (not a foreign error). */
export function isHttpError(err: unknown): err is HttpError {
  return err instanceof HttpError;
}

/** 400 BAD_REQUEST. */
export class BadRequestError extends HttpError {
  constructor(message?: string, details?: ErrorDetails, code = 'BAD_REQUEST') {
    super(400, code, message, details);
  }
}
/** 422 VALIDATION_ERROR. */
export class ValidationError extends HttpError {
  constructor(message?: string, details?: ErrorDetails) {
    super(422, 'VALIDATION_ERROR', message, details);
  }
}
/** 401 AUTHENTICATION_REQUIRED (also INVALID_TOKEN, TOKEN_EXPIRED, INVALID_API_KEY), with `WWW-Authenticate: Bearer`. */
export class AuthenticationError extends HttpError {
  constructor(message?: string, code = 'AUTHENTICATION_REQUIRED', details?: ErrorDetails) {
    super(401, code, message, details);
    this.headers = { 'WWW-Authenticate': 'Bearer' };
  }
}
/** 402 INSUFFICIENT_CREDITS. */
export class InsufficientCreditsError extends HttpError {
  constructor(message?: string, details?: ErrorDetails) {
    super(402, 'INSUFFICIENT_CREDITS', message, details);
  }
}
/** 403 FORBIDDEN (also IP_BLOCKED, TENANT_MISMATCH). */
export class ForbiddenError extends HttpError {
  constructor(message?: string, details?: ErrorDetails, code = 'FORBIDDEN') {
    super(403, code, message, details);
  }
}
/** 404 NOT_FOUND (also TENANT_NOT_FOUND, FEATURE_DISABLED). */
export class NotFoundError extends HttpError {
  constructor(message?: string, details?: ErrorDetails, code = 'NOT_FOUND') {
    super(404, code, message, details);
  }
}
/** 409 CONFLICT. */
export class ConflictError extends HttpError {
  constructor(message?: string, details?: ErrorDetails) {
    super(409, 'CONFLICT', message, details);
  }
}
/** 413 PAYLOAD_TOO_LARGE. */
export class PayloadTooLargeError extends HttpError {
  constructor(message?: string, details?: ErrorDetails) {
    super(413, 'PAYLOAD_TOO_LARGE', message, details);
  }
}
/** 415 UNSUPPORTED_MEDIA_TYPE. */
export class UnsupportedMediaTypeError extends HttpError {
  constructor(message?: string, details?: ErrorDetails) {
    super(415, 'UNSUPPORTED_MEDIA_TYPE', message, details);
  }
}
/** 429 RATE_LIMIT_EXCEEDED, with `Retry-After` when `retryAfterSeconds` is given. */
export class RateLimitError extends HttpError {
  constructor(message?: string, details?: ErrorDetails, retryAfterSeconds?: number, code = 'RATE_LIMIT_EXCEEDED') {
    super(429, code, message, details);
    if (retryAfterSeconds !== undefined) this.headers = { 'Retry-After': String(Math.max(0, Math.ceil(retryAfterSeconds))) };
  }
}
/** 429 QUOTA_EXCEEDED (the daily quota is spent). */
export class QuotaExceededError extends RateLimitError {
  constructor(message?: string, details?: ErrorDetails, retryAfterSeconds?: number) {
    super(message ?? 'The daily quota is exhausted.', details, retryAfterSeconds, 'QUOTA_EXCEEDED');
  }
}
/** 503 SERVICE_UNAVAILABLE (also CIRCUIT_OPEN). */
export class ServiceUnavailableError extends HttpError {
  constructor(message?: string, details?: ErrorDetails, code = 'SERVICE_UNAVAILABLE') {
    super(503, code, message, details);
    // Library 503s say nothing internal, so their message is safe to show.
    this.expose = true;
  }
}
/**
 * 503 OVERLOADED: refused by `loadShedding` while the process is over one of its thresholds, with
 * `Retry-After`. A deliberate refusal, not a failure: the error log keeps it at debug.
 */
export class OverloadedError extends ServiceUnavailableError {
  constructor(message?: string, details?: ErrorDetails, retryAfterSeconds?: number) {
    super(message ?? 'The server is overloaded; retry after the time in Retry-After.', details, 'OVERLOADED');
    if (retryAfterSeconds !== undefined) this.headers = { 'Retry-After': String(Math.max(1, Math.ceil(retryAfterSeconds))) };
  }
}
/** 504 GATEWAY_TIMEOUT. */
export class GatewayTimeoutError extends HttpError {
  constructor(message?: string, details?: ErrorDetails) {
    super(504, 'GATEWAY_TIMEOUT', message, details);
    this.expose = true;
  }
}

/**
 * A setup mistake: thrown by a factory or `createStack()` at creation time, never per request.
 * The message names the option, the value it got and the fix.
 */
export class ConfigError extends Error {
  /** The option path at fault, e.g. `rateLimit.window`. */
  readonly option: string;
  constructor(option: string, message: string) {
    super(`${option}: ${message}`);
    this.name = 'ConfigError';
    this.option = option;
  }
}
