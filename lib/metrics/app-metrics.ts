// The server's metric set: HTTP, rate limits, auth, upstream, streams, database pool, runtime.
//
// Every method here may run once per request or per token, so label children are resolved
// once and cached; values that are sampled (pool, memory, event-loop delay) are read by collect
// hooks when Prometheus scrapes, not on the request path. deploy/alerts.yml uses these names.

import type { ELDHistogram } from 'node:perf_hooks';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import type { Counter, CounterChild, Gauge, Histogram, HistogramChild, Registry } from './registry.ts';
import { createRegistry } from './registry.ts';

/** Why a request was refused with 429: the token bucket, the failed-auth throttle, or the stream cap. */
export const RATE_LIMIT_REASONS = ['rate_limit', 'auth_throttle', 'streams'] as const;
export type RateLimitReason = (typeof RATE_LIMIT_REASONS)[number];

/** How an upstream call ended: 'ok' or an UpstreamErrorKind from lib/chat/upstream.ts. */
export const UPSTREAM_OUTCOMES = ['ok', 'aborted', 'timeout', 'unavailable', 'status', 'connection', 'broken'] as const;
export type UpstreamOutcome = (typeof UPSTREAM_OUTCOMES)[number];

/** Request latency buckets, 1 ms to 10 s. */
export const HTTP_DURATION_BUCKETS_SECONDS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
] as const;
/** Upstream time-to-first-token buckets, 50 ms to 30 s (the default UPSTREAM_TIMEOUT_MS). */
export const FIRST_TOKEN_BUCKETS_SECONDS = [0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30] as const;

/** Every metric this module exports, for the README and the alert rules. */
export const METRIC_NAMES = [
  'http_requests_total',
  'http_request_duration_seconds',
  'rate_limit_rejections_total',
  'auth_failures_total',
  'upstream_requests_total',
  'upstream_time_to_first_token_seconds',
  'security_events_total',
  'tokens_total',
  'budget_rejections_total',
  'upstream_fallbacks_total',
  'chat_active_streams',
  'stream_slots_in_use',
  'db_pool_connections',
  'nodejs_eventloop_delay_p99_seconds',
  'process_resident_memory_bytes',
  'upstream_breaker_state',
] as const;

/** A circuit breaker's state as the gauge exports it: 0 closed, 1 half-open, 2 open. */
export const BREAKER_STATE_VALUES = { closed: 0, half_open: 1, open: 2 } as const;

/** One upstream's breaker, as the gauge reads it at each scrape. */
export interface BreakerSample {
  upstream: string;
  state: keyof typeof BREAKER_STATE_VALUES;
}

/** Connection counts of the database pool (pg.Pool's totalCount, idleCount, waitingCount). */
export interface PoolStats {
  total: number;
  idle: number;
  waiting: number;
}

/** The app's metric handles, plus cheap per-event methods for the HTTP chain and the chat service. */
export interface AppMetrics {
  readonly registry: Registry;
  readonly httpRequests: Counter;
  readonly httpRequestDuration: Histogram;
  readonly rateLimitRejections: Counter;
  readonly authFailures: Counter;
  readonly upstreamRequests: Counter;
  readonly upstreamTimeToFirstToken: Histogram;
  readonly activeStreams: Gauge;
  readonly streamSlotsInUse: Gauge;
  readonly dbPoolConnections: Gauge;
  readonly securityEvents: Counter;
  readonly tokens: Counter;
  readonly budgetRejections: Counter;
  readonly upstreamBreakerState: Gauge;
  readonly upstreamFallbacks: Counter;
  /** Once per request; `route` is the matched pattern (or UNMATCHED_ROUTE), never the raw path. */
  observeRequest(method: string, route: string, status: number, seconds: number): void;
  rateLimitRejected(reason: RateLimitReason): void;
  /** `reason` is a short fixed word (missing, invalid, revoked, expired…), never caller input. */
  authFailed(reason: string): void;
  /** The next four make this object usable as the chat service's ChatObserver. */
  upstreamOutcome(outcome: UpstreamOutcome | (string & {})): void;
  firstToken(seconds: number): void;
  streamOpened(): void;
  streamClosed(): void;
  securityEvent(kind: string): void;
  /** Tokens a turn used, by agent: `in` for the prompt, `out` for the completion. */
  tokensUsed(agent: string, promptTokens: number, completionTokens: number): void;
  /** A turn refused because its identity's daily token budget would be exceeded. */
  budgetRejected(): void;
  /**
   * Read at each scrape; pass
   * `() => ({ total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount })`.
   */
  setPoolSource(source: () => PoolStats): void;
  /** Read at each scrape; pass `() => limiter.inUse()`. */
  setStreamSlotsSource(source: () => number): void;
  /** Read at each scrape; pass `() => router.breakers()`. Its upstreams' fallback counters start at 0. */
  setBreakerSource(source: () => readonly BreakerSample[]): void;
  /** A turn left `upstream` for its next fallback. */
  upstreamFallback(upstream: string): void;
  render(): string;
  /** Stops the event-loop monitor. */
  close(): void;
}

