// refuseWhileDraining(): called directly, then in front of real routes on a real server.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../../lib/errors.ts';
import { refuseWhileDraining } from '../../../lib/http/middleware/drain.ts';
import { errorHandler } from '../../../lib/http/middleware/errors.ts';
import { requestId } from '../../../lib/http/middleware/request-id.ts';
import type { Context } from '../../../lib/http/types.ts';
import { ok, route, type Served, serve } from '../../support/http.ts';

/** The one field the middleware reads. */
function contextOn(routePattern: string): Context {
  return { route: routePattern } as Context;
}

describe('refuseWhileDraining() called directly', () => {
  it('refuseWhileDraining() passes through synchronously, returning what next() returns, while not draining', () => {
    const middleware = refuseWhileDraining({ isDraining: () => false, exempt: new Set() });
    let calls = 0;
    const result = middleware(contextOn('/work'), () => {
      calls++;
      return undefined;
    });
    assert.equal(result, undefined);
    assert.equal(calls, 1);
    const pending = Promise.resolve();
    assert.equal(
      middleware(contextOn('/work'), () => pending),
      pending,
    );
  });

  it('refuseWhileDraining() throws SHUTTING_DOWN synchronously with Connection: close and Retry-After: 1', () => {
    const middleware = refuseWhileDraining({ isDraining: () => true, exempt: new Set() });
    let calls = 0;
    assert.throws(
      () =>
        middleware(contextOn('/work'), () => {
          calls++;
          return undefined;
        }),
      (err: unknown) =>
        err instanceof AppError &&
        err.code === 'SHUTTING_DOWN' &&
        err.status === 503 &&
        err.headers?.['connection'] === 'close' &&
        err.headers?.['Retry-After'] === '1',
    );
    assert.equal(calls, 0, 'the rest of the chain does not run');
  });

  it('refuseWhileDraining() gives every refusal headers of its own', () => {
    const middleware = refuseWhileDraining({ isDraining: () => true, exempt: new Set() });
    const headersOf = (): Record<string, string> | undefined => {
      try {
        middleware(contextOn('/work'), () => undefined);
      } catch (err) {
        return (err as AppError).headers;
      }
      return undefined;
    };
    const first = headersOf() as Record<string, string>;
    first['Retry-After'] = '999';
    assert.equal(headersOf()?.['Retry-After'], '1');
  });
});

describe('refuseWhileDraining() on a server', () => {
  let served: Served;
  let draining = false;
  let handled: string[] = [];
  const handler = (name: string) => () => {
    handled.push(name);
    return ok();
  };

  before(async () => {
    served = await serve(
      [
        route('GET', '/work', handler('work'), { public: true }),
        route('GET', '/health', handler('health'), { public: true }),
        route('GET', '/items/:id', handler('item'), { public: true }),
      ],
      [
        requestId(),
        errorHandler(),
        refuseWhileDraining({ isDraining: () => draining, exempt: new Set(['/health', '/items/:id']) }),
      ],
    );
  });
  after(() => served?.close());

  async function get(path: string): Promise<{ status: number; headers: Headers; body: Record<string, unknown> }> {
    const res = await fetch(`${served.url}${path}`);
    return { status: res.status, headers: res.headers, body: (await res.json()) as Record<string, unknown> };
  }

  it('refuseWhileDraining() lets requests through before the drain begins', async () => {
    draining = false;
    handled = [];
    assert.equal((await get('/work')).status, 200);
    assert.deepEqual(handled, ['work']);
  });

  it('refuseWhileDraining() answers 503 SHUTTING_DOWN while draining and closes the connection', async () => {
    draining = true;
    handled = [];
    const { status, headers, body } = await get('/work');
    assert.equal(status, 503);
    assert.equal(headers.get('content-type'), 'application/problem+json; charset=utf-8');
    assert.equal(headers.get('connection'), 'close');
    assert.equal(headers.get('retry-after'), '1');
    assert.equal(body['code'], 'SHUTTING_DOWN');
    assert.equal(body['requestId'], headers.get('x-request-id'));
    assert.deepEqual(handled, []);
  });

  it('refuseWhileDraining() lets exempt routes answer for themselves, matched by route pattern', async () => {
    draining = true;
    handled = [];
    assert.equal((await get('/health')).status, 200);
    assert.equal((await get('/items/42')).status, 200);
    assert.deepEqual(handled, ['health', 'item']);
  });

  it('refuseWhileDraining() refuses a path that matches no route with 503, not 404', async () => {
    draining = true;
    assert.equal((await get('/nowhere')).status, 503);
  });

  it('refuseWhileDraining() reads the drain state on every request', async () => {
    draining = true;
    assert.equal((await get('/work')).status, 503);
    draining = false;
    assert.equal((await get('/work')).status, 200);
  });
});
