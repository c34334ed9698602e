// The canary session as data: every request the canary test sends is one entry of a table, so a
// new route joins the leak search with one line. What reaches the server here is, or carries, the
// canary (the server's every secret) or a private marker that must never be logged.
import { randomBytes, randomUUID } from 'node:crypto';
import { CANARY } from './config.ts';
import { type Behaviour, UPSTREAM_SECRET_DETAIL } from './fake-upstream.ts';
import { bearer, TEST_JWT_SECRET, unsignedJwt } from './keys.ts';

/** A user's private words: the server stores and forwards them, but never logs them. */
export const PRIVATE_MARKER = `private-words-${randomBytes(6).toString('hex')}`;

// The conversation title is the first 80 characters: keep the canary and the marker past it.
const PREAMBLE = 'Tell me about canaries in coal mines, briefly and politely, in one short paragraph. '.repeat(2);

/** A chat message with the canary and the private marker in it. */
export const CANARY_MESSAGE = `${PREAMBLE}${CANARY} ${PRIVATE_MARKER}`;

/** One request of the session; everything that comes back for it is searched. */
export interface Probe {
  /** Names the probe in a failure message. */
  name: string;
  /** GET unless given. */
  method?: string;
  /** `/` unless given. */
  path?: string;
  headers?: Record<string, string>;
  body?: string;
  /** Bytes sent as they are, for requests a client library would refuse to send. */
  raw?: string;
  /** Queued on the fake upstream just before the request. */
  upstream?: Behaviour[];
}

/** What a session has made before the table runs. */
export interface Credentials {
  /** An API key of a fresh identity. */
  key: string;
  /** A JWT signed with the configured secret. */
  jwt: string;
  /** A JWT signed with another secret. */
  forged: string;
  /** A conversation without the canary in it, to read and delete (it echoes its own messages). */
  conversationId: string;
}

/** The whole session, in order: routes, bad credentials, client errors, upstream failures, raw protocol errors. */
export function probes(c: Credentials): Probe[] {
  return [...routeProbes(c), ...credentialProbes(c), ...clientErrorProbes(c), ...upstreamProbes(c), ...rawProbes()];
}

function chatProbe(c: Credentials, name: string, body: string, upstream?: Behaviour[]): Probe {
  const headers = { ...bearer(c.key), 'content-type': 'application/json' };
  return {
    name: `POST /v1/chat ${name}`,
    method: 'POST',
    path: '/v1/chat',
    headers,
    body,
    ...(upstream && { upstream }),
  };
}

function completionsProbe(c: Credentials, name: string, stream: boolean): Probe {
  const body = { model: 'default', stream, messages: [{ role: 'user', content: CANARY_MESSAGE }] };
  return {
    name: `POST /v1/chat/completions ${name}`,
    method: 'POST',
    path: '/v1/chat/completions',
    headers: { ...bearer(c.key), 'content-type': 'application/json' },
    body: JSON.stringify(body),
  };
}

/** Every route with a valid caller: one entry per route. */
function routeProbes(c: Credentials): Probe[] {
  const auth = bearer(c.key);
  const conversation = `/v1/conversations/${c.conversationId}`;
  return [
    ...['/health', '/health/live', '/', '/metrics'].map((path) => ({ name: `GET ${path}`, path })),
    { name: 'HEAD /health/live', method: 'HEAD', path: '/health/live' },
    { name: 'DELETE /health/live', method: 'DELETE', path: '/health/live' },
    { name: 'GET /v1/agents', path: '/v1/agents', headers: auth },
    chatProbe(c, 'streamed, the canary in the message', JSON.stringify({ message: CANARY_MESSAGE })),
    chatProbe(c, 'buffered, the canary in the message', JSON.stringify({ message: CANARY_MESSAGE, stream: false })),
    completionsProbe(c, 'streamed, the canary in the message', true),
    completionsProbe(c, 'buffered, the canary in the message', false),
    { name: 'GET /v1/models', path: '/v1/models', headers: auth },
    {
      name: 'POST /v1/ai-sdk/chat, the canary in the message',
      method: 'POST',
      path: '/v1/ai-sdk/chat',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({
        id: 'canary-chat',
        trigger: 'submit-message',
        messages: [{ id: 'u1', role: 'user', parts: [{ type: 'text', text: CANARY_MESSAGE }] }],
      }),
    },
    {
      name: 'POST /v1/ai-sdk/chat, without the canary',
      method: 'POST',
      path: '/v1/ai-sdk/chat',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({
        id: 'plain-chat',
        trigger: 'submit-message',
        messages: [{ id: 'u1', role: 'user', parts: [{ type: 'text', text: 'hello' }] }],
      }),
    },
    // A chat's own messages are the caller's to read: the one without the canary.
    { name: 'GET /v1/ai-sdk/chat/:id/stream', path: '/v1/ai-sdk/chat/plain-chat/stream', headers: auth },
    { name: 'GET /v1/ai-sdk/chat/:id/messages', path: '/v1/ai-sdk/chat/plain-chat/messages', headers: auth },
    { name: 'GET /v1/conversations/:id/stream', path: `${conversation}/stream`, headers: auth },
    { name: 'POST /v1/conversations/:id/cancel', method: 'POST', path: `${conversation}/cancel`, headers: auth },
    { name: 'GET /v1/conversations/:id', path: conversation, headers: auth },
    { name: 'GET /v1/conversations?limit=1', path: '/v1/conversations?limit=1', headers: auth },
    { name: 'DELETE /v1/conversations/:id', method: 'DELETE', path: conversation, headers: auth },
    {
      name: 'OPTIONS /v1/conversations from another origin',
      method: 'OPTIONS',
      path: '/v1/conversations',
      headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' },
    },
  ];
}

