import assert from 'node:assert/strict';
import { IncomingMessage, request } from 'node:http';
import { Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { AppError } from '../../lib/errors.ts';
import { checkDeclaredLength, isJsonContentType, parseJson, readJson } from '../../lib/http/body.ts';
import { errorHandler } from '../../lib/http/middleware/errors.ts';
import type { Context } from '../../lib/http/types.ts';
import { rawRequest, rawStatus, route, type Served, serve } from '../support/http.ts';

const MAX_BYTES = 64;

/** Asserts that `fn` throws an AppError with this code and status. */
function throwsApp(fn: () => unknown, code: string, status: number): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof AppError, `expected an AppError, got ${String(err)}`);
    assert.equal(err.code, code);
    assert.equal(err.status, status);
    return true;
  });
}

describe('checkDeclaredLength()', () => {
  function declaring(length: string | undefined): IncomingMessage {
    const req = new IncomingMessage(new Socket());
    if (length !== undefined) req.headers['content-length'] = length;
    return req;
  }

  it('checkDeclaredLength() accepts a declared length up to the cap, and no declared length', () => {
    checkDeclaredLength(declaring(String(MAX_BYTES)), MAX_BYTES);
    checkDeclaredLength(declaring('0'), MAX_BYTES);
    checkDeclaredLength(declaring(undefined), MAX_BYTES);
  });

  it('checkDeclaredLength() refuses a declared length over the cap with 413 and Connection: close', () => {
    throwsApp(() => checkDeclaredLength(declaring(String(MAX_BYTES + 1)), MAX_BYTES), 'BODY_TOO_LARGE', 413);
    assert.throws(
      () => checkDeclaredLength(declaring('99999999999999999999'), MAX_BYTES),
      (err: unknown) =>
        err instanceof AppError &&
        err.detail === `Body exceeds ${MAX_BYTES} bytes` &&
        err.headers?.['connection'] === 'close',
    );
  });
});

describe('isJsonContentType()', () => {
  for (const header of [
    'application/json',
    'Application/JSON',
    'application/json; charset=utf-8',
    'application/json;charset="UTF-8"',
    'application/json; foo=bar',
  ]) {
    it(`isJsonContentType() accepts ${header}`, () => {
      assert.equal(isJsonContentType(header), true);
    });
  }

  for (const header of [
    undefined,
    '',
    'text/plain',
    'application/jsonp',
    'application/json-seq',
    'text/json',
    'application/x-www-form-urlencoded',
    'application/json; charset=latin1',
    'application/json; charset=utf-16',
    'application/json; charset=',
  ]) {
    it(`isJsonContentType() refuses ${JSON.stringify(header)}`, () => {
      assert.equal(isJsonContentType(header), false);
    });
  }
});

describe('parseJson()', () => {
  it('parseJson() parses a JSON document', () => {
    assert.deepEqual(parseJson('{"message":"hi","n":[1,2,{"a":null}]}'), { message: 'hi', n: [1, 2, { a: null }] });
  });

  for (const text of ['', '{', '{"a":1,}', "{'a':1}", 'undefined', '\uFEFF{}', '{"a":1}x']) {
    it(`parseJson() refuses malformed JSON ${JSON.stringify(text)} with 400 INVALID_JSON`, () => {
      throwsApp(() => parseJson(text), 'INVALID_JSON', 400);
    });
  }

  it('parseJson() accepts nesting up to maxDepth and refuses one level more', () => {
    assert.deepEqual(parseJson('[[[1]]]', { maxDepth: 3 }), [[[1]]]);
    throwsApp(() => parseJson('[[[[1]]]]', { maxDepth: 3 }), 'INVALID_JSON', 400);
    throwsApp(() => parseJson('{"a":{"b":{"c":{}}}}', { maxDepth: 3 }), 'INVALID_JSON', 400);
  });

  it('parseJson() bounds depth at 32 by default', () => {
    assert.doesNotThrow(() => parseJson(`${'['.repeat(32)}${']'.repeat(32)}`));
    throwsApp(() => parseJson(`${'['.repeat(33)}${']'.repeat(33)}`), 'INVALID_JSON', 400);
  });

  it('parseJson() refuses a deeply nested document without overflowing the stack', () => {
    throwsApp(() => parseJson(`${'['.repeat(100_000)}${']'.repeat(100_000)}`), 'INVALID_JSON', 400);
  });

  it('parseJson() counts keys across the whole document and refuses more than maxKeys', () => {
    assert.doesNotThrow(() => parseJson('{"a":1,"b":{"c":2}}', { maxKeys: 3 }));
    throwsApp(() => parseJson('{"a":1,"b":{"c":2,"d":3}}', { maxKeys: 3 }), 'INVALID_JSON', 400);
    throwsApp(() => parseJson('[{"a":1},{"b":2},{"c":3},{"d":4}]', { maxKeys: 3 }), 'INVALID_JSON', 400);
  });

  for (const key of ['__proto__', 'constructor', 'prototype']) {
    it(`parseJson() refuses a ${key} key with 400, at any depth`, () => {
      throwsApp(() => parseJson(`{"${key}":{"polluted":true}}`), 'INVALID_JSON', 400);
      throwsApp(() => parseJson(`{"a":[{"${key}":{"polluted":true}}]}`), 'INVALID_JSON', 400);
      assert.equal(({} as Record<string, unknown>)['polluted'], undefined);
    });
  }
});

