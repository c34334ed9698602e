// Builds and starts the whole server from a Config; server.ts and the tests both use this.
import { readFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { startAdminSocket } from './admin-socket.ts';
import { type Authenticate, createAuthenticator } from './auth/authenticator.ts';
import { createJwtVerifier, type JwtVerifier, type JwtVerifierOptions, looksLikeJwt } from './auth/jwt.ts';
import { ensureDevKey, type KeysOutput, parseKeysArgs, runKeys } from './auth/keys-command.ts';
import { type AgentRegistry, loadAgents } from './chat/agents.ts';
import { AI_SDK_CHAT_ROUTE, aiSdkRoutes } from './chat/ai-sdk.ts';
import { createPgFanout, type Fanout } from './chat/fanout.ts';
import { liveRoutes } from './chat/live-routes.ts';
import { nativeChat } from './chat/native.ts';
import { COMPLETIONS_ROUTE, OPENAI_ROUTES, openAiRoutes, sendOpenAiError } from './chat/openai.ts';
import { createResumer } from './chat/resume.ts';
import { chatRoutes } from './chat/routes.ts';
import { type ChatObserver, createTurnEngine, type TurnEngine } from './chat/turn.ts';
import { createUpstreamRouter, type UpstreamRouter } from './chat/upstream-router.ts';
import { usageRoutes } from './chat/usage-routes.ts';
import type { Config } from './config.ts';
import { createDatabase, createSessionClient, type Database } from './db/database.ts';
import { isDatabaseUnavailable } from './db/errors.ts';
import { migrate } from './db/migrate.ts';
import { waitAtMost } from './deadline.ts';
import { AppError } from './errors.ts';
import { healthRoutes, upstreamHealthRoute } from './health.ts';
import { createApp } from './http/app.ts';
import { addressGroup, createClientIp, createProxyCheck } from './http/client-ip.ts';
import { accessLog } from './http/middleware/access-log.ts';
import { auth } from './http/middleware/auth.ts';
import { bodyLimit } from './http/middleware/body-limit.ts';
import { cors } from './http/middleware/cors.ts';
import { refuseWhileDraining } from './http/middleware/drain.ts';
import { errorHandler } from './http/middleware/errors.ts';
import { rateLimit } from './http/middleware/rate-limit.ts';
import { requestId } from './http/middleware/request-id.ts';
import { securityHeaderList, securityHeaders } from './http/middleware/security-headers.ts';
import type { Route } from './http/router.ts';
import { createHttpServer } from './http/server.ts';
import type { Context, Middleware } from './http/types.ts';
import { createBudgets } from './limits/budget.ts';
import { createFailureThrottle, type FailureThrottle } from './limits/failure-throttle.ts';
import { createRateLimiter, createStreamSlots, type RateLimiter } from './limits/limiters.ts';
import type { StreamSlots } from './limits/stream-leases.ts';
import type { Logger } from './log.ts';
import { type AppMetrics, createAppMetrics } from './metrics/app-metrics.ts';
import { metricsGuard, metricsRoutes } from './metrics/routes.ts';
import { createSecurityEvents, type SecurityEventKind, type SecurityEvents } from './security-events.ts';

export interface RunningServer {
  server: Server;
  /** Base URL, e.g. http://127.0.0.1:8000 */
  url: string;
  db: Database;
  slots: StreamSlots;
  upstream: UpstreamRouter;
  /** The turn engine: turns in progress, and a promise for when none is. */
  chat: TurnEngine;
  /** Refuses new work, lets requests finish within the grace period, then closes everything. */
  shutdown(graceMs?: number): Promise<void>;
}

/** The long-lived parts the routes and middleware are built from. */
interface Services {
  agents: AgentRegistry;
  upstream: UpstreamRouter;
  authenticate: Authenticate;
  /** The JWT verifier when JWTs are on: a JWT is checked without the database, even from a throttled address. */
  jwt: JwtVerifier | undefined;
  /** Failed credentials per address group: API keys, JWTs and the metrics token share it. */
  failures: FailureThrottle;
  limits: RateLimiter;
  slots: StreamSlots;
  metrics: AppMetrics;
  security: SecurityEvents;
  chat: TurnEngine;
  /** Live answers across instances; undefined on the embedded database (one instance). */
  fanout: Fanout | undefined;
  /** Aborted when a drain's grace period ends: live streams stop with SHUTTING_DOWN. */
  shutdown: AbortController;
}

/** Whether a drain has begun; middleware and /health read it per request. */
interface DrainState {
  draining: boolean;
}

/** Things to close on shutdown (or after a failed start), last opened first. */
type Cleanup = () => Promise<void> | void;

// Answer for themselves while draining: readiness says 503, liveness and metrics keep working.
const DRAIN_EXEMPT = new Set(['/health', '/health/live', '/health/upstream', '/metrics']);
// How long the drain waits for aborted streams to store their answers before closing the pool.
const STREAM_STORE_WAIT_MS = 2_000;
// How long ended streams get to flush their final frame before every connection is cut.
const LAST_FRAME_WAIT_MS = 1_000;

/** Opens the database, applies migrations, builds the app and listens. */
export async function startServer(config: Config, log: Logger): Promise<RunningServer> {
  const db = await createDatabase(config, log);
  const cleanups: Cleanup[] = [() => db.close()];
  try {
    await migrate(db.pool);
    const services = await buildServices(config, db, log, cleanups);
    if (db.kind === 'pglite') {
      await ensureDevKey(db.pool, config.dataDir, log);
      // While this server holds the embedded database, `keys …` runs here instead of failing on the lock.
      const run = (args: readonly string[], io: KeysOutput) => runKeysHere(db, services.agents, args, io);
      const admin = await startAdminSocket(config.dataDir, run, log);
      cleanups.push(() => admin.close());
    }
    const drain: DrainState = { draining: false };
    const headerList = securityHeaderList({ hsts: config.hsts });
    const listener = createApp({
      routes: buildRoutes(config, db, services, drain),
      middleware: buildMiddleware(config, services, drain, headerList, log),
      log,
      deadlineMs: config.http.requestTimeoutMs,
      clientIp: createClientIp(config.trustProxy),
    });
    const server = createHttpServer({ ...config.http, securityHeaders: headerList, log }, listener);
    const url = await listen(server, config.port, config.host);
    log.info('listening', { url, database: db.kind });
    let stopping: Promise<void> | undefined;
    const { upstream, slots, chat } = services;
    return {
      server,
      url,
      db,
      slots,
      upstream,
      chat,
      shutdown(graceMs = config.shutdownGraceMs) {
        // Idempotent: a second call (a test's cleanup after its own drain) waits for the first.
        stopping ??= stop({ server, services, drain, cleanups, graceMs, readinessMs: config.drainReadinessMs });
        return stopping;
      },
    };
  } catch (err) {
    await runCleanups(cleanups);
    throw err;
  }
}

async function buildServices(config: Config, db: Database, log: Logger, cleanups: Cleanup[]): Promise<Services> {
  const agents = await loadAgents(config);
  // Known only now that the agents file named them; redacted before any client holds them.
  log.addSecrets(fallbackKeys(agents, config));
  const jwt = config.jwt.enabled ? await createJwtVerifier(jwtOptions(config)) : undefined;
  const limits = createRateLimiter(config, db, log);
  cleanups.push(() => limits.close());
  const slots = createStreamSlots(config, db, log);
  if (slots.close !== undefined) cleanups.push(slots.close);
  const metrics = createAppMetrics();
  cleanups.push(() => metrics.close());
  const { pool } = db;
  metrics.setPoolSource(() => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount }));
  metrics.setStreamSlotsSource(() => slots.inUse());
  const security = createSecurityEvents(log, { onEvent: (kind) => metrics.securityEvent(kind) });
  const upstream = createUpstreamRouter({
    config,
    log,
    agents: agents.all(),
    hooks: {
      fallback: (label) => metrics.upstreamFallback(label),
      breakerChanged: (label, from, to) => security.emit('upstream_breaker', { upstream: label, state: to, from }),
    },
  });
  cleanups.push(() => upstream.close());
  metrics.setBreakerSource(() => upstream.breakers());
  const shutdown = new AbortController();
  if (!upstream.configured) {
    log.warn(
      'no model configured: the chat routes answer 503 MODEL_NOT_CONFIGURED; set OPENAI_API_KEY or OPENAI_BASE_URL',
    );
  }
  const budgets = createBudgets({
    pool,
    log,
    defaultTokensPerDay: config.tokenBudgetPerDay,
    // Past every deadline a turn can have (and the drain): an unsettled reservation then counts for nothing.
    reservationTtlMs: config.upstream.timeoutMs + config.upstream.maxDurationMs + config.shutdownGraceMs + 60_000,
    onRejected: () => metrics.budgetRejected(),
  });
  const chat = createTurnEngine({
    pool,
    upstream,
    agents,
    slots,
    budgets,
    maxMessageChars: config.maxMessageChars,
    log,
    historyMaxChars: config.historyMaxChars,
    maxAnswerChars: config.maxAnswerChars,
    shutdownSignal: shutdown.signal,
    observer: chatObserver(metrics),
  });
  const authenticate = createAuthenticator({ pool, jwt, jwtBudgetClaim: config.jwt.budgetClaim });
  // One throttle for every credential the server checks: API keys, JWTs and the metrics token.
  const failures = createFailureThrottle(config.authFailuresPerMinute);
  const fanout = db.kind === 'postgres' ? createFanout(config, db, log) : undefined;
  if (fanout !== undefined) {
    fanout.serve(chat);
    cleanups.push(() => fanout.close());
  }
  return { agents, upstream, authenticate, jwt, failures, limits, slots, metrics, security, chat, fanout, shutdown };
}

