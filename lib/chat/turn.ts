// The chat turn, free of any wire format: take a stream slot, store the question (stored
// conversations), call the model, yield domain events, store the answer whatever happens, and
// release everything in one finish(). Adapters (native SSE, OpenAI, AI SDK) turn events into bytes.
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { type AssistantMessage, startTurn } from '../db/conversations.ts';
import { AppError } from '../errors.ts';
import type { Identity } from '../http/types.ts';
import type { Logger } from '../log.ts';
import type { Agent, AgentRegistry } from './agents.ts';
import { storeAnswer } from './answers.ts';
import {
  clientError,
  type Upstream,
  type UpstreamError,
  type UpstreamMessage,
  type UpstreamRequest,
  type UpstreamStream,
  type UpstreamUsage,
} from './upstream.ts';
import { classifyUpstreamError } from './upstream-errors.ts';

/** Optional hooks for metrics; the engine works without them. */
export interface ChatObserver {
  upstreamOutcome(outcome: string): void;
  firstToken(seconds: number): void;
  streamOpened(): void;
  streamClosed(): void;
  /** An identity hit its stream cap (429 TOO_MANY_STREAMS). */
  streamRejected?(): void;
  /** Tokens a finished turn used, as the upstream reported them. */
  tokensUsed?(agent: string, promptTokens: number, completionTokens: number): void;
}

/** A per-identity stream cap; acquire may ask a shared store. */
export interface StreamSlots {
  acquire(key: string): Slot | undefined | Promise<Slot | undefined>;
}

export interface Slot {
  release(): void;
}

/** Sampling a client asked for; the agent clamps or overrides each. */
export interface Sampling {
  temperature?: number;
  topP?: number;
  maxOutputTokens?: number;
  stop?: string[];
  seed?: number;
  presencePenalty?: number;
  frequencyPenalty?: number;
}

/** What the turn answers: a message in a stored conversation, or a client-held history (stateless). */
export type TurnInput =
  | { kind: 'stored'; message: string; conversationId?: string; agentNamed: boolean }
  | { kind: 'stateless'; messages: UpstreamMessage[] };

export interface TurnRequest {
  identity: Identity;
  requestId: string;
  /** Ends the answer when it aborts (a client that left, when answers do not outlive it); drains are the engine's. */
  signal?: AbortSignal;
  agent: Agent;
  input: TurnInput;
  sampling?: Sampling;
}

/** Who and what the answer is: known before the first byte. */
export interface TurnHead {
  /** The stored conversation; undefined for a stateless turn. */
  conversationId: string | undefined;
  messageId: string;
  /** The agent that answers (a follow-up naming none keeps its conversation's). */
  agent: string;
  createdSeconds: number;
}

export type TurnEvent =
  | { type: 'started'; head: TurnHead }
  | { type: 'delta'; text: string; offset: number }
  | { type: 'finished'; finishReason: string | null; usage: UpstreamUsage | undefined }
  | { type: 'failed'; error: AppError };

/** A started turn: the upstream has answered. Iterate `events` once; finish() runs when it ends or is left. */
export interface Turn {
  readonly head: TurnHead;
  readonly events: AsyncIterable<TurnEvent>;
}

export interface TurnEngine {
  /** Starts a turn; rejects with an AppError (nothing started) before any answer byte exists. */
  start(request: TurnRequest): Promise<Turn>;
  /** Turns in progress (their answers not yet stored). */
  active(): number;
  /** Resolves when no turn is in progress. */
  idle(): Promise<void>;
}

export interface TurnEngineOptions {
  pool: pg.Pool;
  upstream: Upstream;
  agents: AgentRegistry;
  slots: StreamSlots;
  log: Logger;
  historyMaxChars: number;
  maxAnswerChars: number;
  /** Aborts live turns when a drain's grace period ends; its reason is the final error code. */
  shutdownSignal: AbortSignal;
  observer?: ChatObserver;
}

const NOT_CONFIGURED_DETAIL =
  'The server has no model to call: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any OpenAI-compatible server)';

