// The upstream client: the openai SDK over our own undici Agent, with deadlines that cancel.
//
// The SDK's `timeout` covers only the wait for response headers, and an aborted stream ends its
// for-await silently (dependencies.md §4.2, §4.4). So each call owns ONE AbortController fed
// by the caller's signal, a first-token deadline and an inter-chunk idle timer; when the loop
// ends without a finish we look at why and throw a classified UpstreamError instead of
// pretending the answer was complete. Upstream error text goes to the log, never to clients.
import OpenAI from 'openai';
import type { ChatCompletionChunk } from 'openai/resources/chat/completions';
import { Agent as UndiciAgent } from 'undici';
import type { Config } from '../config.ts';
import type { Logger } from '../log.ts';
import { type AbortReason, classifyUpstreamError, describeCause, UpstreamError } from './upstream-errors.ts';
import { createUpstreamFetch } from './upstream-fetch.ts';

export {
  type AbortReason,
  classifyUpstreamError,
  parseRetryAfter,
  UpstreamError,
  type UpstreamErrorKind,
} from './upstream-errors.ts';

/** One chat call as the service asks for it; the agent has already fixed model and prompt. */
export interface UpstreamRequest {
  model: string;
  messages: Array<{ role: 'system' | 'user' | 'assistant'; content: string }>;
  temperature?: number;
  maxOutputTokens?: number;
  /** Our request id, so upstream failures in the log can be matched to the client's request. */
  requestId?: string;
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
}

export interface UpstreamCompletion {
  text: string;
  finishReason: string | null;
  usage?: UpstreamUsage;
  upstreamRequestId?: string;
}

