import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createRouter, type Match, type Route } from '../../lib/http/router.ts';
import type { Handler } from '../../lib/http/types.ts';

function handler(name: string): Handler {
  const fn: Handler = async () => ({ kind: 'json', status: 200, body: { name } });
  return Object.defineProperty(fn, 'name', { value: name });
}

const getHealth = handler('getHealth');
const listConversations = handler('listConversations');
const getConversation = handler('getConversation');
const deleteConversation = handler('deleteConversation');
const postChat = handler('postChat');
const getMessage = handler('getMessage');
const getNew = handler('getNew');

const routes: Route[] = [
  { method: 'GET', pattern: '/health', handler: getHealth, public: true },
  { method: 'GET', pattern: '/v1/conversations', handler: listConversations },
  { method: 'GET', pattern: '/v1/conversations/:id', handler: getConversation },
  { method: 'DELETE', pattern: '/v1/conversations/:id', handler: deleteConversation },
  { method: 'GET', pattern: '/v1/conversations/:id/messages/:messageId', handler: getMessage },
  { method: 'GET', pattern: '/v1/conversations/new/draft', handler: getNew },
  { method: 'POST', pattern: '/v1/chat', handler: postChat },
];
const match = createRouter(routes);

function found(m: Match): Extract<Match, { kind: 'found' }> {
  assert.equal(m.kind, 'found');
  return m as Extract<Match, { kind: 'found' }>;
}