// Labels fed by callers' words (reasons, kinds) get a small cap: a caller bug costs a few series at most.
const SMALL_LABEL_SET = { maxSeries: 32 };
// Cached (counter, histogram) children for method+route+status; beyond this the registry's overflow applies.
const MAX_CACHED_REQUEST_CHILDREN = 2000;
const LOOP_RESOLUTION_MS = 20;
const LOOP_RESOLUTION_NS = LOOP_RESOLUTION_MS * 1e6;

interface RequestChildren {
  count: CounterChild;
  duration: HistogramChild;
}

/** Where the sampled gauges read from; filled in by setPoolSource() / setStreamSlotsSource(). */
interface Sources {
  pool: (() => PoolStats) | undefined;
  slots: (() => number) | undefined;
  breakers: (() => readonly BreakerSample[]) | undefined;
}

// Every metric with its HELP text: the counted ones, then the gauges (sampled ones read `sources` and `loop`).
function registerAll(registry: Registry, sources: Sources, loop: ELDHistogram) {
  return { ...registerCounted(registry), ...registerGauges(registry, sources, loop) };
}

/** Counters and histograms, fed as requests and turns happen. */
function registerCounted(registry: Registry) {
  const httpRequests = registry.counter('http_requests_total', 'HTTP requests by method, route pattern and status.', [
    'method',
    'route',
    'status',
  ]);
  const httpRequestDuration = registry.histogram(
    'http_request_duration_seconds',
    'Time from request start to response end (whole stream for SSE), by route pattern.',
    ['route'],
    HTTP_DURATION_BUCKETS_SECONDS,
  );
  const rateLimitRejections = registry.counter('rate_limit_rejections_total', 'Requests refused with 429, by reason.', [
    'reason',
  ]);
  const authFailures = registry.counter(
    'auth_failures_total',
    'Failed authentication attempts, by reason.',
    ['reason'],
    SMALL_LABEL_SET,
  );
  const upstreamRequests = registry.counter(
    'upstream_requests_total',
    'Calls to the model provider, by outcome.',
    ['outcome'],
    SMALL_LABEL_SET,
  );
  const upstreamTimeToFirstToken = registry.histogram(
    'upstream_time_to_first_token_seconds',
    'Time from sending the upstream request to its first streamed token.',
    [],
    FIRST_TOKEN_BUCKETS_SECONDS,
  );
  const securityEvents = registry.counter(
    'security_events_total',
    'Security events (as logged), by kind.',
    ['kind'],
    SMALL_LABEL_SET,
  );
  // One series per agent and direction; agents come from the server's own file (at most 1000).
  const tokens = registry.counter('tokens_total', 'Model tokens used, by agent and direction (in, out).', [
    'agent',
    'direction',
  ]);
  const budgetRejections = registry.counter(
    'budget_rejections_total',
    'Turns refused with 429 BUDGET_EXCEEDED before the model was called.',
  );
  // Labels come from the agents file, not from requests: bounded by its size.
  const upstreamFallbacks = registry.counter(
    'upstream_fallbacks_total',
    'Turns that left an upstream for the next fallback before the first token, by the upstream left.',
    ['upstream'],
  );
  return {
    httpRequests,
    httpRequestDuration,
    rateLimitRejections,
    authFailures,
    upstreamRequests,
    upstreamTimeToFirstToken,
    securityEvents,
    tokens,
    budgetRejections,
    upstreamFallbacks,
  };
}

