import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compose, settle } from '../../lib/http/compose.ts';
import type { Context, Middleware } from '../../lib/http/types.ts';

const ctx = {} as Context;

describe('compose()', () => {
  it('compose() runs middleware in order, unwinding in reverse like an onion', async () => {
    const seen: string[] = [];
    const layer = (name: string): Middleware =>
      async function named(_ctx, next) {
        seen.push(`${name} in`);
        await next();
        seen.push(`${name} out`);
      };
    await compose([layer('a'), layer('b'), layer('c')])(ctx);
    assert.deepEqual(seen, ['a in', 'b in', 'c in', 'c out', 'b out', 'a out']);
  });

  it('compose() stops the chain when a middleware does not call next()', async () => {
    const seen: string[] = [];
    await compose([
      async () => {
        seen.push('a');
      },
      async () => {
        seen.push('b');
      },
    ])(ctx);
    assert.deepEqual(seen, ['a']);
  });

  it('compose() rejects a second next() and runs the rest of the chain once', async () => {
    let runs = 0;
    let second: unknown;
    await compose([
      async (_ctx, next) => {
        await next();
        second = await next()?.catch((err: unknown) => err);
      },
      async () => {
        runs++;
      },
    ])(ctx);
    assert.equal(runs, 1);
    assert.ok(second instanceof Error);
    assert.match(second.message, /next\(\) called multiple times/);
  });

  it('compose() rejects a second next() called before the first has settled', async () => {
    let runs = 0;
    const chain = compose([
      async (_ctx, next) => {
        await Promise.all([next(), next()]);
      },
      async () => {
        runs++;
      },
    ]);
    await assert.rejects(chain(ctx) as Promise<void>, /next\(\) called multiple times/);
    assert.equal(runs, 1);
  });

  it('compose() propagates an error thrown inside the chain to the caller', async () => {
    const chain = compose([async (_ctx, next) => next(), async () => Promise.reject(new RangeError('deep'))]);
    await assert.rejects(chain(ctx) as Promise<void>, RangeError);
  });

  it('compose() turns a synchronous throw into a rejection', async () => {
    const syncThrow = ((): Promise<void> => {
      throw new TypeError('sync');
    }) as Middleware;
    const result = compose([syncThrow])(ctx);
    assert.ok(result instanceof Promise);
    await assert.rejects(result, TypeError);
  });

  it('compose() lets an outer middleware catch an inner error', async () => {
    let caught: unknown;
    await compose([
      async (_ctx, next) => {
        try {
          await next();
        } catch (err) {
          caught = err;
        }
      },
      async () => {
        throw new Error('inner');
      },
    ])(ctx);
    assert.ok(caught instanceof Error);
    assert.equal(caught.message, 'inner');
  });

  it('compose() runs a fully synchronous chain without a promise, in onion order', () => {
    const seen: string[] = [];
    const layer =
      (name: string): Middleware =>
      (_ctx, next) => {
        seen.push(`${name} in`);
        const pending = next();
        seen.push(`${name} out`);
        return pending;
      };
    const result = compose([layer('a'), layer('b')])(ctx);
    assert.equal(result, undefined);
    assert.deepEqual(seen, ['a in', 'b in', 'b out', 'a out']);
  });

  it('compose() returns the promise of the first step that went asynchronous', async () => {
    const seen: string[] = [];
    const result = compose([(_ctx, next) => next(), async () => void seen.push('async')])(ctx);
    assert.ok(result instanceof Promise);
    await result;
    assert.deepEqual(seen, ['async']);
  });

  it('compose() turns a synchronous throw deep in a synchronous chain into a rejection', async () => {
    const result = compose([
      (_ctx, next) => next(),
      () => {
        throw new RangeError('deep sync');
      },
    ])(ctx);
    assert.ok(result instanceof Promise);
    await assert.rejects(result, RangeError);
  });

  it('compose() of no middleware returns undefined: there is nothing to wait for', () => {
    assert.equal(compose([])(ctx), undefined);
  });

  it('compose() keeps its own copy of the list', async () => {
    const seen: string[] = [];
    const list: Middleware[] = [async () => void seen.push('a')];
    const chain = compose(list);
    list.unshift(async () => void seen.push('late'));
    await chain(ctx);
    assert.deepEqual(seen, ['a']);
  });
});

describe('settle()', () => {
  const seen: string[] = [];
  const onValue = (_ctx: Context, value: string): undefined => void seen.push(`value ${value}`);
  const onError = (_ctx: Context, err: unknown): undefined => void seen.push(`error ${(err as Error).message}`);

  it('settle() hands a synchronous value on at once and makes no promise', () => {
    seen.length = 0;
    assert.equal(
      settle(ctx, () => 'a', onValue, onError),
      undefined,
    );
    assert.deepEqual(seen, ['value a']);
  });

  it('settle() hands a synchronous throw to onError at once', () => {
    seen.length = 0;
    const result = settle(
      ctx,
      () => {
        throw new Error('b');
      },
      onValue,
      onError,
    );
    assert.equal(result, undefined);
    assert.deepEqual(seen, ['error b']);
  });

  it('settle() hands a resolved promise on once it settles', async () => {
    seen.length = 0;
    const result = settle(ctx, async () => 'c', onValue, onError);
    assert.ok(result instanceof Promise);
    assert.deepEqual(seen, []);
    await result;
    assert.deepEqual(seen, ['value c']);
  });

  it('settle() hands a rejection to onError', async () => {
    seen.length = 0;
    await settle(ctx, async () => Promise.reject(new Error('d')), onValue, onError);
    assert.deepEqual(seen, ['error d']);
  });

  it('settle() without onError lets a synchronous throw and a rejection travel on', async () => {
    assert.throws(
      () =>
        settle(
          ctx,
          () => {
            throw new TypeError('e');
          },
          onValue,
        ),
      TypeError,
    );
    await assert.rejects(
      settle(ctx, async () => Promise.reject(new TypeError('f')), onValue) as Promise<void>,
      TypeError,
    );
  });

  it('settle() does not send a failure of onValue to onError', async () => {
    seen.length = 0;
    const failing = (): undefined => {
      throw new RangeError('g');
    };
    assert.throws(() => settle(ctx, () => 'x', failing, onError), RangeError);
    await assert.rejects(settle(ctx, async () => 'x', failing, onError) as Promise<void>, RangeError);
    assert.deepEqual(seen, []);
  });
});
