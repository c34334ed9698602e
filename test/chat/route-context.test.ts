// The caller and the conversation id as the native chat routes read them from a request.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { conversationIdOf, identityOf } from '../../lib/chat/route-context.ts';
import { AppError } from '../../lib/errors.ts';
import type { Context, Identity } from '../../lib/http/types.ts';

const ID: Identity = { kind: 'key', id: 'key:route-context' } as Identity;

function contextWith(fields: { identity?: Identity; id?: string }): Context {
  return { identity: fields.identity, params: fields.id === undefined ? {} : { id: fields.id } } as unknown as Context;
}

describe('route-context', () => {
  it('identityOf() returns the identity auth set', () => {
    assert.equal(identityOf(contextWith({ identity: ID })), ID);
  });

  it('identityOf() without an identity throws 401 UNAUTHORIZED with a Bearer challenge', () => {
    assert.throws(
      () => identityOf(contextWith({})),
      (err: unknown) =>
        err instanceof AppError &&
        err.code === 'UNAUTHORIZED' &&
        err.status === 401 &&
        err.headers?.['WWW-Authenticate'] === 'Bearer',
    );
  });

  it('conversationIdOf() returns a uuid from the path in lower case', () => {
    const id = '0A1B2C3D-0000-4000-8000-00000000ABCD';
    assert.equal(conversationIdOf(contextWith({ id })), id.toLowerCase());
  });

  it('conversationIdOf() answers 404 NOT_FOUND, not 400, for anything that is not a uuid', () => {
    for (const id of [undefined, '', 'abc', '0a1b2c3d-0000-4000-8000-00000000abcd-x', "1' OR '1'='1"]) {
      assert.throws(
        () => conversationIdOf(contextWith({ id })),
        (err: unknown) => err instanceof AppError && err.code === 'NOT_FOUND' && err.status === 404,
        String(id),
      );
    }
  });
});
