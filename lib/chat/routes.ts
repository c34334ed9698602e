// The native API routes: chat, agents, conversations. Every conversation query is scoped by owner.
import type pg from 'pg';
import * as z from 'zod';
import {
  type ConversationPage,
  deleteConversation,
  getConversation,
  listConversations,
  type MessagePageQuery,
} from '../db/conversations.ts';
import { AppError } from '../errors.ts';
import { queryParams } from '../http/app.ts';
import { readJson } from '../http/body.ts';
import { constantJson } from '../http/respond.ts';
import type { Route } from '../http/router.ts';
import type { Context, Reply } from '../http/types.ts';
import { visibleAgents } from './agent-access.ts';
import type { AgentRegistry } from './agents.ts';
import { validationError } from './native.ts';
import { conversationIdOf, identityOf } from './route-context.ts';

export interface ChatRoutesOptions {
  pool: pg.Pool;
  /** POST /v1/chat once the body is read (the native dialect's handler). */
  chat: (ctx: Context, body: unknown) => Promise<Reply>;
  agents: AgentRegistry;
  maxBodyBytes: number;
}

const ListQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().max(200).optional(),
});
// Years PostgreSQL cannot hold (0000) would otherwise reach SQL and fail there with a 500.
const Cursor = z.strictObject({ u: z.iso.datetime().refine((u) => Number(u.slice(0, 4)) >= 1970), i: z.uuid() });
// Unknown parameters are ignored: a client's cache-buster must not turn a read into a 400.
const MessagesQuery = z.object({
  limit: z.coerce.number().int().min(1).max(1000).default(1000),
  before: z.string().max(200).optional(),
  after: z.string().max(200).optional(),
});
// A message cursor names the message at the page's edge; a conversation cursor cannot pass for one.
const MessageCursor = z.strictObject({ m: z.uuid() });

/** Cursors are opaque to clients: base64url of a small JSON object, checked against a schema on the way back. */
function encodeCursor(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

function decodeCursor<T>(cursor: string, schema: z.ZodType<T>): T {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    value = undefined;
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new AppError('BAD_REQUEST', { detail: 'Invalid cursor' });
  return parsed.data;
}

/** `?limit`, `?before`, `?after` of a conversation read, with both cursors decoded to message ids. */
function messagePageQuery(ctx: Context): MessagePageQuery {
  const parsed = MessagesQuery.safeParse(Object.fromEntries(queryParams(ctx)));
  if (!parsed.success) throw validationError(parsed.error, 'query');
  const { limit, before, after } = parsed.data;
  if (before !== undefined && after !== undefined) {
    throw new AppError('BAD_REQUEST', { detail: 'Give before or after, not both' });
  }
  const query: MessagePageQuery = { limit };
  if (before !== undefined) query.before = decodeCursor(before, MessageCursor).m;
  if (after !== undefined) query.after = decodeCursor(after, MessageCursor).m;
  return query;
}

/** The response body: the page, oldest first, with a cursor for each direction that has more (else null). */
function pageBody(page: ConversationPage): Record<string, unknown> {
  const { hasOlder, hasNewer, ...conversation } = page;
  const first = page.messages[0];
  const last = page.messages.at(-1);
  return {
    ...conversation,
    before: hasOlder && first !== undefined ? encodeCursor({ m: first.id }) : null,
    after: hasNewer && last !== undefined ? encodeCursor({ m: last.id }) : null,
  };
}

/** The /v1 routes. */
export function chatRoutes(options: ChatRoutesOptions): Route[] {
  const { pool, chat } = options;
  const agentsReply = constantJson(200, { agents: options.agents.list() });
  // A key limited to some agents sees only those; everyone else gets the one reply built at start.
  function agentsList(ctx: Context): Reply {
    const identity = identityOf(ctx);
    if (identity.policy?.agents === undefined) return agentsReply;
    return { kind: 'json', status: 200, body: { agents: visibleAgents(options.agents, identity) } };
  }
  return [
    {
      method: 'POST',
      pattern: '/v1/chat',
      async handler(ctx) {
        identityOf(ctx);
        const body = await readJson(ctx, { maxBytes: options.maxBodyBytes });
        return chat(ctx, body);
      },
    },
    { method: 'GET', pattern: '/v1/agents', handler: agentsList },
    {
      method: 'GET',
      pattern: '/v1/conversations',
      async handler(ctx) {
        const owner = identityOf(ctx).id;
        const parsed = ListQuery.safeParse(Object.fromEntries(queryParams(ctx)));
        if (!parsed.success) throw validationError(parsed.error, 'query');
        const cursor = parsed.data.cursor === undefined ? undefined : decodeCursor(parsed.data.cursor, Cursor);
        const after = cursor === undefined ? undefined : { updatedAt: cursor.u, id: cursor.i };
        const page = await listConversations(pool, owner, parsed.data.limit, after);
        const next = page.next === undefined ? null : encodeCursor({ u: page.next.updatedAt, i: page.next.id });
        return { kind: 'json', status: 200, body: { conversations: page.items, nextCursor: next } };
      },
    },
    {
      method: 'GET',
      pattern: '/v1/conversations/:id',
      async handler(ctx) {
        const read = await getConversation(pool, identityOf(ctx).id, conversationIdOf(ctx), messagePageQuery(ctx));
        if (read.kind === 'not-found') throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
        if (read.kind === 'unknown-anchor') throw new AppError('BAD_REQUEST', { detail: 'Invalid cursor' });
        return { kind: 'json', status: 200, body: pageBody(read.conversation) };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/conversations/:id',
      async handler(ctx) {
        const deleted = await deleteConversation(pool, identityOf(ctx).id, conversationIdOf(ctx));
        if (!deleted) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
        return { kind: 'empty', status: 204 };
      },
    },
  ];
}
