// The chat turn: store the question, call the model, stream the answer, store the answer whatever happens.
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import * as z from 'zod';
import { type AssistantMessage, saveAssistantMessage, startTurn } from '../db/conversations.ts';
import { AppError } from '../errors.ts';
import type { Context, Reply, SseEvent } from '../http/types.ts';
import type { Logger } from '../log.ts';
import type { AgentRegistry } from './agents.ts';
import type { Upstream, UpstreamCompletion, UpstreamRequest, UpstreamStream, UpstreamUsage } from './upstream.ts';
import { classifyUpstreamError, type UpstreamError } from './upstream-errors.ts';

/** Optional hooks for metrics; the service works without them. */
export interface ChatObserver {
  upstreamOutcome(outcome: string): void;
  firstToken(seconds: number): void;
  streamOpened(): void;
  streamClosed(): void;
  /** An identity hit its stream cap (429 TOO_MANY_STREAMS). */
  streamRejected?(): void;
}

/** A per-identity stream cap (lib/limits/concurrency.ts). */
export interface StreamSlots {
  acquire(key: string): { release(): void } | undefined;
}

export interface ChatServiceOptions {
  pool: pg.Pool;
  upstream: Upstream;
  agents: AgentRegistry;
  slots: StreamSlots;
  log: Logger;
  maxMessageChars: number;
  historyMaxChars: number;
  /** Aborts live streams when a drain's grace period ends; its reason is sent as the final error code. */
  shutdownSignal: AbortSignal;
  observer?: ChatObserver;
}

export interface ChatService {
  handle(ctx: Context, body: unknown): Promise<Reply>;
  /** Turns in progress (their answers not yet stored). */
  active(): number;
  /** Resolves when no turn is in progress. */
  idle(): Promise<void>;
}

// Backoff 250 ms, 0.5 s, 1 s, 2 s, 4 s: rides out a database blip of several seconds. The row
// already exists as `incomplete`, so even a failure past this leaves the question paired.
const SAVE_ATTEMPTS = 6;
const FOREIGN_KEY_VIOLATION = '23503';

/** Validates the body strictly: clients choose an agent and nothing else about the model. */
export function chatRequestSchema(maxMessageChars: number) {
  return z.strictObject({
    // PostgreSQL text cannot hold NUL (22021): refuse it here instead of failing the insert with a 500.
    message: z
      .string()
      .min(1)
      .max(maxMessageChars)
      .refine((m) => !m.includes('\u0000'), 'Must not contain NUL characters'),
    conversationId: z.uuid().optional(),
    agent: z.string().min(1).max(64).optional(),
    stream: z.boolean().default(true),
  });
}

/** Maps zod issues to path/code/message only (never the input, never regex internals). */
export function validationError(error: z.ZodError): AppError {
  const issues = error.issues.slice(0, 20).map((i) => ({ path: i.path.join('.'), code: i.code, message: i.message }));
  return new AppError('VALIDATION_FAILED', { detail: 'The request body is invalid', extra: { issues } });
}

