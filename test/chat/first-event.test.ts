// A started upstream stream and its first event, against hand-built sources: what awaitFirstEvent()
// hands on and cleans up, and what watchFirstEvent() tells its watcher (once, and only one thing).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { setImmediate } from 'node:timers/promises';
import { awaitFirstEvent, type FirstEventWatch, watchFirstEvent } from '../../lib/chat/first-event.ts';
import { UpstreamError, type UpstreamEvent, type UpstreamStream } from '../../lib/chat/upstream.ts';

const HELLO: UpstreamEvent = { type: 'delta', text: 'Hel' };
const LO: UpstreamEvent = { type: 'delta', text: 'lo' };
const DONE: UpstreamEvent = { type: 'done', finishReason: 'stop' };

interface Generated {
  stream: UpstreamStream;
  /** How often the stream's close() was called. */
  closes: number;
  /** Whether the generator's finally ran (its upstream request ended). */
  cleanedUp: boolean;
}

/** A stream over a generator that yields `events`, then throws `error` if one is given. */
function generated(events: readonly UpstreamEvent[], error?: Error): Generated {
  const state: Generated = { stream: undefined as unknown as UpstreamStream, closes: 0, cleanedUp: false };
  async function* run(): AsyncGenerator<UpstreamEvent> {
    try {
      yield* events;
      if (error !== undefined) throw error;
    } finally {
      state.cleanedUp = true;
    }
  }
  const it = run();
  state.stream = {
    upstreamRequestId: 'req-upstream-1',
    model: 'model-a',
    [Symbol.asyncIterator]: () => it,
    close() {
      state.closes++;
    },
  };
  return state;
}

interface Manual {
  stream: UpstreamStream;
  /** The promise each next() call returned, in order. */
  nexts: Array<Promise<IteratorResult<UpstreamEvent>>>;
  /** Settles the oldest unsettled next(). */
  resolve(step: IteratorResult<UpstreamEvent>): void;
  reject(err: unknown): void;
  returns: number;
  closes: number;
}

/** A stream whose steps the test settles by hand, to order a return() against a pending next(). */
function manual(): Manual {
  const waiting: Array<PromiseWithResolvers<IteratorResult<UpstreamEvent>>> = [];
  const state: Manual = {
    stream: undefined as unknown as UpstreamStream,
    nexts: [],
    resolve: (step) => waiting.shift()?.resolve(step),
    reject: (err) => waiting.shift()?.reject(err),
    returns: 0,
    closes: 0,
  };
  const it: AsyncIterator<UpstreamEvent> = {
    next() {
      const step = Promise.withResolvers<IteratorResult<UpstreamEvent>>();
      waiting.push(step);
      state.nexts.push(step.promise);
      return step.promise;
    },
    return() {
      state.returns++;
      return Promise.resolve({ done: true, value: undefined });
    },
  };
  state.stream = {
    upstreamRequestId: undefined,
    model: 'model-m',
    [Symbol.asyncIterator]: () => it,
    close() {
      state.closes++;
    },
  };
  return state;
}

async function collect(stream: UpstreamStream): Promise<UpstreamEvent[]> {
  const seen: UpstreamEvent[] = [];
  for await (const event of stream) seen.push(event);
  return seen;
}

/** A watcher that records what it was told; failed() wraps the error so the test can tell them apart. */
function recorder(): FirstEventWatch & { told: string[]; failures: unknown[] } {
  const told: string[] = [];
  const failures: unknown[] = [];
  return {
    told,
    failures,
    started: () => told.push('started'),
    failed(err) {
      told.push('failed');
      failures.push(err);
      return new UpstreamError('status', 'judged', { cause: err });
    },
    abandoned: () => told.push('abandoned'),
  };
}