function createFanout(config: Config, db: Database, log: Logger): Fanout {
  return createPgFanout({
    connect: () => createSessionClient(config, 'chat-server-listener'),
    pool: db.pool,
    log: log.child({ component: 'fanout' }),
  });
}

function buildRoutes(config: Config, db: Database, services: Services, drain: DrainState): Route[] {
  const resume = createResumer({
    turns: services.chat,
    pool: db.pool,
    fanout: services.fanout,
    // Past its deadlines (and the drain), an answer that never stored its end has no instance running it.
    maxAnswerAgeSeconds: (config.upstream.timeoutMs + config.upstream.maxDurationMs + config.shutdownGraceMs) / 1000,
  });
  const { chat, agents, metrics } = services;
  const isDraining = () => drain.draining;
  const gate = {
    token: config.secrets.metricsToken,
    throttle: services.failures,
    addressKey: addressGroup,
    isTrustedProxy: createProxyCheck(config.trustProxy),
    onDenied: securityEvent(services.security, 'metrics_denied'),
    onThrottled: authThrottled(services),
  };
  return [
    ...healthRoutes({ pool: db.pool, timeoutMs: config.healthDbTimeoutMs, isDraining }),
    ...chatRoutes({
      pool: db.pool,
      chat: nativeChat({
        turns: chat,
        agents,
        maxMessageChars: config.maxMessageChars,
        onDisconnect: config.answerOnDisconnect,
      }),
      agents,
      maxBodyBytes: config.maxBodyBytes,
    }),
    ...liveRoutes({ pool: db.pool, turns: chat, fanout: services.fanout, resume }),
    ...usageRoutes({ pool: db.pool, defaultTokensPerDay: config.tokenBudgetPerDay }),
    ...aiSdkRoutes({
      pool: db.pool,
      turns: chat,
      agents,
      maxBodyBytes: config.completionsMaxBodyBytes,
      maxMessageChars: config.maxMessageChars,
      onDisconnect: config.answerOnDisconnect,
      resume,
    }),
    ...openAiRoutes({
      turns: chat,
      agents,
      maxBodyBytes: config.completionsMaxBodyBytes,
      maxInputChars: config.historyMaxChars + config.maxMessageChars,
      ownedBy: config.modelsOwnedBy,
      createdSeconds: Math.floor(Date.now() / 1000),
    }),
    ...metricsRoutes({ render: () => metrics.render(), ...gate }),
    upstreamHealthRoute({ breakers: () => services.upstream.breakers(), guard: metricsGuard(gate) }),
  ];
}

