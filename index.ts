import './types/express-augment';

export { createStack, type Stack, type StackConfig, type InsertedMiddleware } from './lib/create-stack';
export { configFromEnv } from './lib/config-from-env';
export { getContext, RequestContext, type ContextUser } from './lib/context';
export { createLogger, type Logger, type LoggerOptions } from './lib/logger';
export { redact } from './lib/redact';
export { WARNINGS, type WarningCode } from './lib/warnings';
export * from './lib/errors';
export type { Device } from './lib/device';
export type { ErrorResponseOptions, ErrorMapping } from './lib/error-response';
export type * from './lib/stores/types';
export type { AuthInfo, ApiKeyInfo, TenantInfo, RequestFeatures } from './types/express-augment';

export { requestId, type RequestIdOptions } from './middleware/request-id';
export { requestLogger, type RequestLoggerOptions } from './middleware/request-logger';
export { securityHeaders, type SecurityHeadersOptions } from './middleware/security-headers';
export { cors, type PerimeterCorsOptions } from './middleware/cors';
export { bodyParser, type BodyParserOptions } from './middleware/body-parser';
export { notFound } from './middleware/not-found';
export { errorNormalizer, type ErrorNormalizerOptions } from './middleware/error-normalizer';
