import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../lib/errors.ts';
import { cors } from '../../lib/http/middleware/cors.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import { requestId } from '../../lib/http/middleware/request-id.ts';
import { securityHeaders } from '../../lib/http/middleware/security-headers.ts';
import { constantJson } from '../../lib/http/respond.ts';
import { rawRequest, type Served, serve } from '../support/http.ts';

/** Header lines of each response in a raw byte stream, as [name, value] pairs per response. */
function headerBlocks(raw: string): Array<Array<[string, string]>> {
  return raw
    .split(/(?=HTTP\/1\.1 \d{3})/)
    .filter((part) => part.startsWith('HTTP/1.1'))
    .map((part) =>
      part
        .split('\r\n\r\n')[0]!
        .split('\r\n')
        .slice(1)
        .map((line): [string, string] => [
          line.slice(0, line.indexOf(':')).toLowerCase(),
          line.slice(line.indexOf(':') + 1).trim(),
        ]),
    );
}

const CONSTANT = constantJson(200, { ok: true });
let serialisations = 0;
// toJSON runs whenever the body is serialised: it counts how often that happens.
const COUNTED = constantJson(200, {
  toJSON() {
    serialisations++;
    return { counted: true };
  },
});

describe('respond (synchronous answers)', () => {
  let served: Served;
  before(async () => {
    served = await serve(
      [
        // Synchronous handlers: the whole chain answers inside node's request event.
        { method: 'GET', pattern: '/sync', handler: () => CONSTANT },
        { method: 'POST', pattern: '/sync', handler: () => CONSTANT },
        { method: 'GET', pattern: '/async', handler: async () => CONSTANT },
        {
          method: 'GET',
          pattern: '/own-cache',
          handler: () => ({ kind: 'json', status: 200, body: {}, headers: { 'Cache-Control': 'max-age=60' } }),
        },
        {
          method: 'GET',
          pattern: '/refuse',
          handler: () => {
            throw new AppError('UNAUTHORIZED', { headers: { 'WWW-Authenticate': 'Bearer' } });
          },
        },
      ],
      [requestId(), securityHeaders({ hsts: false }), errorHandler(), cors({ origins: ['https://app.example'] })],
    );
  });
  after(() => served.close());

  it('keeps the connection alive after a bodyless GET answered synchronously', async () => {
    const raw = await rawRequest(
      served.port,
      'GET /sync HTTP/1.1\r\nhost: x\r\n\r\nGET /sync HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n',
    );
    const blocks = headerBlocks(raw);
    assert.equal(blocks.length, 2, 'both pipelined requests were answered on one connection');
    assert.equal(blocks[0]!.find(([name]) => name === 'connection')?.[1], 'keep-alive');
  });

  it('closes the connection when a request is answered before its body was read', async () => {
    const raw = await rawRequest(
      served.port,
      'POST /sync HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}',
      'GET /sync HTTP/1.1\r\nhost: x\r\n\r\n',
    );
    const blocks = headerBlocks(raw);
    assert.equal(blocks.length, 1, 'nothing after the unread body is taken as a request');
    assert.equal(blocks[0]!.find(([name]) => name === 'connection')?.[1], 'close');
  });

  it('sends the same header set from a synchronous and an asynchronous handler', async () => {
    const [syncRes, asyncRes] = await Promise.all([
      fetch(`${served.url}/sync`, { headers: { origin: 'https://app.example' } }),
      fetch(`${served.url}/async`, { headers: { origin: 'https://app.example' } }),
    ]);
    const names = (res: Response) => [...res.headers.keys()].filter((n) => n !== 'x-request-id' && n !== 'date').sort();
    assert.deepEqual(names(syncRes), names(asyncRes));
    assert.equal(syncRes.headers.get('vary'), 'origin');
    assert.equal(syncRes.headers.get('access-control-allow-origin'), 'https://app.example');
  });

  it("lets a reply's own header replace the base one instead of sending both", async () => {
    const raw = await rawRequest(served.port, 'GET /own-cache HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n');
    const cache = headerBlocks(raw)[0]!.filter(([name]) => name === 'cache-control');
    assert.deepEqual(cache, [['cache-control', 'max-age=60']]);
  });

  it('answers an error thrown synchronously by a handler as problem+json', async () => {
    const res = await fetch(`${served.url}/refuse`);
    assert.equal(res.status, 401);
    assert.equal(res.headers.get('www-authenticate'), 'Bearer');
    assert.match(res.headers.get('content-type') ?? '', /^application\/problem\+json/);
    assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  });
});

describe('constantJson()', () => {
  let served: Served;
  before(async () => {
    served = await serve([{ method: 'GET', pattern: '/counted', handler: () => COUNTED }], []);
  });
  after(() => served.close());

  it('constantJson() serialises its body once, however often the reply is sent', async () => {
    const bodies: unknown[] = [];
    for (let i = 0; i < 3; i++) bodies.push(await (await fetch(`${served.url}/counted`)).json());
    assert.deepEqual(bodies, [{ counted: true }, { counted: true }, { counted: true }]);
    assert.equal(serialisations, 1);
  });
});
