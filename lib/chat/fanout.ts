// Live answers across instances, over PostgreSQL's LISTEN/NOTIFY. A client resuming on another
// instance than the one running its answer listens on the conversation's channel and asks, on the
// control channel, for the parts after the one it last had; the running instance publishes them
// and the rest as they come. A cancel reaches whichever instance runs the answer the same way.
//
// Every instance keeps one listening session (never through a transaction pooler: LISTEN needs a
// session of its own) and re-opens it with backoff when the database drops it; followers in flight
// then get `lost` and their clients an error frame to retry on, never a silent gap.
import { setTimeout as sleep } from 'node:timers/promises';
import type pg from 'pg';
import { AppError, ERROR_CODES, type ErrorCode } from '../errors.ts';
import type { Logger } from '../log.ts';
import type { FinalEvent, LiveAnswer } from './live-answer.ts';

/** What a follower hears about the answer it follows. */
export type RemoteEvent =
  /** The answer to one request (its nonce): the parts that follow start at `from`. */
  | { type: 'ack'; nonce: string; from: number }
  | { type: 'parts'; parts: Array<[number, string]> }
  /** The end, and the answer's length then: a follower that has less is still missing parts. */
  | { type: 'end'; event: FinalEvent; length: number }
  | { type: 'lost' };

/** The running side: the engine's own live answers and cancel. */
export interface FanoutEngine {
  liveById(messageId: string): LiveAnswer | undefined;
  cancel(conversationId: string): number;
}

export interface Following {
  /** Asks the instance running `messageId` for its parts after the one at `offset` (undefined: all). */
  request(messageId: string, offset: number | undefined, nonce: string): Promise<void>;
  close(): void;
}

export interface Fanout {
  /** Listens on the conversation's channel: call it before reading what is stored, so nothing is missed. */
  follow(conversationId: string, onEvent: (event: RemoteEvent) => void): Promise<Following>;
  /** Asks every instance to stop the conversation's live answers. */
  cancel(conversationId: string): Promise<void>;
  /** Starts serving follow and cancel requests for the engine's answers. */
  serve(engine: FanoutEngine): void;
  close(): Promise<void>;
}

export interface PgFanoutOptions {
  /** A new, unconnected client for the listening session. */
  connect: () => pg.Client;
  /** Where notifications are sent from (any connection, a pooler's too). */
  pool: pg.Pool;
  log: Logger;
}

const CONTROL = 'chat_control';
// Under PostgreSQL's 8000-byte notification payload limit, with room for the envelope.
const MAX_PAYLOAD_BYTES = 7800;
const READY_TIMEOUT_MS = 2_000;
const BACKOFF_MS = { first: 100, max: 5_000 };
// After a new part, the publisher waits this long so the parts that follow share its notification.
const COALESCE_MS = 20;

/** The channel of a conversation's answers (a uuid's hex digits: a plain identifier). */
export function channelOf(conversationId: string): string {
  return `answer_${conversationId.replaceAll('-', '').toLowerCase()}`;
}

/** The fan-out over one listening session per instance. */
export function createPgFanout(options: PgFanoutOptions): Fanout {
  const { pool, log } = options;
  const handlers = new Map<string, Set<(event: RemoteEvent) => void>>();
  let engine: FanoutEngine | undefined;
  const notify = async (channel: string, payload: string): Promise<void> => {
    await pool.query('SELECT pg_notify($1, $2)', [channel, payload]);
  };
  const publishAnswer = createPublishers(notify, log);
  const session = openListeningSession(options.connect, log, {
    notification(channel, payload) {
      if (channel === CONTROL) {
        control(payload);
        return;
      }
      const event = decode(payload);
      if (event === undefined) return;
      for (const handler of handlers.get(channel) ?? []) handler(event);
    },
    lost() {
      for (const set of handlers.values()) for (const handler of set) handler({ type: 'lost' });
      handlers.clear();
    },
  });

  function control(payload: string): void {
    const message = parse(payload) as { op?: unknown; c?: unknown; m?: unknown; o?: unknown; n?: unknown } | undefined;
    if (engine === undefined || typeof message?.c !== 'string') return;
    if (message.op === 'x') {
      engine.cancel(message.c);
      return;
    }
    const live = typeof message.m === 'string' ? engine.liveById(message.m) : undefined;
    if (message.op !== 'f' || live === undefined || live.head.conversationId !== message.c) return;
    const after = typeof message.o === 'number' ? message.o : undefined;
    const nonce = typeof message.n === 'string' ? message.n.slice(0, 64) : '';
    publishAnswer(live, message.c, after, nonce);
  }

  async function follow(conversationId: string, onEvent: (event: RemoteEvent) => void): Promise<Following> {
    const channel = channelOf(conversationId);
    const client = await session.listening();
    const set = handlers.get(channel) ?? new Set();
    handlers.set(channel, set);
    set.add(onEvent);
    if (set.size === 1) await client.query(`LISTEN ${channel}`);
    return {
      request: (messageId, offset, nonce) =>
        notify(CONTROL, JSON.stringify({ op: 'f', c: conversationId, m: messageId, o: offset ?? null, n: nonce })),
      close() {
        set.delete(onEvent);
        if (set.size > 0 || handlers.get(channel) !== set) return;
        handlers.delete(channel);
        session
          .client()
          ?.query(`UNLISTEN ${channel}`)
          .catch(() => {});
      },
    };
  }

  return {
    follow,
    cancel: (conversationId) => notify(CONTROL, JSON.stringify({ op: 'x', c: conversationId })),
    serve(e) {
      engine = e;
    },
    close: () => session.close(),
  };
}