describe('awaitFirstEvent()', () => {
  it('awaitFirstEvent() resolves only once the first event has come', async () => {
    const source = manual();
    let resolved = false;
    const waiting = awaitFirstEvent(source.stream).then((s) => {
      resolved = true;
      return s;
    });
    await setImmediate();
    assert.equal(resolved, false);
    source.resolve({ done: false, value: HELLO });
    const stream = await waiting;
    assert.deepEqual(await stream[Symbol.asyncIterator]().next(), { done: false, value: HELLO });
  });

  it('awaitFirstEvent() hands on the first event, then the rest, with the source id and model', async () => {
    const source = generated([HELLO, LO, DONE]);
    const stream = await awaitFirstEvent(source.stream);
    assert.equal(stream.upstreamRequestId, 'req-upstream-1');
    assert.equal(stream.model, 'model-a');
    assert.deepEqual(await collect(stream), [HELLO, LO, DONE]);
  });

  it('awaitFirstEvent() rejects with UpstreamError broken when the stream ends before any event', async () => {
    const source = generated([]);
    await assert.rejects(awaitFirstEvent(source.stream), (err: unknown) => {
      assert.ok(err instanceof UpstreamError);
      assert.equal(err.kind, 'broken');
      assert.equal(err.message, 'Upstream stream ended before its first event');
      return true;
    });
  });

  it("awaitFirstEvent() rejects with the source's own error when its first step fails", async () => {
    const boom = new UpstreamError('timeout', 'Upstream sent no token before the deadline');
    await assert.rejects(awaitFirstEvent(generated([], boom).stream), (err: unknown) => err === boom);
  });

  it('awaitFirstEvent() passes a failure after the first event to the consumer unchanged', async () => {
    const boom = new UpstreamError('connection', 'reset');
    const stream = await awaitFirstEvent(generated([HELLO], boom).stream);
    const it = stream[Symbol.asyncIterator]();
    assert.deepEqual(await it.next(), { done: false, value: HELLO });
    await assert.rejects(it.next(), (err: unknown) => err === boom);
  });

  it('awaitFirstEvent() stream.close() closes the source and ends its generator', async () => {
    const source = generated([HELLO, LO, DONE]);
    const stream = await awaitFirstEvent(source.stream);
    stream.close();
    assert.equal(source.closes, 1);
    await setImmediate();
    assert.equal(source.cleanedUp, true);
  });

  it('awaitFirstEvent() ends the source when the consumer stops after the first event', async () => {
    const source = generated([HELLO, LO, DONE]);
    const stream = await awaitFirstEvent(source.stream);
    for await (const event of stream) {
      assert.deepEqual(event, HELLO);
      break;
    }
    assert.equal(source.cleanedUp, true);
  });

  it('awaitFirstEvent() drops the held first event when the consumer returns before reading it', async () => {
    const source = generated([HELLO, LO, DONE]);
    const it = (await awaitFirstEvent(source.stream))[Symbol.asyncIterator]();
    await it.return?.();
    assert.deepEqual(await it.next(), { done: true, value: undefined });
    assert.equal(source.cleanedUp, true);
  });

  it("awaitFirstEvent() hands out the source's own step after the first event, adding no promise", async () => {
    const source = manual();
    const waiting = awaitFirstEvent(source.stream);
    source.resolve({ done: false, value: HELLO });
    const it = (await waiting)[Symbol.asyncIterator]();
    await it.next();
    const second = it.next();
    assert.equal(second, source.nexts[1]);
    source.resolve({ done: false, value: DONE });
    assert.deepEqual(await second, { done: false, value: DONE });
  });
});

