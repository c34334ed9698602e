// What the native chat routes read from every request: the caller's identity and the conversation id.
import { AppError } from '../errors.ts';
import type { Context, Identity } from '../http/types.ts';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/** The caller; auth guarantees one on every route not marked public, so a miss is a wiring mistake (401). */
export function identityOf(ctx: Context): Identity {
  if (ctx.identity === undefined) throw new AppError('UNAUTHORIZED', { headers: { 'WWW-Authenticate': 'Bearer' } });
  return ctx.identity;
}

/** The conversation id from the path, lower case; anything that is not a uuid cannot name one (404, not 400). */
export function conversationIdOf(ctx: Context): string {
  const id = ctx.params['id'] ?? '';
  if (!UUID.test(id)) throw new AppError('NOT_FOUND', { detail: 'No such conversation' });
  return id.toLowerCase();
}