describe('readJson()', () => {
  let served: Served;
  let arrived: () => void = () => {};

  before(async () => {
    const echo = async (ctx: Context) => {
      arrived();
      return { kind: 'json', status: 200, body: { received: await readJson(ctx, { maxBytes: MAX_BYTES }) } } as const;
    };
    served = await serve([route('POST', '/echo', echo)], [errorHandler()], { deadlineMs: 5_000 });
  });
  after(() => served.close());

  function post(
    body: string,
    headers: Record<string, string> = { 'content-type': 'application/json' },
  ): Promise<Response> {
    return fetch(`${served.url}/echo`, { method: 'POST', headers, body });
  }

  it('readJson() returns the parsed body of an application/json request', async () => {
    const res = await post('{"message":"hello"}');
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { received: { message: 'hello' } });
  });

  it('readJson() accepts a body of exactly maxBytes', async () => {
    const body = JSON.stringify({ m: 'x'.repeat(MAX_BYTES - 8) });
    assert.equal(Buffer.byteLength(body), MAX_BYTES);
    assert.equal((await post(body)).status, 200);
  });

  it('readJson() answers 415 for another content type', async () => {
    const res = await post('{"message":"hello"}', { 'content-type': 'text/plain' });
    assert.equal(res.status, 415);
    assert.equal(((await res.json()) as { code: string }).code, 'UNSUPPORTED_MEDIA_TYPE');
  });

  it('readJson() answers 415 for a JSON type with a non-UTF-8 charset', async () => {
    const res = await post('{"message":"hello"}', { 'content-type': 'application/json; charset=iso-8859-1' });
    assert.equal(res.status, 415);
  });

  it('readJson() answers 400 INVALID_JSON for malformed JSON', async () => {
    const res = await post('{"message":');
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { code: string }).code, 'INVALID_JSON');
  });

  it('readJson() answers 400 for a __proto__ key', async () => {
    const res = await post('{"__proto__":{"admin":true}}');
    assert.equal(res.status, 400);
    assert.equal(((await res.json()) as { code: string }).code, 'INVALID_JSON');
  });

  it('readJson() answers 413 for a declared Content-Length over the cap without reading the body', async () => {
    // Only the head is sent: an answer proves the server did not wait for the body.
    const response = await rawRequest(
      served.port,
      `POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: ${MAX_BYTES + 1}\r\n\r\n`,
    );
    assert.equal(rawStatus(response), 413);
    assert.match(response, /\r\nconnection: close\r\n/i);
    assert.match(response, /"code":"BODY_TOO_LARGE"/);
  });

  it('readJson() answers 413 for a chunked body once the counted bytes pass the cap', async () => {
    // Two chunks over the cap and no terminating chunk: the reader must cut, not wait for the end.
    const chunk = `{"m":"${'x'.repeat(40)}`;
    const response = await rawRequest(
      served.port,
      'POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n',
      `${chunk.length.toString(16)}\r\n${chunk}\r\n`,
      `${chunk.length.toString(16)}\r\n${chunk}\r\n`,
    );
    assert.equal(rawStatus(response), 413);
    assert.match(response, /"code":"BODY_TOO_LARGE"/);
  });

  it('readJson() reads a chunked body under the cap', async () => {
    const response = await rawRequest(
      served.port,
      'POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n' +
        'transfer-encoding: chunked\r\nconnection: close\r\n\r\n',
      '5\r\n{"a":\r\n',
      '2\r\n1}\r\n',
      '0\r\n\r\n',
    );
    assert.equal(rawStatus(response), 200);
    assert.match(response, /\{"received":\{"a":1\}\}/);
  });

  it('readJson() answers 413 for a streamed node:http request body with no Content-Length', async () => {
    const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        `${served.url}/echo`,
        { method: 'POST', headers: { 'content-type': 'application/json' } },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
        },
      );
      req.on('error', reject);
      assert.equal(req.getHeader('content-length'), undefined);
      req.write(`["${'y'.repeat(50)}",`);
      req.write(`"${'y'.repeat(50)}"`); // the body is never ended: the server must answer anyway
    });
    assert.equal(status, 413);
    assert.equal(JSON.parse(body).code, 'BODY_TOO_LARGE');
  });

  it('readJson() answers 408 when the body does not arrive before the request deadline', async (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] }); // the deadline timer is armed when the reader starts
    const reached = new Promise<void>((resolve) => (arrived = resolve));
    t.after(() => (arrived = () => {}));
    const response = rawRequest(
      served.port,
      `POST /echo HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{`,
    );
    await reached;
    t.mock.timers.tick(5_000);
    const text = await response;
    assert.equal(rawStatus(text), 408);
    assert.match(text, /"code":"REQUEST_TIMEOUT"/);
    assert.match(text, /\r\nconnection: close\r\n/i);
  });
});
