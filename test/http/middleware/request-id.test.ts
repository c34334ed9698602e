import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { clientRequestId, requestId } from '../../../lib/http/middleware/request-id.ts';
import { route, type Served, serve } from '../../support/http.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

describe('requestId()', () => {
  let served: Served;
  before(async () => {
    served = await serve(
      [route('GET', '/id', async (ctx) => ({ kind: 'json', status: 200, body: { requestId: ctx.requestId } }))],
      [requestId()],
    );
  });
  after(() => served.close());

  async function get(headers: Record<string, string> = {}): Promise<{ header: string | null; seen: string }> {
    const res = await fetch(`${served.url}/id`, { headers });
    const body = (await res.json()) as { requestId: string };
    return { header: res.headers.get('x-request-id'), seen: body.requestId };
  }

  for (const id of ['abcdefgh', 'A1.b2_c3-d4', 'x'.repeat(128), '01J9ZQ3V6X8K2M4N5P7R9T1W3Y']) {
    it(`requestId() answers the well-formed client id ${id.slice(0, 20)} with its own UUID`, async () => {
      const { header, seen } = await get({ 'x-request-id': id });
      assert.match(header ?? '', UUID);
      assert.equal(seen, header);
    });
  }

  it('requestId() gives two requests that send the same client id two different ids', async () => {
    const first = await get({ 'x-request-id': 'shared-client-id' });
    const second = await get({ 'x-request-id': 'shared-client-id' });
    assert.notEqual(first.header, second.header);
  });

  it('requestId() generates a UUID and echoes it when none is sent', async () => {
    const { header, seen } = await get();
    assert.match(header ?? '', UUID);
    assert.equal(seen, header);
  });

  it('requestId() generates a different id for each request', async () => {
    const first = await get();
    const second = await get();
    assert.notEqual(first.header, second.header);
  });

  for (const bad of [
    'abcdefg',
    'x'.repeat(129),
    'abc def gh',
    'abcdefgh<script>',
    'abcdefgh%0d%0a',
    'abcdefgh;x',
    'abcdefgh,ijklmnop',
    'éèéèéèéèéè',
  ]) {
    it(`requestId() ignores the malformed incoming id ${JSON.stringify(bad.slice(0, 20))}`, async () => {
      const { header, seen } = await get({ 'x-request-id': Buffer.from(bad).toString('latin1') });
      assert.match(header ?? '', UUID);
      assert.equal(seen, header);
    });
  }
});

describe('clientRequestId()', () => {
  const req = (value: string | string[] | undefined) =>
    ({ headers: { 'x-request-id': value } }) as unknown as IncomingMessage;

  it('clientRequestId() returns a well-formed client id', () => {
    assert.equal(clientRequestId(req('client-req.0001_A')), 'client-req.0001_A');
  });

  for (const bad of [
    undefined,
    'abcdefg',
    'x'.repeat(129),
    'abcdefgh<script>',
    'abc def gh',
    ['abcdefgh', 'ijklmnop'],
  ]) {
    it(`clientRequestId() returns undefined for ${JSON.stringify(bad)?.slice(0, 24)}`, () => {
      assert.equal(clientRequestId(req(bad)), undefined);
    });
  }
});