/** An instance's listening session on the control channel, re-opened with backoff when it is lost. */
interface ListeningSession {
  /** The open session, waiting up to READY_TIMEOUT_MS for one; rejects with RESUME_INTERRUPTED. */
  listening(): Promise<pg.Client>;
  /** The open session, if there is one now. */
  client(): pg.Client | undefined;
  close(): Promise<void>;
}

function openListeningSession(
  connect: () => pg.Client,
  log: Logger,
  on: { notification(channel: string, payload: string): void; lost(): void },
): ListeningSession {
  let client: pg.Client | undefined;
  // The session being opened or open: a late 'end' of an older one must not start another.
  let current: pg.Client | undefined;
  let ready = Promise.withResolvers<void>();
  let backoffMs = BACKOFF_MS.first;
  let retry: NodeJS.Timeout | undefined;
  let closed = false;

  async function open(): Promise<void> {
    const next = connect();
    current = next;
    next.on('notification', (msg) => on.notification(msg.channel, msg.payload ?? ''));
    next.on('error', (err) => lost(next, err));
    next.on('end', () => lost(next, undefined));
    try {
      await next.connect();
      await next.query(`LISTEN ${CONTROL}`);
    } catch (err) {
      lost(next, err);
      return;
    }
    if (next !== current) return; // closed while connecting: close() has ended it
    client = next;
    backoffMs = BACKOFF_MS.first;
    ready.resolve();
  }

  function lost(which: pg.Client, err: unknown): void {
    which.removeAllListeners('notification');
    which.end().catch(() => {});
    if (which !== current) return;
    current = undefined;
    if (client !== undefined) log.warn('answer listener lost its database session; reconnecting', { err });
    client = undefined;
    on.lost();
    if (closed || retry !== undefined) return;
    ready = Promise.withResolvers<void>();
    retry = setTimeout(() => {
      retry = undefined;
      void open();
    }, backoffMs);
    backoffMs = Math.min(backoffMs * 2, BACKOFF_MS.max);
  }

  void open();
  return {
    async listening() {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new AppError('RESUME_INTERRUPTED')), READY_TIMEOUT_MS);
      });
      try {
        await Promise.race([ready.promise, timeout]);
      } finally {
        clearTimeout(timer);
      }
      if (client === undefined) throw new AppError('RESUME_INTERRUPTED');
      return client;
    },
    client: () => client,
    async close() {
      closed = true;
      clearTimeout(retry);
      const session = current;
      current = undefined;
      client = undefined;
      await session?.end().catch(() => {});
    },
  };
}

/**
 * Publishes this instance's answers that someone follows: one loop per answer, however many follow
 * it. Returns the function that adds a follower's request (parts after `after`, acked with `nonce`).
 */