/** Missing, wrong and forged credentials, the canary among them. */
function credentialProbes(c: Credentials): Probe[] {
  const tokens = {
    'no token': undefined,
    'the canary': CANARY,
    'a key-shaped canary': `csk_${CANARY}`,
    'the JWT secret': TEST_JWT_SECRET,
    'an unsigned JWT': unsignedJwt(),
    'a JWT signed with another secret': c.forged,
    'a valid JWT': c.jwt,
  };
  return [
    ...Object.entries(tokens).map(([what, token]) => ({
      name: `GET /v1/agents with ${what}`,
      path: '/v1/agents',
      ...(token && { headers: bearer(token) }),
    })),
    { name: 'GET /v1/conversations with no token', path: '/v1/conversations' },
    { name: 'GET /metrics with the canary as token', path: '/metrics', headers: bearer(CANARY) },
    {
      name: 'GET /v1/agents with Basic credentials',
      path: '/v1/agents',
      headers: { authorization: `Basic ${Buffer.from(`admin:${CANARY}`).toString('base64')}` },
    },
  ];
}

/** Client errors carrying the canary in every field a handler might echo. */
function clientErrorProbes(c: Credentials): Probe[] {
  const auth = bearer(c.key);
  return [
    { name: 'GET /v1/conversations, canary cursor', path: `/v1/conversations?cursor=${CANARY}`, headers: auth },
    { name: 'GET /v1/conversations/<canary>', path: `/v1/conversations/${CANARY}`, headers: auth },
    { name: 'DELETE unknown conversation', method: 'DELETE', path: `/v1/conversations/${randomUUID()}`, headers: auth },
    chatProbe(c, 'malformed JSON', `{"message": "${CANARY}`),
    chatProbe(c, 'unknown field', JSON.stringify({ message: 'x', apiKey: CANARY })),
    chatProbe(c, 'bad conversationId', JSON.stringify({ message: 'x', conversationId: CANARY })),
    chatProbe(c, 'unknown agent', JSON.stringify({ message: 'x', agent: CANARY })),
    chatProbe(c, 'message too long', JSON.stringify({ message: CANARY.repeat(400) })),
    chatProbe(c, 'prototype keys', `{"${CANARY}": {"__proto__": "${CANARY}"}}`),
    {
      name: 'POST /v1/chat as text',
      method: 'POST',
      path: '/v1/chat',
      headers: { ...auth, 'content-type': `text/${CANARY}` },
      body: CANARY,
    },
  ];
}

/** Upstream failures, one of them an upstream that echoes our key back in its error text. */
function upstreamProbes(c: Credentials): Probe[] {
  const echoed = {
    error: {
      message: `Incorrect API key provided: ${CANARY} (${UPSTREAM_SECRET_DETAIL})`,
      type: 'invalid_request_error',
      code: 'invalid_api_key',
    },
  };
  const fails = JSON.stringify({ message: 'fails' });
  return [
    chatProbe(c, 'upstream 401 echoing the key', fails, [{ kind: 'status', status: 401, body: echoed }]),
    chatProbe(c, 'upstream 500', fails, [{ kind: 'status', status: 500 }]),
    chatProbe(c, 'upstream 429', fails, [{ kind: 'status', status: 429, retryAfter: '3' }]),
    chatProbe(c, 'upstream reset', fails, [{ kind: 'reset', afterChunks: 1 }]),
    chatProbe(c, 'upstream invalid SSE', fails, [{ kind: 'invalid-sse' }]),
    chatProbe(c, 'upstream stalls', JSON.stringify({ message: CANARY_MESSAGE }), [{ kind: 'stall', afterChunks: 1 }]),
  ];
}

/** Requests the parser refuses: answered outside the middleware chain. */
function rawProbes(): Probe[] {
  return [
    { name: 'oversized header', raw: `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${CANARY.repeat(600)}\r\n\r\n` },
    {
      name: 'Content-Length with Transfer-Encoding',
      raw: `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n${CANARY}`,
    },
  ];
}