describe('createRouter()', () => {
  it('createRouter() finds a static route with its pattern', () => {
    const m = found(match('GET', '/health'));
    assert.equal(m.handler, getHealth);
    assert.equal(m.pattern, '/health');
    assert.deepEqual(m.params, {});
  });

  it('createRouter() finds a :param route and captures the segment', () => {
    const m = found(match('GET', '/v1/conversations/7d0b7c1e'));
    assert.equal(m.handler, getConversation);
    assert.equal(m.pattern, '/v1/conversations/:id');
    assert.deepEqual(m.params, { id: '7d0b7c1e' });
  });

  it('createRouter() captures several params', () => {
    const m = found(match('GET', '/v1/conversations/c1/messages/m2'));
    assert.equal(m.handler, getMessage);
    assert.deepEqual(m.params, { id: 'c1', messageId: 'm2' });
  });

  it('createRouter() decodes percent-encoded params', () => {
    assert.deepEqual(found(match('GET', '/v1/conversations/a%20b%2Fc%C3%A9')).params, { id: 'a b/cé' });
  });

  it('createRouter() answers not found for malformed percent-encoding in a param', () => {
    assert.deepEqual(match('GET', '/v1/conversations/%E0%A4%A'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/v1/conversations/%zz'), { kind: 'not-found' });
  });

  it('createRouter() answers not found for an unknown path', () => {
    assert.deepEqual(match('GET', '/nope'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/health/extra'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/'), { kind: 'not-found' });
  });

  it('createRouter() answers not found for an intermediate node that has no route', () => {
    assert.deepEqual(match('GET', '/v1'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/v1/conversations/c1/messages'), { kind: 'not-found' });
  });

  it('createRouter() answers 405 with Allow for a known path', () => {
    assert.deepEqual(match('PUT', '/v1/conversations/c1'), {
      kind: 'method-not-allowed',
      pattern: '/v1/conversations/:id',
      allow: 'DELETE, GET, HEAD, OPTIONS',
      public: false,
    });
  });

  it('createRouter() lists OPTIONS but not HEAD in Allow for a POST-only path', () => {
    assert.deepEqual(match('GET', '/v1/chat'), {
      kind: 'method-not-allowed',
      pattern: '/v1/chat',
      allow: 'OPTIONS, POST',
      public: false,
    });
  });

  it('createRouter() reports a route public only when it says public: true', () => {
    assert.equal(found(match('GET', '/health')).public, true);
    assert.equal(found(match('HEAD', '/health')).public, true);
    assert.equal(found(match('GET', '/v1/conversations/c1')).public, false);
    assert.equal(found(match('POST', '/v1/chat')).public, false);
  });

  it('createRouter() reports a 405 public only when every route on the path is public', () => {
    const mixed = createRouter([
      { method: 'GET', pattern: '/open', handler: getHealth, public: true },
      { method: 'GET', pattern: '/mixed', handler: getHealth, public: true },
      { method: 'POST', pattern: '/mixed', handler: postChat },
    ]);
    assert.deepEqual(mixed('POST', '/open'), {
      kind: 'method-not-allowed',
      pattern: '/open',
      allow: 'GET, HEAD, OPTIONS',
      public: true,
    });
    assert.deepEqual(mixed('PUT', '/mixed'), {
      kind: 'method-not-allowed',
      pattern: '/mixed',
      allow: 'GET, HEAD, OPTIONS, POST',
      public: false,
    });
  });

  it('createRouter() serves HEAD with the GET handler', () => {
    const m = found(match('HEAD', '/v1/conversations/c1'));
    assert.equal(m.handler, getConversation);
  });

  it('createRouter() prefers an explicit HEAD route to the GET one', () => {
    const headHealth = handler('headHealth');
    const m = createRouter([...routes, { method: 'HEAD', pattern: '/health', handler: headHealth }]);
    assert.equal(found(m('HEAD', '/health')).handler, headHealth);
  });

  it('createRouter() matches methods case-sensitively (RFC 9110 §9.1)', () => {
    assert.equal(match('get', '/health').kind, 'method-not-allowed');
  });

  it('createRouter() answers not found for a trailing slash', () => {
    assert.deepEqual(match('GET', '/health/'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/v1/conversations/c1/'), { kind: 'not-found' });
  });

  it("createRouter() answers not found for an empty segment ('//')", () => {
    assert.deepEqual(match('GET', '//health'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/v1//conversations'), { kind: 'not-found' });
    assert.deepEqual(match('GET', '/v1/conversations//messages/m'), { kind: 'not-found' });
  });

  it("createRouter() answers not found for a target that does not start with '/'", () => {
    assert.deepEqual(match('GET', 'xhealth'), { kind: 'not-found' });
    assert.deepEqual(match('OPTIONS', '*'), { kind: 'not-found' });
    assert.deepEqual(match('GET', 'http://example.com/health'), { kind: 'not-found' });
    assert.deepEqual(match('GET', ''), { kind: 'not-found' });
  });

  it('createRouter() does not match a percent-encoded static segment', () => {
    assert.deepEqual(match('GET', '/h%65alth'), { kind: 'not-found' });
  });

  it('createRouter() prefers a static segment to a param', () => {
    const m = found(match('GET', '/v1/conversations/new/draft'));
    assert.equal(m.handler, getNew);
    assert.deepEqual(m.params, {});
  });

  it('createRouter() falls back to a param when the static branch has no route', () => {
    const m = found(match('GET', '/v1/conversations/new/messages/m1'));
    assert.equal(m.handler, getMessage);
    assert.deepEqual(m.params, { id: 'new', messageId: 'm1' });
  });

  it('createRouter() answers not found for a param longer than 1024 characters', () => {
    assert.deepEqual(match('GET', `/v1/conversations/${'a'.repeat(1025)}`), { kind: 'not-found' });
    assert.equal(match('GET', `/v1/conversations/${'a'.repeat(1024)}`).kind, 'found');
  });

  it('createRouter() serves a root route', () => {
    const root = handler('root');
    assert.equal(found(createRouter([{ method: 'GET', pattern: '/', handler: root }])('GET', '/')).handler, root);
  });

  it('createRouter() throws on a duplicate route', () => {
    assert.throws(
      () => createRouter([...routes, { method: 'GET', pattern: '/health', handler: getHealth }]),
      /Duplicate route: GET \/health/,
    );
  });

  it('createRouter() throws on two names for one param position', () => {
    assert.throws(
      () =>
        createRouter([
          ...routes,
          { method: 'PATCH', pattern: '/v1/conversations/:conversationId', handler: getHealth },
        ]),
      /Conflicting parameter names/,
    );
  });

  it('createRouter() never returns params from a branch that did not match', () => {
    const m = createRouter([
      { method: 'GET', pattern: '/a/:x/b', handler: getHealth },
      { method: 'GET', pattern: '/a/static/:y', handler: getNew },
    ]);
    assert.deepEqual(found(m('GET', '/a/static/b')).params, { y: 'b' });
    assert.deepEqual(found(m('GET', '/a/other/b')).params, { x: 'other' });
  });
});
