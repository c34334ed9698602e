// The chat turn, free of any wire format: take a stream slot, store the question (stored
// conversations), call the model, yield domain events, store the answer whatever happens, and
// release everything in one finish(). Adapters (native SSE, OpenAI, AI SDK) turn events into bytes.
//
// A stored turn belongs to the server, not to the socket: the engine reads the model's stream
// itself into a LiveAnswer, which any client (the one that asked, or one resuming later, on this
// instance or through the fan-out from another) reads from any offset. A stateless turn (the
// OpenAI dialect) is read by its one client directly: when that client leaves, the answer ends.
import type pg from 'pg';
import { AppError } from '../errors.ts';
import type { Identity } from '../http/types.ts';
import type { Budgets } from '../limits/budget.ts';
import type { Logger } from '../log.ts';
import type { Agent, AgentRegistry } from './agents.ts';
import type { LiveAnswer } from './live-answer.ts';
import { type CheckpointBudget, TurnRun } from './turn-run.ts';
import {
  clientError,
  type Sampling,
  type Upstream,
  type UpstreamError,
  type UpstreamMessage,
  type UpstreamUsage,
} from './upstream.ts';

export { type CollectedAnswer, collect, mapEvents } from './turn-events.ts';

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

/** A per-identity stream cap (`max`: the identity's own, else the default); acquire may ask a shared store. */
export interface StreamSlots {
  acquire(key: string, max?: number): Slot | undefined | Promise<Slot | undefined>;
}

export interface Slot {
  release(): void;
}

/** What the turn answers: a message in a stored conversation, or a client-held history (stateless). */
export type TurnInput =
  | { kind: 'stored'; message: string; conversationId?: string; clientId?: string; agentNamed: boolean }
  /** The conversation's last question again, for a new answer that replaces the last one. */
  | { kind: 'regenerate'; conversationId: string }
  | { kind: 'stateless'; messages: UpstreamMessage[] };

export interface TurnRequest {
  identity: Identity;
  requestId: string;
  /** Ends the answer when it aborts (a client that left, when answers do not outlive it); drains are the engine's. */
  signal?: AbortSignal | undefined;
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
  /** The newest live answer of a conversation on this instance, for its owner. */
  live(owner: string, conversationId: string): LiveAnswer | undefined;
  /** The live answer with this message id on this instance (the fan-out serves it to other instances). */
  liveById(messageId: string): LiveAnswer | undefined;
  /** Stops the conversation's live answers on this instance (stored incomplete); how many there were. */
  cancel(conversationId: string): number;
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
  /** How often a streaming answer's text is written to its row: whichever comes first. */
  checkpoint?: { intervalMs: number; chars: number };
  /** Token accounting and daily budgets; without it turns are neither counted nor limited. */
  budgets?: Budgets;
  /** Longest user message, for a stored turn's worst case before its history is read. */
  maxMessageChars?: number;
}

// Checkpoints share the pool with everything else: a few at a time, so a slow database is not made slower.
const MAX_CHECKPOINTS_IN_FLIGHT = 2;

const NOT_CONFIGURED_DETAIL =
  'The server has no model to call: set OPENAI_API_KEY (OpenAI) or OPENAI_BASE_URL (any OpenAI-compatible server)';

/** Builds the turn engine. */
export function createTurnEngine(options: TurnEngineOptions): TurnEngine {
  const { upstream, slots, observer } = options;
  const tracker = createTracker(options.shutdownSignal);
  // Live stored answers of this instance, by conversation and by message.
  const byConversation = new Map<string, Set<TurnRun>>();
  const byMessage = new Map<string, TurnRun>();
  const checkpoints: CheckpointBudget = { inFlight: 0, max: MAX_CHECKPOINTS_IN_FLIGHT };

  function register(run: TurnRun, conversationId: string, messageId: string): () => void {
    const runs = byConversation.get(conversationId) ?? new Set<TurnRun>();
    byConversation.set(conversationId, runs);
    runs.add(run);
    byMessage.set(messageId, run);
    return () => {
      runs.delete(run);
      if (runs.size === 0) byConversation.delete(conversationId);
      byMessage.delete(messageId);
    };
  }

  async function start(request: TurnRequest): Promise<Turn> {
    if (!upstream.configured) throw new AppError('MODEL_NOT_CONFIGURED', { detail: NOT_CONFIGURED_DETAIL });
    // Every upstream of the agent is known to be down: refused before anything is stored or held.
    const refused = refusalOf(upstream, request);
    if (refused !== undefined) {
      observer?.upstreamOutcome(refused.kind);
      throw clientError(refused);
    }
    const slot = await slots.acquire(request.identity.id, request.identity.policy?.maxStreams);
    if (slot === undefined) {
      observer?.streamRejected?.();
      throw new AppError('TOO_MANY_STREAMS', {
        detail: 'Too many concurrent answers for this identity; wait for one to finish',
      });
    }
    const run = new TurnRun(options, request, slot, tracker.link(request.signal), register, checkpoints);
    try {
      return await run.begin();
    } catch (err) {
      await run.finish();
      throw err;
    }
  }

  function live(owner: string, conversationId: string): LiveAnswer | undefined {
    let newest: TurnRun | undefined;
    for (const run of byConversation.get(conversationId) ?? []) if (run.owner === owner) newest = run;
    return newest?.answer;
  }

  function cancel(conversationId: string): number {
    const runs = [...(byConversation.get(conversationId) ?? [])];
    for (const run of runs) run.abort(new AppError('CANCELLED'));
    return runs.length;
  }

  return {
    start,
    live,
    liveById: (messageId) => byMessage.get(messageId)?.answer,
    cancel,
    active: tracker.active,
    idle: tracker.idle,
  };
}

/** The error of a turn whose agent has every circuit breaker open; undefined when it may call. */
function refusalOf(upstream: Upstream, request: TurnRequest): UpstreamError | undefined {
  const { input } = request;
  // A follow-up naming no agent continues with its conversation's own, known only once the database is asked.
  if (input.kind === 'stored' && !input.agentNamed && input.conversationId !== undefined) return undefined;
  return upstream.refusal?.(request.agent);
}

/** A turn's abort signal, fed by its caller, the drain and an explicit cancel. */
export interface Link {
  readonly signal: AbortSignal;
  abort(reason: unknown): void;
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
      abort: (reason) => controller.abort(reason),
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
