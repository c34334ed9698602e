// The upstream client: the openai SDK over our own undici Agent, with deadlines that cancel.
//
// The SDK's `timeout` covers only the wait for response headers, and an aborted stream ends its
// for-await silently. So each call owns ONE AbortController fed by the caller's signal, a
// first-token deadline, an idle timer refreshed only by content, and a deadline for the whole
// answer; when the loop ends without a finish we look at why and throw a classified
// UpstreamError instead of pretending the answer was complete. Upstream text never leaves here:
// not to clients, and not to the log either (status, code and request id identify a failure).
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { Agent as UndiciAgent } from 'undici';
import type { Config } from '../config.ts';
import type { AppError } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { AgentFallback } from './agents.ts';
import { type AbortReason, classifyUpstreamError, UpstreamError } from './upstream-errors.ts';
import { createUpstreamFetch } from './upstream-fetch.ts';

export {
  type AbortReason,
  classifyUpstreamError,
  parseRetryAfter,
  UpstreamError,
  type UpstreamErrorKind,
} from './upstream-errors.ts';

/** One message as the model reads it. */
export interface UpstreamMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

/** Sampling parameters: what a client asks for, and what reaches the provider once the agent clamped them. */
export interface Sampling {
  temperature?: number;
  topP?: number;
  maxOutputTokens?: number;
  stop?: string[];
  seed?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
}

/** One chat call as the turn asks for it; the agent has already fixed model, prompt and caps. */
export interface UpstreamRequest extends Sampling {
  model: string;
  messages: UpstreamMessage[];
  /** Our request id, so upstream failures in the log can be matched to the client's request. */
  requestId?: string;
  /** The agent's fallbacks, tried in order when `model` fails before its first token. */
  fallbacks?: readonly AgentFallback[];
}

/** How one call may differ from the client's defaults: a failover router shortens both. */
export interface StreamOptions {
  /** What is left of the whole answer's deadline (UPSTREAM_MAX_DURATION_MS), when less than all of it. */
  totalMs?: number;
  /** SDK retries for this call; 0 when another upstream is next in line. */
  maxRetries?: number;
}

export interface UpstreamUsage {
  promptTokens: number;
  completionTokens: number;
}

/** What a stream yields: text deltas, then exactly one `done` (or a thrown UpstreamError). */
export type UpstreamEvent =
  | { type: 'delta'; text: string }
  | { type: 'done'; finishReason: string | null; usage?: UpstreamUsage };

/** A started stream: the upstream has answered with a 2xx status and headers. Iterate once. */
export interface UpstreamStream extends AsyncIterable<UpstreamEvent> {
  readonly upstreamRequestId: string | undefined;
  /** The model that answers: the agent's own, or the fallback that took over. */
  readonly model: string;
  /** Closes the upstream request of a stream nobody will iterate (a generator never started runs no finally). */
  close(): void;
}

/** The chat upstream: streaming completions, pool stats and shutdown. */
export interface Upstream {
  /** False when neither a provider key nor a base URL is configured: there is no model to call. */
  readonly configured: boolean;
  /** Starts a stream; rejects with an UpstreamError before the first byte reaches anyone. */
  stream(req: UpstreamRequest, signal: AbortSignal, options?: StreamOptions): Promise<UpstreamStream>;
  /** The error stream() would fail with at once, without a call (every circuit breaker open); else undefined. */
  refusal?(route: { model: string; fallbacks?: readonly AgentFallback[] }): UpstreamError | undefined;
  stats(): { connected: number; pending: number; running: number };
  close(): Promise<void>;
}

const CLOSE_GRACE_MS = 1000;
// Longest SSE line accepted from the provider: a chunk is a few hundred bytes, one tool call a few KiB.
const MAX_LINE_BYTES = 1024 * 1024;
// What is read of an error body: enough for the SDK to parse the error object, never logged.
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/** What the client sees of any failure a stream or call raised: a code, never upstream text. */
export function clientError(err: unknown): AppError {
  return classifyUpstreamError(err).toAppError();
}

interface Call {
  readonly signal: AbortSignal;
  reason(): AbortReason | undefined;
  callerReason(): unknown;
  content(): void;
  waiting(on: boolean): void;
  abort(reason: AbortReason): void;
  dispose(): void;
}

interface CallLimits {
  firstTokenMs: number;
  idleMs: number;
  totalMs: number;
}

/**
 * One controller for one call: the caller's signal, the first-token deadline, the idle timer and
 * the total deadline all abort it. The idle timer counts only while we wait on the upstream (a slow
 * reader is not a stalled upstream) and only content or a finish refreshes it, so keep-alive chunks
 * cannot hold a stream open forever.
 */
