// Builds and starts the whole server from a Config; server.ts and the tests both use this.
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createAuthenticator } from './auth/authenticator.ts';
import { createJwtVerifier, type JwtVerifierOptions, looksLikeJwt } from './auth/jwt.ts';
import { ensureDevKey } from './auth/keys-command.ts';
import { loadAgents } from './chat/agents.ts';
import { chatRoutes } from './chat/routes.ts';
import { type ChatService, createChatService } from './chat/service.ts';
import { createUpstream, type Upstream } from './chat/upstream.ts';
import type { Config } from './config.ts';
import { createDatabase, type Database } from './db/database.ts';
import { isDatabaseUnavailable } from './db/errors.ts';
import { migrate } from './db/migrate.ts';
import { AppError } from './errors.ts';
import { healthRoutes } from './health.ts';
import { createApp } from './http/app.ts';
import { addressGroup, createClientIp, createProxyCheck } from './http/client-ip.ts';
import { accessLog } from './http/middleware/access-log.ts';
import { auth } from './http/middleware/auth.ts';
import { bodyLimit } from './http/middleware/body-limit.ts';
import { cors } from './http/middleware/cors.ts';
import { errorHandler } from './http/middleware/errors.ts';
import { rateLimit } from './http/middleware/rate-limit.ts';
import { requestId } from './http/middleware/request-id.ts';
import { securityHeaderList, securityHeaders } from './http/middleware/security-headers.ts';
import type { Route } from './http/router.ts';
import { createHttpServer } from './http/server.ts';
import type { Context } from './http/types.ts';
import { type ConcurrencyLimiter, createConcurrencyLimiter } from './limits/concurrency.ts';
import { createFailureThrottle } from './limits/failure-throttle.ts';
import { createMemoryStore } from './limits/memory-store.ts';
import { createPostgresStore } from './limits/postgres-store.ts';
import { rateLimitFormatter } from './limits/ratelimit-headers.ts';
import { bucketPolicy, type Decision } from './limits/token-bucket.ts';
import type { Logger } from './log.ts';
import { createAppMetrics } from './metrics/app-metrics.ts';
import { metricsRoutes } from './metrics/routes.ts';
import { createSecurityEvents, type SecurityEventKind } from './security-events.ts';

export interface RunningServer {
  server: Server;
  /** Base URL, e.g. http://127.0.0.1:8000 */
  url: string;
  db: Database;
  slots: ConcurrencyLimiter;
  upstream: Upstream;
  chat: ChatService;
  /** Stops accepting, lets requests finish within the grace period, then closes everything. */
  shutdown(graceMs?: number): Promise<void>;
}