/** Builds the turn engine. */
export function createTurnEngine(options: TurnEngineOptions): TurnEngine {
  const { upstream, slots, observer } = options;
  const tracker = createTracker(options.shutdownSignal);

  async function start(request: TurnRequest): Promise<Turn> {
    if (!upstream.configured) throw new AppError('MODEL_NOT_CONFIGURED', { detail: NOT_CONFIGURED_DETAIL });
    // Every upstream of the agent is known to be down: refused before anything is stored or held.
    const refused = refusalOf(upstream, request);
    if (refused !== undefined) {
      observer?.upstreamOutcome(refused.kind);
      throw clientError(refused);
    }
    const slot = await slots.acquire(request.identity.id);
    if (slot === undefined) {
      observer?.streamRejected?.();
      throw new AppError('TOO_MANY_STREAMS', {
        detail: 'Too many concurrent answers for this identity; wait for one to finish',
      });
    }
    const run = new TurnRun(options, request, slot, tracker.link(request.signal));
    try {
      return await run.begin();
    } catch (err) {
      await run.finish();
      throw err;
    }
  }

  return { start, active: tracker.active, idle: tracker.idle };
}

/** One turn's state from its slot to its stored answer; finish() releases everything once. */
class TurnRun {
  readonly #options: TurnEngineOptions;
  readonly #request: TurnRequest;
  readonly #slot: Slot;
  readonly #link: Link;
  #answer: AssistantMessage | undefined;
  #opened = false;
  #finished: Promise<void> | undefined;
  // Collected as parts: string concatenation per delta would copy the whole answer each time.
  readonly #parts: string[] = [];
  #length = 0;
  #agentId = '';

  constructor(options: TurnEngineOptions, request: TurnRequest, slot: Slot, link: Link) {
    this.#options = options;
    this.#request = request;
    this.#slot = slot;
    this.#link = link;
  }

  /** Stores the question (stored turns) and asks the upstream; the turn then belongs to its events. */
  async begin(): Promise<Turn> {
    const { agent, head, messages } = await this.#prepare();
    this.#agentId = agent.id;
    const request = upstreamRequest(agent, messages, this.#request);
    const startedMs = performance.now();
    let stream: UpstreamStream;
    try {
      stream = await this.#options.upstream.stream(request, this.#link.signal);
    } catch (err) {
      throw this.#failed(err);
    }
    if (this.#answer !== undefined) this.#answer.model = stream.model;
    const events = startedOnce(this.#relay(stream, head, startedMs), () => {
      stream.close();
      return this.finish();
    });
    return { head, events };
  }

  async #prepare(): Promise<{ agent: Agent; head: TurnHead; messages: UpstreamMessage[] }> {
    const { input, agent: requested, identity } = this.#request;
    const createdSeconds = Math.floor(Date.now() / 1000);
    const system: UpstreamMessage = { role: 'system', content: requested.systemPrompt };
    if (input.kind === 'stateless') {
      const head = { conversationId: undefined, messageId: crypto.randomUUID(), agent: requested.id, createdSeconds };
      return { agent: requested, head, messages: [system, ...input.messages] };
    }
    const turn = await startTurn(this.#options.pool, {
      owner: identity.id,
      agent: requested.id,
      message: input.message,
      historyMaxChars: this.#options.historyMaxChars,
      ...(input.conversationId === undefined ? {} : { conversationId: input.conversationId }),
    });
    if (turn === undefined) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
    // A follow-up that names no agent continues with the conversation's own (while it still exists).
    const agent = input.agentNamed ? requested : (this.#options.agents.get(turn.agent) ?? requested);
    this.#answer = { id: turn.assistantMessageId, conversationId: turn.conversationId, content: '', status: 'error' };
    const head = {
      conversationId: turn.conversationId,
      messageId: turn.assistantMessageId,
      agent: agent.id,
      createdSeconds,
    };
    const prompt: UpstreamMessage = { role: 'system', content: agent.systemPrompt };
    return { agent, head, messages: [prompt, ...turn.history, { role: 'user', content: input.message }] };
  }

