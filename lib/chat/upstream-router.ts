// Failover across upstreams: the agent's model first, then its fallbacks, each behind its own
// circuit breaker. The router is one Upstream to the turn. While another target is next in line,
// stream() resolves only once the current one has produced its first event (a delta or the finish),
// so a failure before the first token (connection, 5xx, 429, first-token timeout) moves on to the
// next, and nothing is ever switched after a delta was handed out; the last target resolves at its
// headers, as a lone client does. Each breaker hears the verdict at the first event. One deadline,
// UPSTREAM_MAX_DURATION_MS, bounds the whole answer, failover included; SDK retries are spent only
// on the last target in line.
import { performance } from 'node:perf_hooks';
import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';
import type { Agent, AgentFallback } from './agents.ts';
import { type Breaker, type BreakerState, createBreaker, type Permit } from './breaker.ts';
import { awaitFirstEvent, watchFirstEvent } from './first-event.ts';
import {
  classifyUpstreamError,
  createUpstream,
  type StreamOptions,
  type Upstream,
  UpstreamError,
  type UpstreamRequest,
  type UpstreamStream,
} from './upstream.ts';

/** One breaker as /health/upstream and the gauge show it: a label (origin and model, never a key) and a state. */
export interface BreakerReport {
  readonly upstream: string;
  readonly state: BreakerState;
}

/** The turn's Upstream, plus the state of every breaker. */
export interface UpstreamRouter extends Upstream {
  breakers(): readonly BreakerReport[];
}

/** Hooks for metrics and ops events; the router works without them. */
export interface RouterHooks {
  /** A turn left `upstream` for the next one: `reason` is the failure's kind, or `breaker_open`. */
  fallback?(upstream: string, reason: string): void;
  breakerChanged?(upstream: string, from: BreakerState, to: BreakerState): void;
}

export interface RouterOptions {
  config: Config;
  log: Logger;
  /** Their models and fallbacks get clients and breakers at start (a missing key fails the start). */
  agents: readonly Agent[];
  hooks?: RouterHooks;
  /** Milliseconds on a monotonic clock, for the breakers and the overall deadline. */
  now?: () => number;
}

interface Target {
  readonly label: string;
  readonly model: string;
  readonly client: Upstream;
  readonly breaker: Breaker;
}

const DEFAULT_BASE_URL = 'https://api.openai.com/v1';
const PRIMARY: AgentFallback = Object.freeze({ model: '' });
// The cause of a fast failure, so the log says why no call was made.
const BREAKER_OPEN = Object.assign(new Error('Circuit breaker open'), { code: 'BREAKER_OPEN' });