/** The values of the key variables the agents' fallbacks name (loadAgents has checked that each is set). */
function fallbackKeys(agents: AgentRegistry, config: Config): string[] {
  const names = new Set(agents.all().flatMap((a) => a.fallbacks.flatMap((f) => f.apiKeyEnv ?? [])));
  return [...names].flatMap((name) => config.secrets.variable(name) ?? []);
}

/** The chain in order: identify and log every request, refuse early, authenticate, then limit. */
function buildMiddleware(
  config: Config,
  services: Services,
  drain: DrainState,
  headerList: readonly string[],
  log: Logger,
): Middleware[] {
  const { metrics, security, authenticate, limits } = services;
  return [
    requestId(),
    securityHeaders(headerList),
    accessLog({ log, observe: (ctx, ms) => metrics.observeRequest(ctx.method, ctx.route, ctx.status, ms / 1000) }),
    errorHandler({ classify: databaseUnavailable, writerFor: errorDialect }),
    refuseWhileDraining({ isDraining: () => drain.draining, exempt: DRAIN_EXEMPT }),
    // Both dialects carry a client's whole history in the body (the AI SDK's is ignored but still sent).
    bodyLimit(
      config.maxBodyBytes,
      new Map([
        [COMPLETIONS_ROUTE, config.completionsMaxBodyBytes],
        [AI_SDK_CHAT_ROUTE, config.completionsMaxBodyBytes],
      ]),
    ),
    cors({ origins: config.corsOrigins, onReject: securityEvent(security, 'cors_rejected') }),
    auth({
      authenticate,
      cached: authenticate.cached,
      throttle: services.failures,
      checkedLocally: (token) => services.jwt !== undefined && looksLikeJwt(token),
      addressKey: addressGroup,
      onFailure: (ctx, reason) => {
        metrics.authFailed('invalid_credentials');
        securityEvent(security, 'auth_failure')(ctx, reason);
      },
      onThrottled: authThrottled(services),
    }),
    rateLimit({
      take: limits.take,
      headers: limits.headers,
      onRejected: (ctx) => {
        metrics.rateLimitRejected('rate_limit');
        securityEvent(security, 'rate_limited')(ctx);
      },
      onStoreError: (ctx, err) =>
        log.error('rate-limit store failed; refusing requests', { err, requestId: ctx.requestId }),
    }),
  ];
}