function startCall(callerSignal: AbortSignal, limits: CallLimits): Call {
  const controller = new AbortController();
  let reason: AbortReason | undefined;
  let sawContent = false;
  let idle: NodeJS.Timeout | undefined;
  let isWaiting = false;
  const onIdle = (): void => {
    idle = undefined;
    if (isWaiting) call.abort('idle');
  };
  const onCallerAbort = (): void => call.abort('client');
  let firstToken: NodeJS.Timeout | undefined = setTimeout(() => call.abort('deadline'), limits.firstTokenMs);
  const total = setTimeout(() => call.abort('duration'), limits.totalMs);
  const call: Call = {
    signal: controller.signal,
    reason: () => reason,
    callerReason: () => callerSignal.reason,
    content() {
      if (!sawContent) {
        sawContent = true;
        clearTimeout(firstToken);
        firstToken = undefined;
      }
      idle?.refresh();
    },
    waiting(on) {
      isWaiting = on;
      // A fresh period after the first content, and after a pause in which the consumer did not read.
      if (on && sawContent && idle === undefined && reason === undefined) idle = setTimeout(onIdle, limits.idleMs);
    },
    abort(why) {
      reason ??= why;
      call.dispose();
      controller.abort();
    },
    dispose() {
      clearTimeout(firstToken);
      clearTimeout(idle);
      clearTimeout(total);
      callerSignal.removeEventListener('abort', onCallerAbort);
    },
  };
  if (callerSignal.aborted) call.abort('client');
  else callerSignal.addEventListener('abort', onCallerAbort, { once: true });
  return call;
}

/** Where a client sends its calls, and with which key; by default OPENAI_BASE_URL and OPENAI_API_KEY. */
export interface UpstreamEndpoint {
  baseURL: string | undefined;
  apiKey: string | undefined;
  /** Where the key and the base URL were set, named in configuration hints (never their values). */
  keySetting: string;
  baseUrlSetting: string;
}

/** Builds an upstream client for one endpoint (the configured one by default); `close()` it on shutdown. */
export function createUpstream(config: Config, log: Logger, endpoint?: UpstreamEndpoint): Upstream {
  const target = endpoint ?? {
    baseURL: config.upstream.baseUrl,
    apiKey: config.secrets.openaiApiKey,
    keySetting: 'OPENAI_API_KEY',
    baseUrlSetting: 'OPENAI_BASE_URL',
  };
  const { timeoutMs, idleTimeoutMs, maxDurationMs, maxResponseBytes } = config.upstream;
  const agent = new UndiciAgent({
    connect: { timeout: Math.min(10_000, timeoutMs) },
    headersTimeout: timeoutMs + 5_000, // >= the SDK timeout, so the SDK's clearer timeout fires first
    bodyTimeout: idleTimeoutMs + 5_000, // a backstop behind our idle timer
    keepAliveTimeout: 10_000,
    keepAliveMaxTimeout: 600_000,
    connections: config.upstream.maxConnections,
    maxResponseSize: maxResponseBytes, // a body past this fails with UND_ERR_RES_EXCEEDED_MAX_SIZE
    allowH2: false, // undici 8 defaults to h2 via ALPN; pin HTTP/1.1 so pool stats mean sockets
  });
  const baseURL = target.baseURL ?? 'https://api.openai.com/v1';
  const client = new OpenAI({
    // Local servers (Ollama, vLLM) need no key, but the SDK refuses to start without one.
    apiKey: target.apiKey ?? 'unset',
    // Explicit values, so the SDK reads nothing from the environment behind the config's back.
    baseURL,
    organization: null,
    project: null,
    timeout: timeoutMs,
    maxRetries: config.upstream.maxRetries,
    logLevel: 'off',
    // undici.request on our Agent instead of undici's fetch: far less memory per open stream (upstream-fetch.ts).
    fetch: createUpstreamFetch(agent, { maxLineBytes: MAX_LINE_BYTES, maxErrorBodyBytes: MAX_ERROR_BODY_BYTES }),
  });
  const reporter = createReporter(log.child({ component: 'upstream' }), endpointOf(baseURL), target);
  const limits: CallLimits = { firstTokenMs: timeoutMs, idleMs: idleTimeoutMs, totalMs: maxDurationMs };

  async function stream(req: UpstreamRequest, signal: AbortSignal, options?: StreamOptions): Promise<UpstreamStream> {
    const totalMs = options?.totalMs;
    const call = startCall(
      signal,
      totalMs === undefined ? limits : { ...limits, totalMs: Math.min(totalMs, limits.totalMs) },
    );
    const maxRetries = options?.maxRetries;
    try {
      const body = { ...requestBody(req), stream: true as const, stream_options: { include_usage: true } };
      const requestOptions = maxRetries === undefined ? { signal: call.signal } : { signal: call.signal, maxRetries };
      const { data, request_id } = await client.chat.completions.create(body, requestOptions).withResponse();
      // Only the request id travels with the stream: the messages (the whole history) can go.
      const events = iterate(data, call, req.requestId, reporter);
      return {
        upstreamRequestId: request_id ?? undefined,
        model: req.model,
        [Symbol.asyncIterator]: () => events,
        close: () => call.abort(call.reason() ?? 'client'),
      };
    } catch (err) {
      call.dispose();
      throw reporter(classifyUpstreamError(err, call.reason(), call.callerReason()), req.requestId);
    }
  }

  async function close(): Promise<void> {
    const grace = setTimeout(() => void agent.destroy().catch(() => {}), CLOSE_GRACE_MS);
    try {
      await agent.close();
    } finally {
      clearTimeout(grace);
    }
  }

  const configured = target.apiKey !== undefined || target.baseURL !== undefined;
  return { configured, stream, stats: () => poolStats(agent), close };
}