/** Builds the router and the clients of every upstream the agents name; `close()` closes them all. */
export function createUpstreamRouter(options: RouterOptions): UpstreamRouter {
  const { config, log, hooks } = options;
  const now = options.now ?? (() => performance.now());
  const { clients, breakers, clientFor, targetFor } = createTargets(config, log, now, hooks);
  const routeLog = log.child({ component: 'upstream-router' });

  function route(req: UpstreamRequest): Target[] {
    const primary = targetFor(PRIMARY, req.model);
    if (req.fallbacks === undefined || req.fallbacks.length === 0) return [primary];
    return [primary, ...req.fallbacks.map((f) => targetFor(f, f.model))];
  }

  for (const agent of options.agents) route({ model: agent.model, messages: [], fallbacks: agent.fallbacks });
  const primaryClient = clientFor(PRIMARY);

  async function stream(req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamStream> {
    const order = route(req);
    const startedMs = now();
    let lastError: UpstreamError | undefined;
    let retryAfterMs = Number.POSITIVE_INFINITY;
    for (let i = 0; i < order.length; i++) {
      const target = order[i] as Target;
      const next = order[i + 1];
      const permit = target.breaker.admit();
      if (permit === undefined) {
        retryAfterMs = Math.min(retryAfterMs, target.breaker.retryAfterMs());
        if (next !== undefined) hooks?.fallback?.(target.label, 'breaker_open');
        continue;
      }
      const totalMs = config.upstream.maxDurationMs - (now() - startedMs);
      if (totalMs <= 0) {
        permit.release();
        break;
      }
      // A lone target keeps the client's own retries and deadline; in a line, retries go to the last.
      const callOptions =
        order.length === 1 ? undefined : { totalMs, ...(next === undefined ? {} : { maxRetries: 0 }) };
      try {
        return await attempt(target, req, signal, callOptions, permit, next !== undefined);
      } catch (err) {
        if (!(err instanceof UpstreamError) || !failsOver(err)) throw err;
        lastError = err;
      }
      if (next !== undefined) {
        hooks?.fallback?.(target.label, lastError.kind);
        const fields = { requestId: req.requestId, from: target.label, to: next.label, kind: lastError.kind };
        routeLog.info('upstream fallback', fields);
      }
    }
    throw lastError ?? breakerOpen(retryAfterMs);
  }

  return {
    configured: primaryClient.configured,
    stream,
    refusal(req) {
      const order = route({ ...req, messages: [] });
      if (order.some((t) => t.breaker.admits())) return undefined;
      return breakerOpen(Math.min(...order.map((t) => t.breaker.retryAfterMs())));
    },
    breakers: () => [...breakers].map(([upstream, b]) => ({ upstream, state: b.state() })),
    stats() {
      const total = { connected: 0, pending: 0, running: 0 };
      for (const client of clients.values()) {
        const s = client.stats();
        total.connected += s.connected;
        total.pending += s.pending;
        total.running += s.running;
      }
      return total;
    },
    async close() {
      await Promise.all([...clients.values()].map((c) => c.close()));
    },
  };
}

/** The clients, breakers and targets of every upstream, each built once and looked up per request. */
function createTargets(config: Config, log: Logger, now: () => number, hooks: RouterHooks | undefined) {
  const clients = new Map<string, Upstream>();
  const targets = new Map<string, Target>();
  // One breaker per label: the same origin and model share it, whichever key or path reaches them.
  const breakers = new Map<string, Breaker>();

  function clientFor(f: AgentFallback): Upstream {
    const key = `${f.baseURL ?? ''}\u0001${f.apiKeyEnv ?? ''}`;
    let client = clients.get(key);
    if (client === undefined) {
      // No baseURL and no key variable of its own: the configured endpoint, OPENAI_API_KEY included.
      client = key === '\u0001' ? createUpstream(config, log) : createUpstream(config, log, endpoint(f, config));
      clients.set(key, client);
    }
    return client;
  }

  function breakerFor(label: string): Breaker {
    let breaker = breakers.get(label);
    if (breaker === undefined) {
      const onChange = (from: BreakerState, to: BreakerState): void => hooks?.breakerChanged?.(label, from, to);
      // A trial nobody reports on (a stream dropped unread) cannot outlive the whole answer's deadline.
      const trialTimeoutMs = config.upstream.maxDurationMs;
      breaker = createBreaker({ ...config.upstream.breaker, trialTimeoutMs, now, onChange });
      breakers.set(label, breaker);
    }
    return breaker;
  }

  // Looked up per request: the label (a URL parse) is built only the first time.
  function targetFor(f: AgentFallback, model: string): Target {
    const key = `${f.baseURL ?? ''}\u0001${f.apiKeyEnv ?? ''}\u0001${model}`;
    let target = targets.get(key);
    if (target === undefined) {
      const label = labelOf(f.baseURL ?? config.upstream.baseUrl, model);
      target = { label, model, client: clientFor(f), breaker: breakerFor(label) };
      targets.set(key, target);
    }
    return target;
  }

  return { clients, breakers, clientFor, targetFor };
}

/** Failures before the first token that another upstream may not share: transport, 5xx, 429, timeouts. */
export function failsOver(err: UpstreamError): boolean {
  switch (err.kind) {
    case 'connection':
    case 'timeout':
    case 'unavailable':
    case 'broken':
      return true;
    case 'status':
      return err.upstreamStatus === undefined || err.upstreamStatus >= 500;
    default:
      return false;
  }
}

/** Tells the breaker how a call failed, and returns the failure classified. */
function judge(err: unknown, permit: Permit): UpstreamError {
  const failure = classifyUpstreamError(err);
  if (failsOver(failure)) permit.failure();
  else if (failure.kind === 'aborted') permit.release();
  else permit.success(); // it answered: a 4xx is ours or the request's to fix, not an outage
  return failure;
}

/**
 * Calls one target. With a fallback next in line it resolves only after the first event; the last
 * target resolves at its headers and tells its breaker later. Rejects with the classified failure.
 */
async function attempt(
  target: Target,
  req: UpstreamRequest,
  signal: AbortSignal,
  options: StreamOptions | undefined,
  permit: Permit,
  fallbackNext: boolean,
): Promise<UpstreamStream> {
  try {
    const call = target.model === req.model ? req : { ...req, model: target.model };
    const started = await target.client.stream(call, signal, options);
    if (!fallbackNext) {
      const watch = {
        started: permit.success,
        failed: (err: unknown) => judge(err, permit),
        abandoned: permit.release,
      };
      return watchFirstEvent(started, watch);
    }
    const replayed = await awaitFirstEvent(started);
    permit.success();
    return replayed;
  } catch (err) {
    throw judge(err, permit);
  }
}

/** Where a fallback's calls go and with which key; another server never gets OPENAI_API_KEY. */
function endpoint(f: AgentFallback, config: Config) {
  const key = f.apiKeyEnv === undefined ? undefined : config.secrets.variable(f.apiKeyEnv);
  if (f.apiKeyEnv !== undefined && key === undefined)
    throw new Error(`Fallback key variable ${f.apiKeyEnv} is not set`);
  return {
    baseURL: f.baseURL ?? config.upstream.baseUrl,
    apiKey: key,
    keySetting: f.apiKeyEnv ?? 'the fallback apiKeyEnv',
    baseUrlSetting: f.baseURL === undefined ? 'OPENAI_BASE_URL' : 'the fallback baseURL',
  };
}

/** An upstream's label: the base URL's origin and the model, never a path, user or key. */
export function labelOf(baseURL: string | undefined, model: string): string {
  return `${new URL(baseURL ?? DEFAULT_BASE_URL).origin} ${model}`;
}

function breakerOpen(retryAfterMs: number): UpstreamError {
  const retryAfterSeconds = Math.max(1, Math.ceil(retryAfterMs / 1000));
  return new UpstreamError('unavailable', 'Upstream circuit breaker is open', {
    retryAfterSeconds,
    cause: BREAKER_OPEN,
  });
}