function createPublishers(
  notify: (channel: string, payload: string) => Promise<void>,
  log: Logger,
): (live: LiveAnswer, conversationId: string, after: number | undefined, nonce: string) => void {
  const publishers = new Map<string, Publisher>();

  /**
   * Sends an answer on its channel, one notification at a time so they arrive in order: each
   * request's ack, the parts from the earliest offset asked (followers drop parts they hold), each
   * new part, and the end once it is stored.
   */
  async function publish(live: LiveAnswer, channel: string, publisher: Publisher): Promise<void> {
    let offset: number | undefined;
    for (;;) {
      for (const { after, nonce } of publisher.requests.splice(0)) {
        const from = after === undefined ? 0 : live.resumeOffset(after);
        await notify(channel, JSON.stringify({ a: nonce, o: from }));
        offset = offset === undefined ? from : Math.min(offset, from);
      }
      const parts = live.partsFrom(offset ?? 0);
      if (parts.length > 0) {
        for (const payload of pack(parts)) await notify(channel, payload);
        const [start, text] = parts.at(-1) as [number, string];
        offset = start + text.length;
      } else if (live.final !== undefined) {
        // The end goes out once it is stored, so a follower's response closes on a whole row too.
        await live.stored();
        await notify(channel, encodeFinal(live.final, live.length));
        if (publisher.requests.length > 0) continue; // asked for while the end was on its way
        publishers.delete(live.head.messageId);
        return;
      } else if (publisher.requests.length === 0) {
        await Promise.race([live.changed(), publisher.woken()]);
        if (publisher.requests.length === 0 && live.final === undefined) await sleep(COALESCE_MS);
      }
    }
  }

  return (live, conversationId, after, nonce) => {
    const messageId = live.head.messageId;
    const running = publishers.get(messageId);
    if (running !== undefined) {
      running.requests.push({ after, nonce });
      running.wake();
      return;
    }
    const publisher = newPublisher({ after, nonce });
    publishers.set(messageId, publisher);
    publish(live, channelOf(conversationId), publisher).catch((err: unknown) => {
      publishers.delete(messageId);
      log.warn('answer publish failed', { err });
    });
  };
}

/** Follow requests waiting for an answer's publisher, and a way to wake it for them. */
interface Publisher {
  requests: Array<{ after: number | undefined; nonce: string }>;
  wake(): void;
  /** Resolves at the next wake(). */
  woken(): Promise<void>;
}

function newPublisher(first: { after: number | undefined; nonce: string }): Publisher {
  let signal = Promise.withResolvers<void>();
  return {
    requests: [first],
    wake() {
      signal.resolve();
    },
    woken() {
      signal = Promise.withResolvers<void>();
      return signal.promise;
    },
  };
}

/** Parts as notification payloads `{"p":[[offset,text],…]}`, each under the payload limit. */
function pack(parts: Array<[number, string]>): string[] {
  const payloads: string[] = [];
  let batch: Array<[number, string]> = [];
  let bytes = 10;
  for (const part of parts) {
    const size = Buffer.byteLength(JSON.stringify(part)) + 1;
    if (batch.length > 0 && bytes + size > MAX_PAYLOAD_BYTES) {
      payloads.push(JSON.stringify({ p: batch }));
      batch = [];
      bytes = 10;
    }
    batch.push(part);
    bytes += size;
  }
  if (batch.length > 0) payloads.push(JSON.stringify({ p: batch }));
  return payloads;
}

function encodeFinal(event: FinalEvent, length: number): string {
  if (event.type === 'failed') return JSON.stringify({ e: event.error.code, n: length });
  const usage = event.usage === undefined ? null : [event.usage.promptTokens, event.usage.completionTokens];
  return JSON.stringify({ f: event.finishReason, u: usage, n: length });
}

function parse(payload: string): unknown {
  try {
    return JSON.parse(payload);
  } catch {
    return undefined;
  }
}

/** A payload back into an event; anything malformed is dropped. */
function decode(payload: string): RemoteEvent | undefined {
  const m = parse(payload) as
    | { a?: unknown; o?: unknown; p?: unknown; f?: unknown; u?: unknown; e?: unknown; n?: unknown }
    | undefined;
  if (m === undefined || m === null) return undefined;
  if (typeof m.a === 'string' && typeof m.o === 'number') return { type: 'ack', nonce: m.a, from: m.o };
  const length = typeof m.n === 'number' ? m.n : 0;
  if (Array.isArray(m.p)) {
    const parts = m.p.filter(
      (x): x is [number, string] => Array.isArray(x) && typeof x[0] === 'number' && typeof x[1] === 'string',
    );
    return { type: 'parts', parts };
  }
  if (typeof m.e === 'string') {
    const code = (m.e in ERROR_CODES ? m.e : 'UPSTREAM_ERROR') as ErrorCode;
    return { type: 'end', event: { type: 'failed', error: new AppError(code) }, length };
  }
  if ('f' in m) {
    const u = Array.isArray(m.u) ? m.u : undefined;
    const usage = u === undefined ? undefined : { promptTokens: Number(u[0]), completionTokens: Number(u[1]) };
    const finishReason = typeof m.f === 'string' ? m.f : null;
    return { type: 'end', event: { type: 'finished', finishReason, usage }, length };
  }
  return undefined;
}
