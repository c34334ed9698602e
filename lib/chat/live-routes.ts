// Live answers on the native API: resume one (GET …/stream) and stop one (POST …/cancel), owner-scoped.
import type pg from 'pg';
import { ownsConversation } from '../db/answers.ts';
import { AppError } from '../errors.ts';
import { queryParams } from '../http/app.ts';
import type { Route } from '../http/router.ts';
import type { Context } from '../http/types.ts';
import type { Fanout } from './fanout.ts';
import { nativeFrame } from './native.ts';
import type { Resumed, ResumePoint } from './resume.ts';
import { conversationIdOf, identityOf } from './route-context.ts';
import { mapEvents, type TurnEngine } from './turn.ts';

export interface LiveRoutesOptions {
  pool: pg.Pool;
  turns: TurnEngine;
  fanout: Fanout | undefined;
  resume: (owner: string, conversationId: string, point: ResumePoint) => Promise<Resumed>;
}

const LAST_EVENT_ID = /^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}):(\d{1,12})$/i;
const OFFSET = /^\d{1,12}$/;

/** Last-Event-ID (`<messageId>:<offset>` from a delta's id) or `?after=<offset>`; neither: from the start. */
export function resumePoint(ctx: Context): ResumePoint {
  const header = ctx.req.headers['last-event-id'];
  if (typeof header === 'string' && header !== '') {
    const match = LAST_EVENT_ID.exec(header.trim());
    if (match === null) throw new AppError('BAD_REQUEST', { detail: 'Last-Event-ID must be <messageId>:<offset>' });
    return { messageId: (match[1] as string).toLowerCase(), offset: Number(match[2]) };
  }
  const after = queryParams(ctx).get('after');
  if (after === null) return {};
  if (!OFFSET.test(after)) throw new AppError('BAD_REQUEST', { detail: 'after must be a whole number' });
  return { offset: Number(after) };
}

/** GET /v1/conversations/:id/stream and POST /v1/conversations/:id/cancel. */
export function liveRoutes(options: LiveRoutesOptions): Route[] {
  const { pool, turns, fanout, resume } = options;
  return [
    {
      method: 'GET',
      pattern: '/v1/conversations/:id/stream',
      async handler(ctx) {
        const resumed = await resume(identityOf(ctx).id, conversationIdOf(ctx), resumePoint(ctx));
        if (resumed.kind === 'not-found') throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
        // Nothing live: the stored conversation has the whole answer.
        if (resumed.kind === 'not-live') return { kind: 'empty', status: 204 };
        ctx.clearDeadline();
        const { messageId } = resumed.head;
        return { kind: 'sse', events: mapEvents(resumed.events, (e) => nativeFrame(e, ctx.requestId, messageId)) };
      },
    },
    {
      method: 'POST',
      pattern: '/v1/conversations/:id/cancel',
      async handler(ctx) {
        const id = conversationIdOf(ctx);
        if (!(await ownsConversation(pool, identityOf(ctx).id, id))) {
          throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
        }
        turns.cancel(id);
        // Whichever instance runs it stops it; with nothing live anywhere this changes nothing.
        await fanout?.cancel(id);
        return { kind: 'empty', status: 204 };
      },
    },
  ];
}