/** OpenAI's clients parse OpenAI's error object; every other route answers problem+json. */
function errorDialect(ctx: Context): ((ctx: Context, err: AppError) => void) | undefined {
  return OPENAI_ROUTES.has(ctx.route) ? sendOpenAiError : undefined;
}

/** A keys subcommand sent over the admin socket, run on this server's own database. */
async function runKeysHere(
  db: Database,
  agents: AgentRegistry,
  args: readonly string[],
  io: KeysOutput,
): Promise<number> {
  const command = parseKeysArgs(args, io);
  return command === undefined ? 2 : runKeys(db.pool, command, io, (id) => agents.get(id) !== undefined);
}

/** A database that cannot be reached is a 503 the client may retry, not a 500. */
function databaseUnavailable(err: unknown): AppError | undefined {
  if (!isDatabaseUnavailable(err)) return undefined;
  return new AppError('SERVICE_UNAVAILABLE', { cause: err, headers: { 'Retry-After': '5' } });
}

function authThrottled({ metrics, security }: Services): (ctx: Context) => void {
  return (ctx) => {
    metrics.rateLimitRejected('auth_throttle');
    securityEvent(security, 'auth_throttled')(ctx);
  };
}

function securityEvent(security: SecurityEvents, kind: SecurityEventKind) {
  return (ctx: Context, reason?: string): void =>
    security.emit(kind, { requestId: ctx.requestId, ip: ctx.clientIp, identity: ctx.identity?.id, reason });
}

