// Resuming a live answer: on this instance straight from its LiveAnswer, or from the instance
// running it through the fan-out (listen first, then read the row, then ask for the parts after
// the client's last one), so nothing is missed between what is stored and what comes next.
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { latestAnswer, ownsConversation, type StoredAnswer } from '../db/answers.ts';
import { AppError } from '../errors.ts';
import type { Fanout, Following, RemoteEvent } from './fanout.ts';
import { type FinalEvent, LiveAnswer } from './live-answer.ts';
import type { TurnEngine, TurnEvent, TurnHead } from './turn.ts';

/** Where a client was: the id of the last delta it received, or nothing (from the start). */
export interface ResumePoint {
  messageId?: string | undefined;
  offset?: number | undefined;
}

export type Resumed =
  | { kind: 'not-found' }
  | { kind: 'not-live' }
  | { kind: 'live'; head: TurnHead; events: AsyncIterable<TurnEvent> };

export interface ResumerOptions {
  turns: TurnEngine;
  pool: pg.Pool;
  /** Undefined with one instance (the embedded database): every live answer is local. */
  fanout: Fanout | undefined;
  /** An answer older than this that never stored its end was left by an instance that died. */
  maxAnswerAgeSeconds: number;
  /** How long the running instance may take to answer a follow request. */
  ackTimeoutMs?: number;
}

const DEFAULT_ACK_TIMEOUT_MS = 2_000;

/** Builds `resume(owner, conversationId, point)`. */
export function createResumer(options: ResumerOptions) {
  const { turns, pool, fanout } = options;
  const ackTimeoutMs = options.ackTimeoutMs ?? DEFAULT_ACK_TIMEOUT_MS;

  return async function resume(owner: string, conversationId: string, point: ResumePoint): Promise<Resumed> {
    const local = turns.live(owner, conversationId);
    if (local !== undefined) return { kind: 'live', head: local.head, events: local.read(startOf(local, point)) };
    if (fanout === undefined) return notLive(owner, conversationId);
    const mirror = new Mirror();
    const following = await fanout.follow(conversationId, (event) => mirror.hear(event));
    try {
      const row = await latestAnswer(pool, owner, conversationId);
      if (row === undefined || row.ended || row.ageSeconds > options.maxAnswerAgeSeconds) {
        following.close();
        return notLive(owner, conversationId);
      }
      const head = headOf(row);
      const nonce = randomUUID();
      const sameMessage = point.messageId === undefined || point.messageId === row.messageId;
      await following.request(row.messageId, sameMessage ? point.offset : undefined, nonce);
      const from = await mirror.acknowledged(nonce, ackTimeoutMs);
      if (from === undefined) {
        following.close();
        // Nobody runs it any more: it ended (stored) between our read and the request, or its instance died.
        const again = await latestAnswer(pool, owner, conversationId);
        if (again === undefined || again.ended) return { kind: 'not-live' };
        throw new AppError('RESUME_INTERRUPTED', { headers: { 'Retry-After': '1' } });
      }
      const answer = mirror.start(head, from);
      return { kind: 'live', head, events: closing(answer.read(from), following) };
    } catch (err) {
      following.close();
      throw err;
    }
  };

  async function notLive(owner: string, conversationId: string): Promise<Resumed> {
    return (await ownsConversation(pool, owner, conversationId)) ? { kind: 'not-live' } : { kind: 'not-found' };
  }
}

/** Where a reader of a local answer starts: after the client's last part of this same message. */
function startOf(answer: LiveAnswer, point: ResumePoint): number {
  if (point.offset === undefined) return 0;
  if (point.messageId !== undefined && point.messageId !== answer.head.messageId) return 0;
  return answer.resumeOffset(point.offset);
}

function headOf(row: StoredAnswer): TurnHead {
  return {
    conversationId: row.conversationId,
    messageId: row.messageId,
    agent: row.agent,
    createdSeconds: Math.floor(Date.now() / 1000 - row.ageSeconds),
  };
}

/** A local copy of a remote answer, fed by the fan-out: parts in order, the end once every part is in. */
class Mirror {
  #answer: LiveAnswer | undefined;
  #acks = new Map<string, number>();
  #waiting: { nonce: string; resolve: (from: number | undefined) => void } | undefined;
  #early: RemoteEvent[] = [];
  #end: { event: FinalEvent; length: number } | undefined;

  hear(event: RemoteEvent): void {
    if (event.type === 'ack') {
      this.#acks.set(event.nonce, event.from);
      if (this.#waiting?.nonce === event.nonce) this.#waiting.resolve(event.from);
      return;
    }
    const answer = this.#answer;
    if (answer === undefined) {
      this.#early.push(event);
      return;
    }
    if (event.type === 'lost') {
      answer.end({ type: 'failed', error: new AppError('RESUME_INTERRUPTED') });
      return;
    }
    // Parts published for other followers may start past ours: ours come too, in order.
    if (event.type === 'parts') for (const [start, text] of event.parts) answer.appendPart(start, text);
    else this.#end = event;
    if (this.#end !== undefined && answer.length >= this.#end.length) answer.end(this.#end.event);
  }

  acknowledged(nonce: string, timeoutMs: number): Promise<number | undefined> {
    const known = this.#acks.get(nonce);
    if (known !== undefined) return Promise.resolve(known);
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(undefined), timeoutMs);
      this.#waiting = {
        nonce,
        resolve: (from) => {
          clearTimeout(timer);
          resolve(from);
        },
      };
    });
  }

  start(head: TurnHead, from: number): LiveAnswer {
    this.#answer = new LiveAnswer(head, from);
    for (const event of this.#early.splice(0)) this.hear(event);
    return this.#answer;
  }
}

/** The reader's events; when it ends or its client leaves, the follow ends too. */
function closing(events: AsyncIterable<TurnEvent>, following: Following): AsyncIterable<TurnEvent> {
  const inner = events[Symbol.asyncIterator]();
  const iterator: AsyncIterator<TurnEvent> = {
    async next() {
      const step = await inner.next();
      if (step.done === true) following.close();
      return step;
    },
    async return() {
      following.close();
      return (await inner.return?.()) ?? { done: true, value: undefined };
    },
  };
  return { [Symbol.asyncIterator]: () => iterator };
}