describe('watchFirstEvent()', () => {
  it('watchFirstEvent() tells nothing before the stream is read', () => {
    const watch = recorder();
    watchFirstEvent(generated([HELLO, DONE]).stream, watch);
    assert.deepEqual(watch.told, []);
  });

  it('watchFirstEvent() tells started() once at the first event and passes every event on unchanged', async () => {
    const watch = recorder();
    const stream = watchFirstEvent(generated([HELLO, LO, DONE]).stream, watch);
    assert.equal(stream.upstreamRequestId, 'req-upstream-1');
    assert.equal(stream.model, 'model-a');
    assert.deepEqual(await collect(stream), [HELLO, LO, DONE]);
    assert.deepEqual(watch.told, ['started']);
  });

  it('watchFirstEvent() tells failed() a failing first step, and the consumer gets what failed() returns', async () => {
    const watch = recorder();
    const boom = new Error('socket hang up');
    const stream = watchFirstEvent(generated([], boom).stream, watch);
    await assert.rejects(stream[Symbol.asyncIterator]().next(), (err: unknown) => {
      assert.ok(err instanceof UpstreamError);
      assert.equal(err.message, 'judged');
      return true;
    });
    assert.deepEqual(watch.told, ['failed']);
    assert.equal(watch.failures[0], boom);
  });

  it('watchFirstEvent() passes a failure after the first event through without telling failed()', async () => {
    const watch = recorder();
    const boom = new Error('reset mid-answer');
    const it = watchFirstEvent(generated([HELLO], boom).stream, watch)[Symbol.asyncIterator]();
    await it.next();
    await assert.rejects(it.next(), (err: unknown) => err === boom);
    assert.deepEqual(watch.told, ['started']);
  });

  it('watchFirstEvent() tells abandoned() when the consumer returns before the first step', async () => {
    const watch = recorder();
    const source = manual();
    const it = watchFirstEvent(source.stream, watch)[Symbol.asyncIterator]();
    assert.deepEqual(await it.return?.(), { done: true, value: undefined });
    assert.deepEqual(watch.told, ['abandoned']);
    assert.equal(source.returns, 1);
  });

  it('watchFirstEvent() tells abandoned() and closes the source when closed before the first step', () => {
    const watch = recorder();
    const source = manual();
    watchFirstEvent(source.stream, watch).close();
    assert.deepEqual(watch.told, ['abandoned']);
    assert.equal(source.closes, 1);
  });

  it('watchFirstEvent() tells abandoned() only once however often it is closed and returned', async () => {
    const watch = recorder();
    const stream = watchFirstEvent(manual().stream, watch);
    stream.close();
    stream.close();
    await stream[Symbol.asyncIterator]().return?.();
    assert.deepEqual(watch.told, ['abandoned']);
  });

  it('watchFirstEvent() closes the source but tells nothing more when closed after the first event', async () => {
    const watch = recorder();
    const source = generated([HELLO, DONE]);
    const stream = watchFirstEvent(source.stream, watch);
    await stream[Symbol.asyncIterator]().next();
    stream.close();
    assert.deepEqual(watch.told, ['started']);
    assert.equal(source.closes, 1);
  });

  it('watchFirstEvent() tells abandoned(), not started(), when a return() overtakes a pending first step', async () => {
    const watch = recorder();
    const source = manual();
    const it = watchFirstEvent(source.stream, watch)[Symbol.asyncIterator]();
    const first = it.next();
    await it.return?.();
    source.resolve({ done: false, value: HELLO });
    assert.deepEqual(await first, { done: false, value: HELLO });
    assert.deepEqual(watch.told, ['abandoned']);
  });

  it('watchFirstEvent() hands the raw error on when a return() overtakes a first step that then fails', async () => {
    const watch = recorder();
    const source = manual();
    const it = watchFirstEvent(source.stream, watch)[Symbol.asyncIterator]();
    const first = it.next();
    await it.return?.();
    const boom = new Error('aborted');
    source.reject(boom);
    await assert.rejects(first, (err: unknown) => err === boom);
    assert.deepEqual(watch.told, ['abandoned']);
  });

  it('watchFirstEvent() tells nothing for a return() after the first step has settled', async () => {
    const watch = recorder();
    const source = manual();
    const it = watchFirstEvent(source.stream, watch)[Symbol.asyncIterator]();
    const first = it.next();
    source.resolve({ done: false, value: HELLO });
    await first;
    await it.return?.();
    assert.deepEqual(watch.told, ['started']);
    assert.equal(source.returns, 1);
  });

  it("watchFirstEvent() hands out the source's own step after the first, adding no promise", async () => {
    const source = manual();
    const it = watchFirstEvent(source.stream, recorder())[Symbol.asyncIterator]();
    const first = it.next();
    assert.notEqual(first, source.nexts[0], 'the first step is watched');
    source.resolve({ done: false, value: HELLO });
    await first;
    assert.equal(it.next(), source.nexts[1]);
  });
});