function requestBody(req: UpstreamRequest) {
  return {
    model: req.model,
    messages: req.messages,
    ...(req.temperature === undefined ? {} : { temperature: req.temperature }),
    ...(req.topP === undefined ? {} : { top_p: req.topP }),
    // max_completion_tokens, not the deprecated max_tokens that reasoning models refuse.
    ...(req.maxOutputTokens === undefined ? {} : { max_completion_tokens: req.maxOutputTokens }),
    ...(req.stop === undefined ? {} : { stop: req.stop }),
    ...(req.seed === undefined ? {} : { seed: req.seed }),
    ...(req.presencePenalty === undefined ? {} : { presence_penalty: req.presencePenalty }),
    ...(req.frequencyPenalty === undefined ? {} : { frequency_penalty: req.frequencyPenalty }),
  };
}

/** Turns SDK chunks into our events; ends with `done` only after a finish, otherwise throws. */
async function* iterate(
  sdk: AsyncIterable<ChatCompletionChunk>,
  call: Call,
  requestId: string | undefined,
  report: Reporter,
): AsyncGenerator<UpstreamEvent> {
  const it = sdk[Symbol.asyncIterator]();
  let finishReason: string | null = null;
  let usage: UpstreamUsage | undefined;
  let completed = false;
  try {
    for (;;) {
      call.waiting(true);
      let step: IteratorResult<ChatCompletionChunk>;
      try {
        step = await it.next();
      } finally {
        call.waiting(false); // not .finally(): that is one more promise and closure held per open stream
      }
      if (step.done === true) break;
      const chunk = step.value;
      if (chunk.usage)
        usage = { promptTokens: chunk.usage.prompt_tokens, completionTokens: chunk.usage.completion_tokens };
      const choice = chunk.choices[0];
      if (choice?.finish_reason) {
        finishReason = choice.finish_reason;
        call.content();
      }
      const text = choice?.delta?.content;
      if (text) {
        call.content();
        yield { type: 'delta', text };
      }
    }
    // The SDK ends the loop quietly when aborted; an answer without a finish is not complete.
    const why = call.reason();
    if (why !== undefined) throw classifyUpstreamError(undefined, why, call.callerReason());
    if (finishReason === null) throw new UpstreamError('broken', 'Upstream stream ended without a finish reason');
    completed = true;
    yield usage === undefined ? { type: 'done', finishReason } : { type: 'done', finishReason, usage };
  } catch (err) {
    throw report(classifyUpstreamError(err, call.reason(), call.callerReason()), requestId);
  } finally {
    call.dispose();
    if (!completed) {
      call.abort(call.reason() ?? 'client'); // closes the upstream socket if the consumer stopped early
      await it.return?.();
    }
  }
}

type Reporter = (err: UpstreamError, requestId: string | undefined) => UpstreamError;

// Statuses whose usual cause is our own configuration, with the variable to check.
function configurationHints(names: UpstreamEndpoint): Record<number, string> {
  return {
    401: `the provider refused the key: check ${names.keySetting}`,
    403: `the provider refused the key for this model: check ${names.keySetting} and the agent model`,
    404:
      `the provider has no such route or model: check ${names.baseUrlSetting} ` +
      '(it usually ends in /v1) and the agent model',
  };
}

/** Logs each failure once: kind, status, the provider's error code and request id, never its text. */
function createReporter(log: Logger, endpoint: string, names: UpstreamEndpoint): Reporter {
  const reported = new WeakSet<UpstreamError>();
  const hints = configurationHints(names);
  return function report(err, requestId) {
    if (reported.has(err)) return err;
    reported.add(err);
    const fields = {
      requestId,
      kind: err.kind,
      reason: err.message,
      upstreamStatus: err.upstreamStatus,
      upstreamCode: err.upstreamCode,
      upstreamRequestId: err.upstreamRequestId,
      cause: err.causeCode,
    };
    if (err.kind === 'aborted') {
      log.debug('upstream call aborted', fields);
      return err;
    }
    const hint = err.upstreamStatus === undefined ? undefined : hints[err.upstreamStatus];
    if (hint !== undefined) log.warn(`upstream error: ${hint}`, { ...fields, url: endpoint });
    else log.warn('upstream error', fields);
    return err;
  };
}

/** The chat endpoint called, as origin and path: never credentials or a query. */
function endpointOf(baseURL: string): string {
  const url = new URL(baseURL);
  return `${url.origin}${url.pathname.replace(/\/$/, '')}/chat/completions`;
}

/** Sums the per-origin pool stats; a Client reports `connected` as a boolean, a Pool as a count. */
function poolStats(agent: UndiciAgent): { connected: number; pending: number; running: number } {
  const total = { connected: 0, pending: 0, running: 0 };
  for (const s of Object.values(agent.stats)) {
    total.connected += Number(s.connected);
    total.pending += s.pending;
    total.running += s.running;
  }
  return total;
}
