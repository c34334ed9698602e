// A started upstream stream and its first event: wait for it (so a silent upstream can still be
// left), or watch for it (so a breaker hears how the call went) while the stream is handed on as is.
// After the first event both pass every step straight through: no extra promise per token.
import { UpstreamError, type UpstreamEvent, type UpstreamStream } from './upstream.ts';

/** What a watcher is told about a stream's first event; each is called at most once, and only one of them. */
export interface FirstEventWatch {
  started(): void;
  /** Returns the error the consumer sees. */
  failed(err: unknown): unknown;
  /** The consumer left (or never read) before the first event. */
  abandoned(): void;
}

/** Waits for a started stream's first event, then hands out that event first and the rest from the source. */
export async function awaitFirstEvent(stream: UpstreamStream): Promise<UpstreamStream> {
  const it = stream[Symbol.asyncIterator]();
  const first = await it.next(); // a throw here has already closed the call (the generator's finally ran)
  if (first.done === true) throw new UpstreamError('broken', 'Upstream stream ended before its first event');
  let pending: UpstreamEvent | undefined = first.value;
  const iterator: AsyncIterator<UpstreamEvent> = {
    next() {
      if (pending === undefined) return it.next();
      const value = pending;
      pending = undefined;
      return Promise.resolve({ done: false, value });
    },
    return() {
      pending = undefined;
      return it.return?.() ?? Promise.resolve({ done: true, value: undefined });
    },
  };
  return {
    upstreamRequestId: stream.upstreamRequestId,
    model: stream.model,
    [Symbol.asyncIterator]: () => iterator,
    close() {
      stream.close();
      // The source has started (its first event came), so return() runs its cleanup.
      it.return?.().catch(() => {});
    },
  };
}

/** The stream as it is, telling `watch` how its first step went. */
export function watchFirstEvent(stream: UpstreamStream, watch: FirstEventWatch): UpstreamStream {
  const it = stream[Symbol.asyncIterator]();
  let told = false;
  // A return() may overtake the first next(): whichever settles first is the one told.
  const started = (step: IteratorResult<UpstreamEvent>): IteratorResult<UpstreamEvent> => {
    if (!told) watch.started();
    told = true;
    return step;
  };
  const failed = (err: unknown): never => {
    if (told) throw err;
    told = true;
    throw watch.failed(err);
  };
  const abandoned = (): void => {
    if (told) return;
    told = true;
    watch.abandoned();
  };
  const iterator: AsyncIterator<UpstreamEvent> = {
    next: () => (told ? it.next() : it.next().then(started, failed)),
    return() {
      abandoned();
      return it.return?.() ?? Promise.resolve({ done: true, value: undefined });
    },
  };
  return {
    upstreamRequestId: stream.upstreamRequestId,
    model: stream.model,
    [Symbol.asyncIterator]: () => iterator,
    close() {
      abandoned();
      stream.close();
    },
  };
}
