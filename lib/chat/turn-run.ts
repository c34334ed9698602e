// One turn from its slot to its stored answer: prepare, call the model, relay or pump its events,
// checkpoint a stored answer as it grows, and release everything once in finish().
import { performance } from 'node:perf_hooks';
import { checkpointAnswer } from '../db/answers.ts';
import { type AssistantMessage, type RegeneratedTurn, regenerateTurn, startTurn } from '../db/conversations.ts';
import { AppError } from '../errors.ts';
import { estimateTokens, type Hold, type Spent } from '../limits/budget.ts';
import { mayUse, NO_SUCH_AGENT } from './agent-access.ts';
import type { Agent } from './agents.ts';
import { storeAnswer } from './answers.ts';
import { cutAt, LiveAnswer } from './live-answer.ts';
import type { Link, Slot, Turn, TurnEngineOptions, TurnEvent, TurnHead, TurnRequest } from './turn.ts';
import {
  clientError,
  type UpstreamMessage,
  type UpstreamRequest,
  type UpstreamStream,
  type UpstreamUsage,
} from './upstream.ts';
import { classifyUpstreamError } from './upstream-errors.ts';

type Register = (run: TurnRun, conversationId: string, messageId: string) => () => void;

/** Checkpoints in flight across the engine: when the database is slow, answers skip theirs instead of piling up. */
export interface CheckpointBudget {
  inFlight: number;
  readonly max: number;
}

const DEFAULT_CHECKPOINT = { intervalMs: 250, chars: 4096 };

/** One turn's state; finish() stores the answer, releases the slot and the signal, once. */
export class TurnRun {
  readonly #options: TurnEngineOptions;
  readonly #request: TurnRequest;
  readonly #slot: Slot;
  readonly #link: Link;
  readonly #register: Register;
  #unregister: (() => void) | undefined;
  #answer: AssistantMessage | undefined;
  #live: LiveAnswer | undefined;
  #opened = false;
  #finished: Promise<void> | undefined;
  // Stateless turns collect their text as parts: concatenation per delta would copy it each time.
  readonly #parts: string[] = [];
  #length = 0;
  #agentId = '';
  #checkpointed = 0;
  #checkpointedAtMs = 0;
  #checkpointing: Promise<void> | undefined;
  #hold: Hold | undefined;
  #reached = false;
  #promptChars = 0;
  #usage: UpstreamUsage | undefined;
  readonly #stored = Promise.withResolvers<void>();

  readonly #checkpoints: CheckpointBudget;

  constructor(
    options: TurnEngineOptions,
    request: TurnRequest,
    slot: Slot,
    link: Link,
    register: Register,
    checkpoints: CheckpointBudget,
  ) {
    this.#checkpoints = checkpoints;
    this.#options = options;
    this.#request = request;
    this.#slot = slot;
    this.#link = link;
    this.#register = register;
  }

  get owner(): string {
    return this.#request.identity.id;
  }

  /** The live answer of a stored turn (undefined before it started, and for stateless turns). */
  get answer(): LiveAnswer | undefined {
    return this.#live;
  }

  abort(reason: unknown): void {
    this.#link.abort(reason);
  }

  /** Stores the question (stored turns) and asks the upstream; the turn then belongs to its events. */
  async begin(): Promise<Turn> {
    // The worst case is held against the budget before anything is stored or sent.
    this.#hold = await this.#reserve();
    const { agent, head, messages } = await this.#prepare();
    this.#agentId = agent.id;
    this.#promptChars = messages.reduce((sum, m) => sum + m.content.length, 0);
    const request = upstreamRequest(agent, messages, this.#request);
    const startedMs = performance.now();
    let stream: UpstreamStream;
    try {
      stream = await this.#options.upstream.stream(request, this.#link.signal);
    } catch (err) {
      throw this.#failed(err);
    }
    this.#reached = true;
    if (this.#answer !== undefined) this.#answer.model = stream.model;
    const events = this.#relay(stream, head, startedMs);
    if (head.conversationId === undefined) {
      const onUnstarted = (): Promise<void> => {
        stream.close();
        return this.finish();
      };
      return { head, events: startedOnce(events, onUnstarted) };
    }
    // A stored answer is read by the engine itself; clients read the live answer.
    const live = new LiveAnswer(head);
    this.#live = live;
    this.#unregister = this.#register(this, head.conversationId, head.messageId);
    this.#checkpointedAtMs = performance.now();
    this.#pump(events, live).catch((err: unknown) => {
      this.#options.log.error('answer pump failed', { err, requestId: this.#request.requestId });
      live.end({ type: 'failed', error: new AppError('INTERNAL') });
    });
    return { head, events: live.read(0) };
  }

  async #pump(events: AsyncGenerator<TurnEvent>, live: LiveAnswer): Promise<void> {
    let ended = false;
    for await (const event of events) {
      if (event.type === 'delta') this.#checkpoint();
      else if (event.type === 'finished' || event.type === 'failed') {
        ended = true;
        // Readers get the end at once; their responses close once it is stored.
        live.end(event, this.#stored.promise);
      }
    }
    if (!ended) live.end({ type: 'failed', error: new AppError('UPSTREAM_ERROR') });
  }

