// The native API routes: chat, agents, conversations. Every conversation query is scoped by owner.
import type pg from 'pg';
import * as z from 'zod';
import { deleteConversation, getConversation, listConversations } from '../db/conversations.ts';
import { AppError } from '../errors.ts';
import { queryParams } from '../http/app.ts';
import { readJson } from '../http/body.ts';
import { constantJson } from '../http/respond.ts';
import type { Route } from '../http/router.ts';
import type { Context, Identity } from '../http/types.ts';
import type { AgentRegistry } from './agents.ts';
import { type ChatService, validationError } from './service.ts';

export interface ChatRoutesOptions {
  pool: pg.Pool;
  chat: ChatService;
  agents: AgentRegistry;
  maxBodyBytes: number;
}

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;
const ListQuery = z.strictObject({
  limit: z.coerce.number().int().min(1).max(100).default(20),
  cursor: z.string().max(200).optional(),
});
// Years PostgreSQL cannot hold (0000) would otherwise reach SQL and fail there with a 500.
const Cursor = z.strictObject({ u: z.iso.datetime().refine((u) => Number(u.slice(0, 4)) >= 1970), i: z.uuid() });

function identityOf(ctx: Context): Identity {
  // The auth middleware guarantees an identity on /v1/*; this guards against a wiring mistake.
  if (ctx.identity === undefined) throw new AppError('UNAUTHORIZED', { headers: { 'WWW-Authenticate': 'Bearer' } });
  return ctx.identity;
}

/** The conversation id from the path; anything that is not a uuid cannot name one (404, not 400). */
function conversationId(ctx: Context): string {
  const id = ctx.params['id'] ?? '';
  if (!UUID.test(id)) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
  return id.toLowerCase();
}

function encodeCursor(next: { updatedAt: string; id: string }): string {
  return Buffer.from(JSON.stringify({ u: next.updatedAt, i: next.id })).toString('base64url');
}

function decodeCursor(cursor: string): { updatedAt: string; id: string } {
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    value = undefined;
  }
  const parsed = Cursor.safeParse(value);
  if (!parsed.success) throw new AppError('BAD_REQUEST', { detail: 'Invalid cursor' });
  return { updatedAt: parsed.data.u, id: parsed.data.i };
}

/** The /v1 routes. */
export function chatRoutes(options: ChatRoutesOptions): Route[] {
  const { pool, chat } = options;
  const agentsReply = constantJson(200, { agents: options.agents.list() });
  return [
    {
      method: 'POST',
      pattern: '/v1/chat',
      async handler(ctx) {
        identityOf(ctx);
        const body = await readJson(ctx, { maxBytes: options.maxBodyBytes });
        return chat.handle(ctx, body);
      },
    },
    { method: 'GET', pattern: '/v1/agents', handler: () => agentsReply },
    {
      method: 'GET',
      pattern: '/v1/conversations',
      async handler(ctx) {
        const owner = identityOf(ctx).id;
        const parsed = ListQuery.safeParse(Object.fromEntries(queryParams(ctx)));
        if (!parsed.success) throw validationError(parsed.error);
        const after = parsed.data.cursor === undefined ? undefined : decodeCursor(parsed.data.cursor);
        const page = await listConversations(pool, owner, parsed.data.limit, after);
        return {
          kind: 'json',
          status: 200,
          body: { conversations: page.items, nextCursor: page.next === undefined ? null : encodeCursor(page.next) },
        };
      },
    },
    {
      method: 'GET',
      pattern: '/v1/conversations/:id',
      async handler(ctx) {
        const found = await getConversation(pool, identityOf(ctx).id, conversationId(ctx));
        if (found === undefined) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
        return { kind: 'json', status: 200, body: found };
      },
    },
    {
      method: 'DELETE',
      pattern: '/v1/conversations/:id',
      async handler(ctx) {
        const deleted = await deleteConversation(pool, identityOf(ctx).id, conversationId(ctx));
        if (!deleted) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
        return { kind: 'empty', status: 204 };
      },
    },
  ];
}