/** The chat service's observer: upstream outcomes, first-token latency and stream counts as metrics. */
function chatObserver(metrics: AppMetrics): ChatObserver {
  return {
    upstreamOutcome: (outcome) => metrics.upstreamOutcome(outcome),
    firstToken: (seconds) => metrics.firstToken(seconds),
    streamOpened: () => metrics.streamOpened(),
    streamClosed: () => metrics.streamClosed(),
    streamRejected: () => metrics.rateLimitRejected('streams'),
    tokensUsed: (agent, promptTokens, completionTokens) => metrics.tokensUsed(agent, promptTokens, completionTokens),
  };
}

interface StopOptions {
  server: Server;
  services: Services;
  drain: DrainState;
  cleanups: Cleanup[];
  graceMs: number;
  readinessMs: number;
}

/**
 * The drain: keep listening for the readiness window answering 503 (load balancers see /health
 * fail and stop sending), then close the listener and let requests in flight finish until the
 * grace period ends; streams still open then stop with SHUTTING_DOWN and are stored incomplete.
 */
async function stop(options: StopOptions): Promise<void> {
  const { server, services, drain, graceMs } = options;
  const deadlineMs = performance.now() + graceMs;
  drain.draining = true;
  await sleep(Math.min(options.readinessMs, graceMs));
  const listener = closeListener(server);
  // Answers outlive their connections: wait for both within the grace.
  const settled = Promise.all([listener.closed, services.chat.idle()]).then(() => {});
  await waitAtMost(settled, Math.max(0, deadlineMs - performance.now()), undefined);
  services.shutdown.abort(new AppError('SHUTTING_DOWN'));
  await waitAtMost(services.chat.idle(), STREAM_STORE_WAIT_MS, undefined);
  // Aborted streams write their last frame after their answer is stored: let them end before cutting.
  await waitAtMost(listener.closed, LAST_FRAME_WAIT_MS, undefined);
  listener.stopSweeping();
  server.closeAllConnections();
  await runCleanups(options.cleanups);
}

async function runCleanups(cleanups: Cleanup[]): Promise<void> {
  for (const cleanup of cleanups.reverse()) await cleanup();
}

function jwtOptions(config: Config): JwtVerifierOptions {
  // The configuration refuses to start without JWT_AUDIENCE when JWTs are on; the verifier refuses '' too.
  const options: JwtVerifierOptions = { audience: config.jwt.audience ?? '' };
  if (config.secrets.jwtSecret !== undefined) options.secret = config.secrets.jwtSecret;
  if (config.jwt.publicKeyFile !== undefined) options.publicKey = readFileSync(config.jwt.publicKeyFile, 'utf8');
  if (config.jwt.issuer !== undefined) options.issuer = config.jwt.issuer;
  return options;
}

/** Listens and resolves with the base URL (the real port when `port` is 0). */
function listen(server: Server, port: number, host: string): Promise<string> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const bound = (server.address() as AddressInfo).port;
      resolve(`http://${host.includes(':') ? `[${host}]` : host}:${bound}`);
    });
  });
}

/** Closes the listener, and each keep-alive socket as soon as it is idle; `closed` resolves when none is left. */
function closeListener(server: Server): { closed: Promise<void>; stopSweeping(): void } {
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  const sweep = setInterval(() => server.closeIdleConnections(), 100);
  server.closeIdleConnections();
  return { closed, stopSweeping: () => clearInterval(sweep) };
}