/** Opens the database, applies migrations, builds the app and listens. */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const db = await createDatabase(config, log);
  const cleanups: Array<() => Promise<void> | void> = [() => db.close()];
  try {
    await migrate(db.pool);
    if (db.kind === 'pglite') await ensureDevKey(db.pool, config.dataDir, log);
    const agents = await loadAgents(config);
    const upstream = createUpstream(config, log);
    cleanups.push(() => upstream.close());
    const jwt = config.jwt.enabled ? await createJwtVerifier(jwtOptions(config)) : undefined;
    const limits = createRateLimiter(config, db, log);
    cleanups.push(() => limits.close());
    const slots = createConcurrencyLimiter(config.maxConcurrentStreamsPerKey);
    const metrics = createAppMetrics();
    cleanups.push(() => metrics.close());
    metrics.setPoolSource(() => ({
      total: db.pool.totalCount,
      idle: db.pool.idleCount,
      waiting: db.pool.waitingCount,
    }));
    metrics.setStreamSlotsSource(() => slots.inUse());
    const authenticate = createAuthenticator({ pool: db.pool, jwt });
    // One throttle for every credential the server checks: API keys, JWTs and the metrics token.
    const failures = createFailureThrottle(config.authFailuresPerMinute);
    const security = createSecurityEvents(log, { onEvent: (kind) => metrics.securityEvent(kind) });
    const shutdown = new AbortController();
    const chat = createChatService({
      pool: db.pool,
      upstream,
      agents,
      slots,
      log,
      maxMessageChars: config.maxMessageChars,
      historyMaxChars: config.historyMaxChars,
      shutdownSignal: shutdown.signal,
      observer: {
        upstreamOutcome: (outcome) => metrics.upstreamOutcome(outcome),
        firstToken: (seconds) => metrics.firstToken(seconds),
        streamOpened: () => metrics.streamOpened(),
        streamClosed: () => metrics.streamClosed(),
        streamRejected: () => metrics.rateLimitRejected('streams'),
      },
    });
    const event = (kind: SecurityEventKind) => (ctx: Context, reason?: string) =>
      security.emit(kind, { requestId: ctx.requestId, ip: ctx.clientIp, identity: ctx.identity?.id, reason });
    const authThrottled = (ctx: Context): void => {
      metrics.rateLimitRejected('auth_throttle');
      event('auth_throttled')(ctx);
    };
    let draining = false;
    let stopping: Promise<void> | undefined;
    const routes: Route[] = [
      ...healthRoutes({ pool: db.pool, timeoutMs: config.healthDbTimeoutMs, isDraining: () => draining }),
      ...chatRoutes({ pool: db.pool, chat, agents, maxBodyBytes: config.maxBodyBytes }),
      ...metricsRoutes({
        render: () => metrics.render(),
        token: config.secrets.metricsToken,
        throttle: failures,
        addressKey: addressGroup,
        isTrustedProxy: createProxyCheck(config.trustProxy),
        onDenied: event('metrics_denied'),
        onThrottled: authThrottled,
      }),
    ];
    const listener = createApp({
      routes,
      middleware: [
        requestId(),
        securityHeaders({ hsts: config.hsts }),
        accessLog({ log, observe: (ctx, ms) => metrics.observeRequest(ctx.method, ctx.route, ctx.status, ms / 1000) }),
        errorHandler({
          classify: (err) =>
            isDatabaseUnavailable(err)
              ? new AppError('SERVICE_UNAVAILABLE', { cause: err, headers: { 'Retry-After': '5' } })
              : undefined,
        }),
        bodyLimit(config.maxBodyBytes),
        cors({ origins: config.corsOrigins, onReject: event('cors_rejected') }),
        auth({
          prefix: '/v1/',
          authenticate,
          cached: authenticate.cached,
          throttle: failures,
          checkedLocally: (token) => jwt !== undefined && looksLikeJwt(token),
          addressKey: addressGroup,
          onFailure: (ctx, reason) => {
            metrics.authFailed('invalid_credentials');
            event('auth_failure')(ctx, reason);
          },
          onThrottled: authThrottled,
        }),
        rateLimit({
          prefix: '/v1/',
          take: limits.take,
          headers: limits.headers,
          onRejected: (ctx) => {
            metrics.rateLimitRejected('rate_limit');
            event('rate_limited')(ctx);
          },
          onStoreError: (ctx, err) =>
            log.error('rate-limit store failed; refusing requests', { err, requestId: ctx.requestId }),
        }),
      ],
      log,
      deadlineMs: config.http.requestTimeoutMs,
      clientIp: createClientIp(config.trustProxy),
    });
    const server = createHttpServer(
      { ...config.http, securityHeaders: securityHeaderList({ hsts: config.hsts }), log },
      listener,
    );
    await listen(server, config.port, config.host);
    const { port } = server.address() as AddressInfo;
    const host = config.host.includes(':') ? `[${config.host}]` : config.host;
    log.info('listening', { url: `http://${host}:${port}`, database: db.kind });
    return {
      server,
      url: `http://${host}:${port}`,
      db,
      slots,
      upstream,
      chat,
      shutdown(graceMs = config.shutdownGraceMs) {
        // Idempotent: a second call (a test's cleanup after its own drain) waits for the first.
        stopping ??= stop(graceMs);
        return stopping;
      },
    };
    async function stop(graceMs: number): Promise<void> {
      draining = true;
      await drainServer(server, graceMs);
      // Streams still open after the grace period end with `event: error` SHUTTING_DOWN and are stored incomplete.
      shutdown.abort(new AppError('SHUTTING_DOWN'));
      await waitAtMost(chat.idle(), 2_000);
      server.closeAllConnections();
      for (const cleanup of cleanups.reverse()) await cleanup();
    }
  } catch (err) {
    for (const cleanup of cleanups.reverse()) await cleanup();
    throw err;
  }
}

function jwtOptions(config: Config): JwtVerifierOptions {
  // The configuration refuses to start without JWT_AUDIENCE when JWTs are on; the verifier refuses '' too.
  const options: JwtVerifierOptions = { audience: config.jwt.audience ?? '' };
  if (config.secrets.jwtSecret !== undefined) options.secret = config.secrets.jwtSecret;
  if (config.jwt.publicKeyFile !== undefined) options.publicKey = readFileSync(config.jwt.publicKeyFile, 'utf8');
  if (config.jwt.issuer !== undefined) options.issuer = config.jwt.issuer;
  return options;
}

/** The per-identity bucket: synchronous in memory, one SQL statement per decision in PostgreSQL. */
function createRateLimiter(config: Config, db: Database, log: Logger) {
  const policy = bucketPolicy(config.rateLimit.perMinute, config.rateLimit.burst);
  const headers: (decision: Decision) => readonly string[] = rateLimitFormatter(policy);
  if (config.rateLimit.store === 'postgres') {
    const store = createPostgresStore(db.pool, { onError: (err) => log.warn('rate-limit sweep failed', { err }) });
    return { take: (key: string) => store.take(key, policy), headers, close: () => store.close() };
  }
  const store = createMemoryStore();
  return { take: (key: string) => store.takeSync(key, policy), headers, close: async () => {} };
}

function waitAtMost(promise: Promise<void>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([promise, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

function listen(server: Server, port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
}

/** Closes the listener and idle sockets, waits for in-flight requests up to `graceMs`, then cuts the rest. */
async function drainServer(server: Server, graceMs: number): Promise<void> {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  // Keep-alive sockets that finish their last response become idle; close them as they do.
  const sweep = setInterval(() => server.closeIdleConnections(), 100);
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<void>((resolve) => {
    timer = setTimeout(resolve, graceMs);
  });
  server.closeIdleConnections();
  await Promise.race([closed, timeout]);
  clearInterval(sweep);
  clearTimeout(timer);
}