/** Gauges: set as streams come and go, or sampled at each scrape. */
function registerGauges(registry: Registry, sources: Sources, loop: ELDHistogram) {
  const activeStreams = registry.gauge('chat_active_streams', 'Chat answers being streamed now.');
  const streamSlotsInUse = registry.gauge(
    'stream_slots_in_use',
    'Per-identity stream slots held, summed over identities.',
    [],
    () => {
      if (sources.slots !== undefined) streamSlotsInUse.set(sources.slots());
    },
  );
  const dbPoolConnections = registry.gauge(
    'db_pool_connections',
    'Database pool connections by state (total, idle, waiting clients).',
    ['state'],
    () => {
      if (sources.pool === undefined) return;
      const stats = sources.pool();
      dbPoolConnections.set(stats.total, { state: 'total' });
      dbPoolConnections.set(stats.idle, { state: 'idle' });
      dbPoolConnections.set(stats.waiting, { state: 'waiting' });
    },
  );
  const eventLoopDelay = registry.gauge(
    'nodejs_eventloop_delay_p99_seconds',
    'Event-loop delay p99 since the previous scrape.',
    [],
    () => {
      // Node's samples are whole timer intervals, so an idle loop reads ~resolution: subtract it to get the delay.
      eventLoopDelay.set(loop.count === 0 ? 0 : Math.max(0, loop.percentile(99) - LOOP_RESOLUTION_NS) / 1e9);
      loop.reset();
    },
  );
  const residentMemory = registry.gauge(
    'process_resident_memory_bytes',
    'Resident set size of this process.',
    [],
    () => {
      // memoryUsage.rss() reads one number; memoryUsage() would also walk the V8 heap spaces.
      residentMemory.set(process.memoryUsage.rss());
    },
  );
  const upstreamBreakerState = registry.gauge(
    'upstream_breaker_state',
    'Circuit breaker of each upstream (base URL origin and model): 0 closed, 1 half-open, 2 open.',
    ['upstream'],
    () => {
      for (const b of sources.breakers?.() ?? [])
        upstreamBreakerState.set(BREAKER_STATE_VALUES[b.state], { upstream: b.upstream });
    },
  );
  return { activeStreams, streamSlotsInUse, dbPoolConnections, upstreamBreakerState };
}

/** Registers the app's metrics on `registry` and returns cheap, typed ways to update them. */
export function createAppMetrics(registry: Registry = createRegistry()): AppMetrics {
  const sources: Sources = { pool: undefined, slots: undefined, breakers: undefined };
  const loop = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
  loop.enable();
  const handles = registerAll(registry, sources, loop);
  const { httpRequests, httpRequestDuration, rateLimitRejections, upstreamRequests } = handles;

  // Exported as 0 from the start, so rate() and ratio alerts have a series before the first event.
  const rejectionChildren = new Map<string, CounterChild>(
    RATE_LIMIT_REASONS.map((r) => [r, rateLimitRejections.labels(r)]),
  );
  const outcomeChildren = new Map<string, CounterChild>(UPSTREAM_OUTCOMES.map((o) => [o, upstreamRequests.labels(o)]));
  const requestChildren = new Map<string, RequestChildren>();

  function childrenFor(method: string, route: string, status: number): RequestChildren {
    const key = `${method}\u0001${route}\u0001${status}`;
    let children = requestChildren.get(key);
    if (children === undefined) {
      children = { count: httpRequests.labels(method, route, status), duration: httpRequestDuration.labels(route) };
      if (requestChildren.size < MAX_CACHED_REQUEST_CHILDREN) requestChildren.set(key, children);
    }
    return children;
  }

  return {
    registry,
    ...handles,
    observeRequest(method, route, status, seconds) {
      const children = childrenFor(method, route, status);
      children.count.inc();
      children.duration.observe(seconds);
    },
    rateLimitRejected: (reason) => (rejectionChildren.get(reason) ?? rateLimitRejections.labels(reason)).inc(),
    authFailed: (reason) => handles.authFailures.inc({ reason }),
    upstreamOutcome: (outcome) => (outcomeChildren.get(outcome) ?? upstreamRequests.labels(outcome)).inc(),
    firstToken: (seconds) => handles.upstreamTimeToFirstToken.observe(seconds),
    streamOpened: () => handles.activeStreams.inc(),
    streamClosed: () => handles.activeStreams.dec(),
    securityEvent: (kind) => handles.securityEvents.inc({ kind }),
    budgetRejected: () => handles.budgetRejections.inc(),
    tokensUsed(agent, promptTokens, completionTokens) {
      handles.tokens.inc({ agent, direction: 'in' }, promptTokens);
      handles.tokens.inc({ agent, direction: 'out' }, completionTokens);
    },
    setPoolSource(source) {
      sources.pool = source;
    },
    setStreamSlotsSource(source) {
      sources.slots = source;
    },
    setBreakerSource(source) {
      sources.breakers = source;
      for (const b of source()) handles.upstreamFallbacks.labels(b.upstream);
    },
    upstreamFallback: (upstream) => handles.upstreamFallbacks.inc({ upstream }),
    render: () => registry.render(),
    close: () => loop.disable(),
  };
}