  async *#relay(stream: UpstreamStream, head: TurnHead, startedMs: number): AsyncGenerator<TurnEvent> {
    const observer = this.#options.observer;
    this.#opened = true;
    observer?.streamOpened();
    try {
      yield { type: 'started', head };
      for await (const event of stream) {
        if (event.type === 'done') {
          yield this.#completed(event.finishReason, event.usage);
          continue;
        }
        if (this.#length === 0) observer?.firstToken((performance.now() - startedMs) / 1000);
        const room = this.#options.maxAnswerChars - this.#length;
        const text = event.text.length > room ? cutAt(event.text, room) : event.text;
        if (text !== '') yield this.#delta(text);
        // Past the cap: a complete answer of finish reason length; leaving the loop closes the upstream.
        if (text.length < event.text.length) {
          yield this.#completed('length', undefined);
          return;
        }
      }
    } catch (err) {
      yield { type: 'failed', error: this.#failed(err) };
    } finally {
      await this.finish();
    }
  }

  #delta(text: string): TurnEvent {
    this.#parts.push(text);
    const offset = this.#length;
    this.#length += text.length;
    return { type: 'delta', text, offset };
  }

  #completed(finishReason: string | null, usage: UpstreamUsage | undefined): TurnEvent {
    this.#options.observer?.upstreamOutcome('ok');
    if (usage !== undefined)
      this.#options.observer?.tokensUsed?.(this.#agentId, usage.promptTokens, usage.completionTokens);
    if (this.#answer !== undefined) {
      Object.assign(this.#answer, { status: 'complete', finishReason });
      if (usage !== undefined) Object.assign(this.#answer, usage);
    }
    return { type: 'finished', finishReason, usage };
  }

  /** Records a failure on the answer and returns what the client may see of it. */
  #failed(err: unknown): AppError {
    const failure = classifyUpstreamError(err);
    this.#options.observer?.upstreamOutcome(failure.kind);
    const error = err instanceof AppError ? err : clientError(failure);
    const answer = this.#answer;
    if (answer !== undefined) {
      answer.status = failure.kind === 'aborted' ? 'incomplete' : 'error';
      // A client that left is not an error; a drain is recorded as SHUTTING_DOWN.
      if (failure.kind !== 'aborted' || this.#options.shutdownSignal.aborted) answer.errorCode = error.code;
    }
    return error;
  }

  /** Stores the answer, releases the slot and the signal, ends the turn: once, whoever calls first. */
  finish(): Promise<void> {
    this.#finished ??= this.#release();
    return this.#finished;
  }

  async #release(): Promise<void> {
    const answer = this.#answer;
    try {
      if (answer !== undefined) {
        if (answer.status !== 'complete' && answer.errorCode === undefined) answer.status = 'incomplete';
        answer.content = this.#parts.join('');
        await storeAnswer(this.#options.pool, this.#options.log, answer, this.#request.requestId);
      }
    } finally {
      if (this.#opened) this.#options.observer?.streamClosed();
      this.#slot.release();
      this.#link.dispose();
    }
  }
}

/** The error of a turn whose agent has every circuit breaker open; undefined when it may call. */
function refusalOf(upstream: Upstream, request: TurnRequest): UpstreamError | undefined {
  const { input } = request;
  // A follow-up naming no agent continues with its conversation's own, known only once the database is asked.
  if (input.kind === 'stored' && !input.agentNamed && input.conversationId !== undefined) return undefined;
  return upstream.refusal?.(request.agent);
}

/** The upstream call for a turn: the agent's prompt first, its model, and sampling within its bounds. */
function upstreamRequest(agent: Agent, messages: UpstreamMessage[], request: TurnRequest): UpstreamRequest {
  const asked = request.sampling ?? {};
  const out: UpstreamRequest = { model: agent.model, messages, requestId: request.requestId };
  if (agent.fallbacks.length > 0) out.fallbacks = agent.fallbacks;
  out.maxOutputTokens = Math.min(asked.maxOutputTokens ?? agent.maxOutputTokens, agent.maxOutputTokens);
  const temperature = agent.temperature ?? clamp(asked.temperature, agent.temperatureRange);
  if (temperature !== undefined) out.temperature = temperature;
  const topP = agent.topP ?? clamp(asked.topP, agent.topPRange);
  if (topP !== undefined) out.topP = topP;
  if (asked.stop !== undefined) out.stop = asked.stop;
  if (asked.seed !== undefined) out.seed = asked.seed;
  if (asked.presencePenalty !== undefined) out.presencePenalty = asked.presencePenalty;
  if (asked.frequencyPenalty !== undefined) out.frequencyPenalty = asked.frequencyPenalty;
  return out;
}

function clamp(value: number | undefined, [min, max]: readonly [number, number]): number | undefined {
  return value === undefined ? undefined : Math.min(max, Math.max(min, value));
}

/** The first `length` UTF-16 units of `text`, never ending inside a surrogate pair. */
function cutAt(text: string, length: number): string {
  if (length <= 0) return '';
  const code = text.charCodeAt(length - 1);
  return text.slice(0, code >= 0xd800 && code <= 0xdbff ? length - 1 : length);
}

interface Link {
  readonly signal: AbortSignal;
  dispose(): void;
}

/**
 * Counts turns in progress and links each to the caller's signal and the drain. One listener on the
 * shutdown signal serves every turn: an AbortSignal.any() per turn keeps WeakRefs and registry
 * entries alive for the whole stream.
 */
function createTracker(shutdown: AbortSignal) {
  const controllers = new Set<AbortController>();
  let inProgress = 0;
  const waiters: Array<() => void> = [];
  shutdown.addEventListener('abort', () => {
    for (const controller of controllers) controller.abort(shutdown.reason);
  });
  function link(caller: AbortSignal | undefined): Link {
    const controller = new AbortController();
    const onCallerAbort = (): void => controller.abort(caller?.reason);
    inProgress++;
    if (shutdown.aborted) controller.abort(shutdown.reason);
    else if (caller?.aborted) onCallerAbort();
    else {
      controllers.add(controller);
      caller?.addEventListener('abort', onCallerAbort, { once: true });
    }
    let disposed = false;
    return {
      signal: controller.signal,
      dispose() {
        if (disposed) return;
        disposed = true;
        controllers.delete(controller);
        caller?.removeEventListener('abort', onCallerAbort);
        if (--inProgress === 0) for (const wake of waiters.splice(0)) wake();
      },
    };
  }
  return {
    link,
    active: () => inProgress,
    idle: () => (inProgress === 0 ? Promise.resolve() : new Promise<void>((resolve) => waiters.push(resolve))),
  };
}

/** Wraps a generator so that return() before the first next() still runs `onUnstarted` (its finally would not). */
function startedOnce<T>(gen: AsyncGenerator<T>, onUnstarted: () => Promise<void>): AsyncIterable<T> {
  let started = false;
  const iterator: AsyncIterator<T> = {
    next() {
      started = true;
      return gen.next();
    },
    async return(value?: unknown) {
      if (!started) {
        started = true;
        await onUnstarted();
      }
      return gen.return(value as T);
    },
  };
  return { [Symbol.asyncIterator]: () => iterator };
}

/**
 * Maps each event to none, one or several of another type; return() reaches the source even
 * before the first next(), so an abandoned turn still finishes.
 */
export function mapEvents<T, U>(
  source: AsyncIterable<T>,
  map: (event: T) => U | readonly U[] | undefined,
): AsyncIterable<U> {
  const inner = source[Symbol.asyncIterator]();
  let queued: readonly U[] = [];
  let index = 0;
  const iterator: AsyncIterator<U> = {
    async next() {
      while (index >= queued.length) {
        const step = await inner.next();
        if (step.done === true) return { done: true, value: undefined };
        const mapped = map(step.value);
        if (mapped === undefined) continue;
        if (!Array.isArray(mapped)) return { done: false, value: mapped as U };
        queued = mapped as readonly U[];
        index = 0;
      }
      return { done: false, value: queued[index++] as U };
    },
    async return() {
      await inner.return?.();
      return { done: true, value: undefined };
    },
  };
  return { [Symbol.asyncIterator]: () => iterator };
}

/** A whole answer, for clients that asked for one JSON object instead of a stream. */
export interface CollectedAnswer {
  head: TurnHead;
  text: string;
  finishReason: string | null;
  usage: UpstreamUsage | undefined;
}

/** Reads a turn to its end; a failed turn rejects with its AppError. */
export async function collect(turn: Turn): Promise<CollectedAnswer> {
  const parts: string[] = [];
  for await (const event of turn.events) {
    if (event.type === 'delta') parts.push(event.text);
    else if (event.type === 'failed') throw event.error;
    else if (event.type === 'finished') {
      return { head: turn.head, text: parts.join(''), finishReason: event.finishReason, usage: event.usage };
    }
  }
  throw new AppError('UPSTREAM_ERROR', { detail: 'The answer ended without a finish' });
}