/** The chat upstream: streaming and buffered completions, pool stats and shutdown. */
export interface Upstream {
  stream(req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamStream>;
  complete(req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamCompletion>;
  stats(): { connected: number; pending: number; running: number };
  close(): Promise<void>;
}

const CLOSE_GRACE_MS = 1000;

interface Call {
  readonly signal: AbortSignal;
  reason(): AbortReason | undefined;
  callerReason(): unknown;
  firstToken(): void;
  armIdle(): void;
  disarmIdle(): void;
  abort(reason: AbortReason): void;
  dispose(): void;
}

/** One controller for one call: the caller's signal, the first-token deadline and the idle timer all abort it. */
function startCall(callerSignal: AbortSignal, deadlineMs: number, idleMs: number): Call {
  const controller = new AbortController();
  let reason: AbortReason | undefined;
  let sawToken = false;
  let idle: NodeJS.Timeout | undefined;
  let waiting = false;
  const onIdle = (): void => {
    idle = undefined;
    if (waiting) call.abort('idle');
  };
  const onCallerAbort = (): void => call.abort('client');
  let deadline: NodeJS.Timeout | undefined = setTimeout(() => call.abort('deadline'), deadlineMs);
  const call: Call = {
    signal: controller.signal,
    reason: () => reason,
    callerReason: () => callerSignal.reason,
    firstToken() {
      sawToken = true;
      clearTimeout(deadline);
      deadline = undefined;
    },
    // Idle counts only while we wait on the upstream after its first token: a slow reader is not a stalled upstream.
    // One timer per call, refreshed per chunk: creating and clearing a timer for every chunk
    // showed up in the relay's CPU profile. It fires only if we are still waiting on the upstream.
    armIdle() {
      if (!sawToken || reason !== undefined) return;
      waiting = true;
      if (idle === undefined) idle = setTimeout(onIdle, idleMs);
      else idle.refresh();
    },
    disarmIdle() {
      waiting = false;
    },
    abort(why) {
      reason ??= why;
      call.dispose();
      controller.abort();
    },
    dispose() {
      clearTimeout(deadline);
      clearTimeout(idle);
      callerSignal.removeEventListener('abort', onCallerAbort);
    },
  };
  if (callerSignal.aborted) call.abort('client');
  else callerSignal.addEventListener('abort', onCallerAbort, { once: true });
  return call;
}

/** Builds the upstream client from configuration; `close()` it on shutdown. */
export function createUpstream(config: Config, log: Logger): Upstream {
  const { timeoutMs, idleTimeoutMs } = config.upstream;
  const agent = new UndiciAgent({
    connect: { timeout: Math.min(10_000, timeoutMs) },
    headersTimeout: timeoutMs + 5_000, // >= the SDK timeout, so the SDK's clearer timeout fires first
    bodyTimeout: idleTimeoutMs + 5_000, // a backstop behind our idle timer
    keepAliveTimeout: 10_000,
    keepAliveMaxTimeout: 600_000,
    connections: config.upstream.maxConnections,
    allowH2: false, // undici 8 defaults to h2 via ALPN; pin HTTP/1.1 so pool stats mean sockets
  });
  const client = new OpenAI({
    // Local servers (Ollama, vLLM) need no key, but the SDK refuses to start without one.
    apiKey: config.secrets.openaiApiKey ?? 'unset',
    // Explicit values, so the SDK reads nothing from the environment behind the config's back.
    baseURL: config.upstream.baseUrl ?? 'https://api.openai.com/v1',
    organization: null,
    project: null,
    timeout: timeoutMs,
    maxRetries: config.upstream.maxRetries,
    logLevel: 'off',
    // undici.request on our Agent instead of undici's fetch: far less memory per open stream (upstream-fetch.ts).
    fetch: createUpstreamFetch(agent),
  });
  const upLog = log.child({ component: 'upstream' });

  async function stream(req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamStream> {
    const call = startCall(signal, timeoutMs, idleTimeoutMs);
    try {
      const { data, request_id } = await client.chat.completions
        .create({ ...requestBody(req), stream: true, stream_options: { include_usage: true } }, { signal: call.signal })
        .withResponse();
      // Only the request id travels with the stream: the messages (the whole history) can go.
      const events = iterate(data, call, req.requestId, upLog);
      return { upstreamRequestId: request_id ?? undefined, [Symbol.asyncIterator]: () => events };
    } catch (err) {
      call.dispose();
      throw report(upLog, classifyUpstreamError(err, call.reason(), call.callerReason()), req.requestId);
    }
  }

  async function complete(req: UpstreamRequest, signal: AbortSignal): Promise<UpstreamCompletion> {
    // A buffered answer has no first token to wait for: the deadline bounds the whole call.
    const call = startCall(signal, timeoutMs, idleTimeoutMs);
    try {
      const { data, request_id } = await client.chat.completions
        .create({ ...requestBody(req), stream: false }, { signal: call.signal })
        .withResponse();
      const choice = data.choices[0];
      return {
        text: choice?.message.content ?? '',
        finishReason: choice?.finish_reason ?? null,
        ...(data.usage
          ? { usage: { promptTokens: data.usage.prompt_tokens, completionTokens: data.usage.completion_tokens } }
          : {}),
        ...(request_id ? { upstreamRequestId: request_id } : {}),
      };
    } catch (err) {
      throw report(upLog, classifyUpstreamError(err, call.reason(), call.callerReason()), req.requestId);
    } finally {
      call.dispose();
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

  return { stream, complete, stats: () => poolStats(agent), close };
}

function requestBody(req: UpstreamRequest) {
  return {
    model: req.model,
    messages: req.messages,
    ...(req.temperature === undefined ? {} : { temperature: req.temperature }),
    // max_completion_tokens, not the deprecated max_tokens that reasoning models refuse.
    ...(req.maxOutputTokens === undefined ? {} : { max_completion_tokens: req.maxOutputTokens }),
  };
}

/** Turns SDK chunks into our events; ends with `done` only after a finish, otherwise throws. */
async function* iterate(
  sdk: AsyncIterable<ChatCompletionChunk>,
  call: Call,
  requestId: string | undefined,
  log: Logger,
): AsyncGenerator<UpstreamEvent> {
  const it = sdk[Symbol.asyncIterator]();
  let finishReason: string | null = null;
  let usage: UpstreamUsage | undefined;
  let completed = false;
  try {
    for (;;) {
      call.armIdle();
      let step: IteratorResult<ChatCompletionChunk>;
      try {
        step = await it.next();
      } finally {
        call.disarmIdle(); // not .finally(): that is one more promise and closure held per open stream
      }
      if (step.done === true) break;
      const chunk = step.value;
      if (chunk.usage)
        usage = { promptTokens: chunk.usage.prompt_tokens, completionTokens: chunk.usage.completion_tokens };
      const choice = chunk.choices[0];
      if (choice?.finish_reason) finishReason = choice.finish_reason;
      const text = choice?.delta?.content;
      if (text) {
        call.firstToken();
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
    throw report(log, classifyUpstreamError(err, call.reason(), call.callerReason()), requestId);
  } finally {
    call.dispose();
    if (!completed) {
      call.abort(call.reason() ?? 'client'); // closes the upstream socket if the consumer stopped early
      await it.return?.();
    }
  }
}

const reported = new WeakSet<UpstreamError>();

/** Logs a failure once, with the upstream's own message and request id (logs only, never clients). */
function report(log: Logger, err: UpstreamError, requestId: string | undefined): UpstreamError {
  if (reported.has(err)) return err;
  reported.add(err);
  const fields = {
    requestId,
    kind: err.kind,
    upstreamStatus: err.upstreamStatus,
    upstreamRequestId: err.upstreamRequestId,
    upstreamMessage: describeCause(err.cause),
  };
  if (err.kind === 'aborted') log.debug('upstream call aborted', fields);
  else log.warn('upstream error', fields);
  return err;
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
