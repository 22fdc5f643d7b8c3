// Quiet by default: tests that assert log lines inject their own recording logger.
process.env.LOG_LEVEL ??= 'silent';
