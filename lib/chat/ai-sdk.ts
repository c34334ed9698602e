// The AI SDK's chat protocol (`useChat` with DefaultChatTransport): POST /v1/ai-sdk/chat answered
// as the UI message stream v1, GET …/:id/stream to resume, GET …/:id/messages for the page's
// first state. The client's chat id names one of the caller's conversations; only the last user
// message's text is taken from the body: the history is the server's own.
import type pg from 'pg';
import * as z from 'zod';
import { findConversationByClientId } from '../db/answers.ts';
import { getConversation } from '../db/conversations.ts';
import { AppError } from '../errors.ts';
import { readJson } from '../http/body.ts';
import type { Route } from '../http/router.ts';
import type { Context, Reply, SseEvent } from '../http/types.ts';
import { agentFor, NO_SUCH_AGENT } from './agent-access.ts';
import type { AgentRegistry } from './agents.ts';
import { validationError } from './native.ts';
import type { Resumed, ResumePoint } from './resume.ts';
import { identityOf } from './route-context.ts';
import { mapEvents, type TurnEngine, type TurnEvent } from './turn.ts';

export interface AiSdkRoutesOptions {
  pool: pg.Pool;
  turns: TurnEngine;
  agents: AgentRegistry;
  maxBodyBytes: number;
  maxMessageChars: number;
  /** `finish`: the answer outlives its client; `abort`: the client leaving stops it. */
  onDisconnect: 'finish' | 'abort';
  resume: (owner: string, conversationId: string, point: ResumePoint) => Promise<Resumed>;
}

export const AI_SDK_CHAT_ROUTE = '/v1/ai-sdk/chat';
const CHAT_ID = /^[A-Za-z0-9_-]{1,128}$/;
const STREAM_HEADERS = Object.freeze({ 'x-vercel-ai-ui-message-stream': 'v1' });

function bodySchema(maxMessageChars: number) {
  const part = z.looseObject({ type: z.string().max(64), text: z.string().max(maxMessageChars).optional() });
  const message = z.looseObject({
    id: z.string().max(256),
    role: z.enum(['system', 'user', 'assistant']),
    parts: z.array(part).max(1000),
  });
  return z.strictObject({
    id: z.string().regex(CHAT_ID, 'must be 1-128 characters of A-Z a-z 0-9 _ -'),
    messages: z.array(message).min(1).max(10_000),
    trigger: z.enum(['submit-message', 'regenerate-message']),
    messageId: z.string().max(256).optional(),
    agent: z.string().min(1).max(64).optional(),
  });
}

function chatId(ctx: Context): string {
  const id = ctx.params['id'] ?? '';
  if (!CHAT_ID.test(id)) throw new AppError('NOT_FOUND', { detail: 'No such chat' });
  return id;
}

/** The text parts of the last user message, which is all of the body this server believes. */
function lastUserText(
  messages: Array<{ role: string; parts: Array<{ type: string; text?: string | undefined }> }>,
): string {
  const last = messages.findLast((m) => m.role === 'user');
  const text = (last?.parts ?? [])
    .flatMap((p) => (p.type === 'text' && p.text !== undefined ? [p.text] : []))
    .join('\n');
  if (text.trim() === '') {
    throw new AppError('VALIDATION_FAILED', {
      detail: 'The last user message has no text',
      extra: { issues: [{ path: 'messages', code: 'no_text', message: 'No text part in the last user message' }] },
    });
  }
  if (text.includes('\u0000'))
    throw new AppError('VALIDATION_FAILED', { detail: 'Text must not contain NUL characters' });
  return text;
}

