// The native dialect of POST /v1/chat: a message in a stored conversation, answered as our own
// SSE events (start, delta, done, error) or as one JSON object with `"stream": false`.
import * as z from 'zod';
import { AppError } from '../errors.ts';
import type { Context, Reply, SseEvent } from '../http/types.ts';
import { agentFor, NO_SUCH_AGENT } from './agent-access.ts';
import type { AgentRegistry } from './agents.ts';
import { identityOf } from './route-context.ts';
import { collect, mapEvents, type TurnEngine, type TurnEvent } from './turn.ts';

/** Validates the body strictly: clients choose an agent and nothing else about the model. */
export function chatRequestSchema(maxMessageChars: number) {
  return z.strictObject({
    // PostgreSQL text cannot hold NUL (22021): refuse it here instead of failing the insert with a 500.
    message: z
      .string()
      .min(1)
      .max(maxMessageChars)
      .refine((m) => !m.includes('\u0000'), 'Must not contain NUL characters'),
    conversationId: z.uuid().optional(),
    agent: z.string().min(1).max(64).optional(),
    stream: z.boolean().default(true),
  });
}

/** Maps zod issues to path/code/message only (never the input, never regex internals). */
export function validationError(error: z.ZodError, where: 'body' | 'query' = 'body'): AppError {
  const issues = error.issues.slice(0, 20).map((i) => ({ path: i.path.join('.'), code: i.code, message: i.message }));
  const detail = where === 'body' ? 'The request body is invalid' : 'The query parameters are invalid';
  return new AppError('VALIDATION_FAILED', { detail, extra: { issues } });
}

const UNKNOWN_AGENT = new AppError('VALIDATION_FAILED', {
  detail: 'Unknown agent',
  extra: { issues: [{ path: 'agent', code: 'unknown_agent', message: 'No such agent' }] },
});

export interface NativeChatOptions {
  turns: TurnEngine;
  agents: AgentRegistry;
  maxMessageChars: number;
  /** `finish`: the answer outlives its client; `abort`: the client leaving stops it. */
  onDisconnect: 'finish' | 'abort';
}

/** The POST /v1/chat handler body: validate, start a stored turn, answer as SSE or JSON. */
export function nativeChat(options: NativeChatOptions): (ctx: Context, body: unknown) => Promise<Reply> {
  const schema = chatRequestSchema(options.maxMessageChars);
  const { turns, agents } = options;
  return async function handleChat(ctx, body) {
    const parsed = schema.safeParse(body);
    if (!parsed.success) throw validationError(parsed.error);
    const input = parsed.data;
    const identity = identityOf(ctx);
    const agent = agentFor(agents, identity, input.agent);
    if (agent === 'unknown') throw UNKNOWN_AGENT;
    if (agent === 'forbidden') throw NO_SUCH_AGENT;
    // An answer may take longer than the request deadline; the upstream timeouts bound it.
    ctx.clearDeadline();
    const turn = await turns.start({
      identity,
      requestId: ctx.requestId,
      signal: options.onDisconnect === 'abort' ? ctx.signal : undefined,
      agent,
      input: {
        kind: 'stored',
        message: input.message,
        agentNamed: input.agent !== undefined,
        ...(input.conversationId === undefined ? {} : { conversationId: input.conversationId }),
      },
    });
    if (input.stream) {
      const { messageId } = turn.head;
      const events = mapEvents(turn.events, (e) => {
        if (e.type === 'finished') ctx.usage = e.usage;
        return nativeFrame(e, ctx.requestId, messageId);
      });
      return { kind: 'sse', events };
    }
    const answer = await collect(turn);
    ctx.usage = answer.usage;
    const { conversationId, messageId, agent: agentId } = answer.head;
    const { text, finishReason, usage } = answer;
    return {
      kind: 'json',
      status: 200,
      body: { conversationId, messageId, agent: agentId, text, finishReason, usage: usage ?? null },
    };
  };
}

/**
 * One turn event as our SSE frame; a delta's id is `<messageId>:<offset>`, what a client sends back
 * as Last-Event-ID to resume after it. A failure carries its code and the request id, nothing else.
 */
export function nativeFrame(event: TurnEvent, requestId: string, messageId: string): SseEvent {
  switch (event.type) {
    case 'started': {
      const { conversationId, messageId, agent } = event.head;
      return { event: 'start', data: { conversationId, messageId, agent } };
    }
    case 'delta':
      return { event: 'delta', id: `${messageId}:${event.offset}`, data: { text: event.text } };
    case 'finished':
      return { event: 'done', data: { finishReason: event.finishReason, usage: event.usage ?? null } };
    case 'failed':
      return { event: 'error', data: { code: event.error.code, requestId } };
  }
}