/** Builds the chat service. */
export function createChatService(options: ChatServiceOptions): ChatService {
  const schema = chatRequestSchema(options.maxMessageChars);
  const { pool, upstream, agents, slots, log, observer } = options;
  let inProgress = 0;
  let waiters: Array<() => void> = [];

  function finishTurn(): void {
    inProgress--;
    if (inProgress === 0) {
      for (const w of waiters) w();
      waiters = [];
    }
  }

  async function save(message: AssistantMessage, ctx: Context): Promise<void> {
    // Nothing accepted is lost: a transient database failure gets a few more tries.
    for (let attempt = 1; attempt <= SAVE_ATTEMPTS; attempt++) {
      try {
        await saveAssistantMessage(pool, message);
        return;
      } catch (err) {
        if ((err as { code?: unknown }).code === FOREIGN_KEY_VIOLATION) {
          // The owner deleted the conversation mid-answer: there is nothing left to store it in.
          log.info('conversation deleted before its answer was stored', {
            requestId: ctx.requestId,
            conversationId: message.conversationId,
          });
          return;
        }
        if (attempt === SAVE_ATTEMPTS) {
          log.error('could not store the assistant message', {
            err,
            requestId: ctx.requestId,
            messageId: message.id,
            conversationId: message.conversationId,
          });
          return;
        }
        await new Promise((r) => setTimeout(r, 250 * 2 ** (attempt - 1)));
      }
    }
  }

  // Each turn has its own controller, aborted when its client goes away or the server drains. One
  // listener on the shutdown signal serves all of them: an AbortSignal.any() per turn kept WeakRefs,
  // WeakCells and FinalizationRegistry entries alive for the whole stream (about 1 KiB each).
  const turnControllers = new Set<AbortController>();
  options.shutdownSignal.addEventListener(
    'abort',
    () => {
      for (const controller of turnControllers) controller.abort(options.shutdownSignal.reason);
    },
    { once: true },
  );

  /** A signal for one turn: the client leaving or a drain aborts it. `dispose()` when the turn ends. */
  function turnSignal(ctx: Context): TurnSignal {
    const controller = new AbortController();
    const onClientGone = (): void => controller.abort(ctx.signal.reason);
    if (options.shutdownSignal.aborted) controller.abort(options.shutdownSignal.reason);
    else if (ctx.signal.aborted) onClientGone();
    else {
      turnControllers.add(controller);
      ctx.signal.addEventListener('abort', onClientGone, { once: true });
    }
    return {
      signal: controller.signal,
      dispose() {
        turnControllers.delete(controller);
        ctx.signal.removeEventListener('abort', onClientGone);
      },
    };
  }

  async function handle(ctx: Context, body: unknown): Promise<Reply> {
    const parsed = schema.safeParse(body);
    if (!parsed.success) throw validationError(parsed.error);
    const input = parsed.data;
    const requested = agents.get(input.agent ?? agents.defaultId);
    if (requested === undefined)
      throw new AppError('VALIDATION_FAILED', {
        detail: 'Unknown agent',
        extra: { issues: [{ path: 'agent', code: 'unknown_agent', message: 'No such agent' }] },
      });
    const identity = ctx.identity;
    if (identity === undefined) throw new AppError('UNAUTHORIZED', { headers: { 'WWW-Authenticate': 'Bearer' } });
    const slot = slots.acquire(identity.id);
    if (slot === undefined) observer?.streamRejected?.();
    if (slot === undefined)
      throw new AppError('TOO_MANY_STREAMS', {
        detail: 'Too many concurrent answers for this identity; wait for one to finish',
      });
    inProgress++;
    let handedOver = false;
    const link = turnSignal(ctx);
    try {
      const turn = await startTurn(pool, {
        owner: identity.id,
        agent: requested.id,
        message: input.message,
        historyMaxChars: options.historyMaxChars,
        ...(input.conversationId === undefined ? {} : { conversationId: input.conversationId }),
      });
      if (turn === undefined) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
      // A follow-up that names no agent continues with the conversation's own (while it still exists).
      const agent = input.agent === undefined ? (agents.get(turn.agent) ?? requested) : requested;
      const request: UpstreamRequest = {
        model: agent.model,
        messages: [
          { role: 'system', content: agent.systemPrompt },
          ...turn.history,
          { role: 'user', content: input.message },
        ],
        requestId: ctx.requestId,
        ...(agent.temperature === undefined ? {} : { temperature: agent.temperature }),
        ...(agent.maxOutputTokens === undefined ? {} : { maxOutputTokens: agent.maxOutputTokens }),
      };
      const { signal } = link;
      // A non-streamed answer may take longer than the request deadline; the upstream timeouts bound it.
      ctx.clearDeadline();
      const answer: AssistantMessage = {
        id: turn.assistantMessageId,
        conversationId: turn.conversationId,
        content: '',
        status: 'error',
      };
      const head = { conversationId: turn.conversationId, messageId: answer.id, agent: agent.id };
      if (!input.stream) return await completeTurn(ctx, request, signal, answer, head);
      const started = performance.now();
      let stream: UpstreamStream;
      try {
        stream = await upstream.stream(request, signal);
      } catch (err) {
        const failure = classifyUpstreamError(err);
        await recordFailure(ctx, answer, failure);
        throw failure.toAppError();
      }
      handedOver = true;
      const events = relay(ctx, stream, answer, head, started, slot, link);
      // A generator closed before its first next() skips its own finally: do that cleanup here.
      const closeUnstarted = async (): Promise<void> => {
        try {
          await stream[Symbol.asyncIterator]().return?.();
        } finally {
          answer.status = 'incomplete';
          try {
            await save(answer, ctx);
          } finally {
            slot.release();
            link.dispose();
            finishTurn();
          }
        }
      };
      return { kind: 'sse', events: startedOnce(events, closeUnstarted) };
    } finally {
      if (!handedOver) {
        link.dispose();
        slot.release();
        finishTurn();
      }
    }
  }

  async function recordFailure(ctx: Context, answer: AssistantMessage, failure: UpstreamError): Promise<void> {
    observer?.upstreamOutcome(failure.kind);
    answer.status = failure.kind === 'aborted' ? 'incomplete' : 'error';
    if (failure.kind !== 'aborted' || options.shutdownSignal.aborted) answer.errorCode = failure.toAppError().code;
    await save(answer, ctx);
  }

  async function completeTurn(
    ctx: Context,
    request: UpstreamRequest,
    signal: AbortSignal,
    answer: AssistantMessage,
    head: object,
  ): Promise<Reply> {
    let result: UpstreamCompletion;
    try {
      result = await upstream.complete(request, signal);
    } catch (err) {
      const failure = classifyUpstreamError(err);
      await recordFailure(ctx, answer, failure);
      throw failure.toAppError();
    }
    observer?.upstreamOutcome('ok');
    Object.assign(answer, {
      content: result.text,
      status: 'complete',
      finishReason: result.finishReason,
      ...usageFields(result.usage),
    });
    await save(answer, ctx);
    return {
      kind: 'json',
      status: 200,
      body: { ...head, text: result.text, finishReason: result.finishReason, usage: result.usage ?? null },
    };
  }

  async function* relay(
    ctx: Context,
    stream: AsyncIterable<
      { type: 'delta'; text: string } | { type: 'done'; finishReason: string | null; usage?: UpstreamUsage }
    >,
    answer: AssistantMessage,
    head: object,
    started: number,
    slot: { release(): void },
    link: TurnSignal,
  ): AsyncGenerator<SseEvent> {
    observer?.streamOpened();
    let first = true;
    // Collected as parts: string concatenation per delta would copy the whole answer each time.
    const parts: string[] = [];
    try {
      yield { event: 'start', data: head };
      for await (const event of stream) {
        if (event.type === 'delta') {
          if (first) {
            first = false;
            observer?.firstToken((performance.now() - started) / 1000);
          }
          parts.push(event.text);
          yield { event: 'delta', data: { text: event.text } };
        } else {
          Object.assign(answer, { status: 'complete', finishReason: event.finishReason, ...usageFields(event.usage) });
          observer?.upstreamOutcome('ok');
          yield { event: 'done', data: { finishReason: event.finishReason, usage: event.usage ?? null } };
        }
      }
    } catch (err) {
      const failure = classifyUpstreamError(err);
      observer?.upstreamOutcome(failure.kind);
      const appErr = failure.toAppError();
      answer.status = failure.kind === 'aborted' ? 'incomplete' : 'error';
      // A client that left is not an error; a drain is recorded as SHUTTING_DOWN.
      if (failure.kind !== 'aborted' || options.shutdownSignal.aborted) answer.errorCode = appErr.code;
      // A client that left reads nothing; a drain or a failure gets one final frame with the code only.
      if (!ctx.signal.aborted) yield { event: 'error', data: { code: appErr.code, requestId: ctx.requestId } };
    } finally {
      // Reached on every path, including the consumer calling return() when the client went away.
      if (answer.status !== 'complete' && answer.errorCode === undefined) answer.status = 'incomplete';
      answer.content = parts.join('');
      observer?.streamClosed();
      try {
        await save(answer, ctx);
      } finally {
        slot.release();
        link.dispose();
        finishTurn();
      }
    }
  }

  return {
    handle,
    active: () => inProgress,
    idle: () => (inProgress === 0 ? Promise.resolve() : new Promise<void>((resolve) => waiters.push(resolve))),
  };
}

interface TurnSignal {
  readonly signal: AbortSignal;
  dispose(): void;
}

/** Wraps a generator so that return() before the first next() runs `onUnstarted` once. */
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

function usageFields(usage: UpstreamUsage | undefined): Partial<AssistantMessage> {
  return usage === undefined ? {} : { promptTokens: usage.promptTokens, completionTokens: usage.completionTokens };
}