/** POST /v1/ai-sdk/chat, GET /v1/ai-sdk/chat/:id/stream and GET /v1/ai-sdk/chat/:id/messages. */
export function aiSdkRoutes(options: AiSdkRoutesOptions): Route[] {
  const { pool, turns, agents } = options;
  const schema = bodySchema(options.maxMessageChars);

  async function chat(ctx: Context): Promise<Reply> {
    const identity = identityOf(ctx);
    const parsed = schema.safeParse(await readJson(ctx, { maxBytes: options.maxBodyBytes }));
    if (!parsed.success) throw validationError(parsed.error);
    const body = parsed.data;
    const agent = agentFor(agents, identity, body.agent);
    if (agent === 'unknown') throw new AppError('VALIDATION_FAILED', { detail: 'Unknown agent' });
    if (agent === 'forbidden') throw NO_SUCH_AGENT;
    const conversationId = await findConversationByClientId(pool, identity.id, body.id);
    const regenerate = body.trigger === 'regenerate-message';
    if (regenerate && conversationId === undefined) throw new AppError('NOT_FOUND', { detail: 'No such chat' });
    // A regenerated answer replaces the last one: stop it first if it is still running here.
    if (regenerate && conversationId !== undefined) turns.cancel(conversationId);
    ctx.clearDeadline();
    const turn = await turns.start({
      identity,
      requestId: ctx.requestId,
      signal: options.onDisconnect === 'abort' ? ctx.signal : undefined,
      agent,
      input: regenerate
        ? { kind: 'regenerate', conversationId: conversationId as string }
        : {
            kind: 'stored',
            message: lastUserText(body.messages),
            agentNamed: body.agent !== undefined,
            clientId: body.id,
            ...(conversationId === undefined ? {} : { conversationId }),
          },
    });
    return uiStream(ctx, turn.events);
  }

  async function stream(ctx: Context): Promise<Reply> {
    const owner = identityOf(ctx).id;
    const conversationId = await findConversationByClientId(pool, owner, chatId(ctx));
    // useChat({ resume: true }) asks on every page load: a chat never started simply has nothing live.
    if (conversationId === undefined) return { kind: 'empty', status: 204 };
    const resumed = await options.resume(owner, conversationId, {});
    if (resumed.kind !== 'live') return { kind: 'empty', status: 204 };
    ctx.clearDeadline();
    return uiStream(ctx, resumed.events);
  }

  async function messages(ctx: Context): Promise<Reply> {
    const owner = identityOf(ctx).id;
    const conversationId = await findConversationByClientId(pool, owner, chatId(ctx));
    const read =
      conversationId === undefined ? undefined : await getConversation(pool, owner, conversationId, { limit: 1000 });
    const stored = read?.kind === 'found' ? read.conversation.messages : [];
    const list = stored.map((m) => ({
      id: m.id,
      role: m.role,
      parts: m.content === '' ? [] : [{ type: 'text', text: m.content, state: 'done' }],
      metadata: { status: m.status, conversationId },
    }));
    return { kind: 'json', status: 200, body: list };
  }

  return [
    { method: 'POST', pattern: AI_SDK_CHAT_ROUTE, handler: chat },
    { method: 'GET', pattern: '/v1/ai-sdk/chat/:id/stream', handler: stream },
    { method: 'GET', pattern: '/v1/ai-sdk/chat/:id/messages', handler: messages },
  ];
}

// OpenAI's finish reasons as the UI stream's enum (hyphens, and `other` for the rest).
const FINISH_REASONS: Record<string, string> = {
  stop: 'stop',
  length: 'length',
  content_filter: 'content-filter',
  tool_calls: 'tool-calls',
  function_call: 'tool-calls',
};

/** Turn events as UI message stream v1 chunks: start, text-start/delta/end, finish or error, [DONE]. */
function uiStream(ctx: Context, events: AsyncIterable<TurnEvent>): Reply {
  let textOpen = false;
  const frames = mapEvents(events, (event): SseEvent | SseEvent[] => {
    switch (event.type) {
      case 'started': {
        const { messageId, conversationId } = event.head;
        return { data: { type: 'start', messageId, messageMetadata: { conversationId } } };
      }
      case 'delta': {
        const delta: SseEvent = { data: { type: 'text-delta', id: 'text-0', delta: event.text } };
        if (textOpen) return delta;
        textOpen = true;
        return [{ data: { type: 'text-start', id: 'text-0' } }, delta];
      }
      case 'finished': {
        ctx.usage = event.usage;
        const finishReason = FINISH_REASONS[event.finishReason ?? 'stop'] ?? 'other';
        return [...closeText(), { data: { type: 'finish', finishReason } }, { data: '[DONE]' }];
      }
      case 'failed':
        // A code only: the client shows it, and nothing of the upstream's words reaches it.
        return [...closeText(), { data: { type: 'error', errorText: event.error.code } }, { data: '[DONE]' }];
    }
  });
  function closeText(): SseEvent[] {
    if (!textOpen) return [];
    textOpen = false;
    return [{ data: { type: 'text-end', id: 'text-0' } }];
  }
  return { kind: 'sse', events: frames, headers: { ...STREAM_HEADERS } };
}