  async #prepare(): Promise<{ agent: Agent; head: TurnHead; messages: UpstreamMessage[] }> {
    const { input, agent: requested, identity } = this.#request;
    const createdSeconds = Math.floor(Date.now() / 1000);
    const system: UpstreamMessage = { role: 'system', content: requested.systemPrompt };
    if (input.kind === 'stateless') {
      const head = { conversationId: undefined, messageId: crypto.randomUUID(), agent: requested.id, createdSeconds };
      return { agent: requested, head, messages: [system, ...input.messages] };
    }
    const { pool, historyMaxChars } = this.#options;
    const turn =
      input.kind === 'regenerate'
        ? await regenerateTurn(pool, { owner: identity.id, conversationId: input.conversationId, historyMaxChars })
        : await startTurn(pool, {
            owner: identity.id,
            agent: requested.id,
            message: input.message,
            historyMaxChars,
            ...(input.conversationId === undefined ? {} : { conversationId: input.conversationId }),
            ...(input.clientId === undefined ? {} : { clientId: input.clientId }),
          });
    if (turn === undefined) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
    const message = input.kind === 'regenerate' ? (turn as RegeneratedTurn).message : input.message;
    // A follow-up that names no agent continues with the conversation's own (while it still exists).
    const named = input.kind === 'stored' && input.agentNamed;
    const agent = named ? requested : (this.#options.agents.get(turn.agent) ?? requested);
    this.#answer = { id: turn.assistantMessageId, conversationId: turn.conversationId, content: '', status: 'error' };
    // A key limited to some agents continues no conversation with another (its list may have changed since).
    if (!mayUse(identity, agent.id)) {
      this.#answer.errorCode = NO_SUCH_AGENT.code;
      throw NO_SUCH_AGENT;
    }
    const head = {
      conversationId: turn.conversationId,
      messageId: turn.assistantMessageId,
      agent: agent.id,
      createdSeconds,
    };
    const prompt: UpstreamMessage = { role: 'system', content: agent.systemPrompt };
    return { agent, head, messages: [prompt, ...turn.history, { role: 'user', content: message }] };
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
    const offset = this.#length;
    this.#length += text.length;
    if (this.#live === undefined) this.#parts.push(text);
    else this.#live.append(text);
    return { type: 'delta', text, offset };
  }

  /** Writes the new text to the row every `intervalMs` or `chars`, one write at a time, never awaited here. */
  #checkpoint(): void {
    const live = this.#live;
    const budget = this.#checkpoints;
    if (live === undefined || this.#checkpointing !== undefined || budget.inFlight >= budget.max) return;
    const { intervalMs, chars } = this.#options.checkpoint ?? DEFAULT_CHECKPOINT;
    const nowMs = performance.now();
    if (nowMs - this.#checkpointedAtMs < intervalMs && live.length - this.#checkpointed < chars) return;
    budget.inFlight++;
    const offset = this.#checkpointed;
    const text = live.textFrom(offset);
    this.#checkpointedAtMs = nowMs;
    this.#checkpointing = checkpointAnswer(this.#options.pool, live.head.messageId, offset, text).then(
      () => {
        budget.inFlight--;
        this.#checkpointed = offset + text.length;
        this.#checkpointing = undefined;
      },
      (err: unknown) => {
        budget.inFlight--;
        // The final save writes the whole text; a missed checkpoint only loses text if this instance dies.
        this.#options.log.debug('answer checkpoint failed', { err, requestId: this.#request.requestId });
        this.#checkpointing = undefined;
      },
    );
  }

  /** Reserves the turn's worst case: its prompt's estimate (a stored turn's history at its cap) and its output cap. */
  async #reserve(): Promise<Hold | undefined> {
    const { budgets, historyMaxChars, maxMessageChars = historyMaxChars } = this.#options;
    if (budgets === undefined) return undefined;
    const { agent, input, sampling, identity } = this.#request;
    const output = Math.min(sampling?.maxOutputTokens ?? agent.maxOutputTokens, agent.maxOutputTokens);
    const asked =
      input.kind === 'stateless'
        ? input.messages.reduce((sum, m) => sum + m.content.length, 0)
        : historyMaxChars + (input.kind === 'stored' ? input.message.length : maxMessageChars);
    return budgets.reserve(identity, estimateTokens(agent.systemPrompt.length + asked) + output);
  }

  /** What the turn used: the upstream's own count, or an estimate from the text when it reported none. */
  #spent(): Spent {
    const usage = this.#usage;
    if (usage !== undefined) {
      return {
        agent: this.#agentId,
        tokensIn: usage.promptTokens,
        tokensOut: usage.completionTokens,
        estimated: false,
      };
    }
    const tokensIn = estimateTokens(this.#promptChars);
    return { agent: this.#agentId, tokensIn, tokensOut: estimateTokens(this.#length), estimated: true };
  }

  #completed(finishReason: string | null, usage: UpstreamUsage | undefined): TurnEvent {
    this.#usage = usage;
    const observer = this.#options.observer;
    observer?.upstreamOutcome('ok');
    if (usage !== undefined) observer?.tokensUsed?.(this.#agentId, usage.promptTokens, usage.completionTokens);
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
      // A client that left is not an error; a drain or a cancel is recorded with its code.
      const recorded = failure.kind !== 'aborted' || this.#options.shutdownSignal.aborted || error.code === 'CANCELLED';
      if (recorded) answer.errorCode = error.code;
    }
    return error;
  }

  /** Counts what a turn that reached the model used; frees the reservation of one that did not. */
  async #settle(): Promise<void> {
    const { budgets } = this.#options;
    const hold = this.#hold;
    if (budgets === undefined || hold === undefined) return;
    if (this.#reached) await budgets.settle(hold, this.#spent());
    else await budgets.release(hold);
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
        answer.content = this.#live?.text() ?? this.#parts.join('');
        // A checkpoint still in flight is harmless: it only appends to a row whose end is not stored.
        await storeAnswer(this.#options.pool, this.#options.log, answer, this.#request.requestId);
      }
      await this.#settle();
    } finally {
      // Unregistered only once stored: a resume that misses the live answer finds its end in the row.
      this.#unregister?.();
      if (this.#opened) this.#options.observer?.streamClosed();
      this.#slot.release();
      this.#link.dispose();
      this.#stored.resolve();
    }
  }
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
