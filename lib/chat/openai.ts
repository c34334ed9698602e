// The OpenAI dialect: POST /v1/chat/completions and GET /v1/models, so every OpenAI client (the
// openai SDKs, the AI SDK's openai-compatible provider, LangChain, Open WebUI) can use this server.
// Agents are the models; nothing is stored (the API is stateless); errors take OpenAI's shape.
import type { AppError } from '../errors.ts';
import { readJson } from '../http/body.ts';
import { constantJson, sendJson } from '../http/respond.ts';
import type { Route } from '../http/router.ts';
import type { Context, Identity, Reply, SseEvent } from '../http/types.ts';
import { agentFor, visibleAgents } from './agent-access.ts';
import type { AgentRegistry, AgentSummary } from './agents.ts';
import { checkSystemMessages, OpenAiRequestError, parseCompletionRequest } from './openai-request.ts';
import { collect, mapEvents, type Turn, type TurnEngine, type TurnEvent } from './turn.ts';
import type { UpstreamUsage } from './upstream.ts';

export const COMPLETIONS_ROUTE = '/v1/chat/completions';
export const MODELS_ROUTE = '/v1/models';
/** The routes whose errors are written in OpenAI's shape. */
export const OPENAI_ROUTES: ReadonlySet<string> = new Set([COMPLETIONS_ROUTE, MODELS_ROUTE]);

export interface OpenAiRoutesOptions {
  turns: TurnEngine;
  agents: AgentRegistry;
  /** Body cap of the completions route (it carries a whole history). */
  maxBodyBytes: number;
  /** Characters of all message text one request may carry. */
  maxInputChars: number;
  /** `owned_by` of every model listed. */
  ownedBy: string;
  /** `created` of every model listed: when this server started, in unix seconds. */
  createdSeconds: number;
}

/** GET /v1/models and POST /v1/chat/completions. */
export function openAiRoutes(options: OpenAiRoutesOptions): Route[] {
  const { turns, agents } = options;
  const model = (a: AgentSummary) => ({
    id: a.id,
    object: 'model',
    created: options.createdSeconds,
    owned_by: options.ownedBy,
  });
  const modelsReply = constantJson(200, { object: 'list', data: agents.list().map(model) });
  // A key limited to some agents sees only those; everyone else gets the one reply built at start.
  function models(ctx: Context): Reply {
    const identity = identityOf(ctx);
    if (identity.policy?.agents === undefined) return modelsReply;
    return { kind: 'json', status: 200, body: { object: 'list', data: visibleAgents(agents, identity).map(model) } };
  }
  const limits = { maxInputChars: options.maxInputChars };

  async function completions(ctx: Context): Promise<Reply> {
    const identity = identityOf(ctx);
    const request = parseCompletionRequest(await readJson(ctx, { maxBytes: options.maxBodyBytes }), limits);
    const agent = agentFor(agents, identity, request.model);
    if (typeof agent === 'string') {
      const message = `The model '${request.model}' does not exist or you do not have access to it`;
      throw new OpenAiRequestError(message, 'model_not_found', 'model', 'NOT_FOUND');
    }
    checkSystemMessages(request, agent);
    // An answer may take longer than the request deadline; the upstream timeouts bound it.
    ctx.clearDeadline();
    const turn = await turns.start({
      identity,
      requestId: ctx.requestId,
      signal: ctx.signal,
      agent,
      input: { kind: 'stateless', messages: request.messages },
      sampling: request.sampling,
    });
    if (request.stream) return { kind: 'sse', events: chunks(ctx, turn, request.includeUsage) };
    return completion(ctx, turn);
  }

  return [
    { method: 'GET', pattern: MODELS_ROUTE, handler: models },
    { method: 'POST', pattern: COMPLETIONS_ROUTE, handler: completions },
  ];
}

function identityOf(ctx: Context): Identity {
  // The auth middleware guarantees an identity on /v1/*; this guards against a wiring mistake.
  if (ctx.identity === undefined)
    throw new OpenAiRequestError('Missing API key', 'invalid_api_key', null, 'UNAUTHORIZED');
  return ctx.identity;
}

/** The turn as `chat.completion.chunk` frames, OpenAI's usage chunk when asked, then `[DONE]`. */
function chunks(ctx: Context, turn: Turn, includeUsage: boolean): AsyncIterable<SseEvent> {
  const { head } = turn;
  // Built once per stream: every chunk shares its id, object, created and model.
  const prefix =
    `{"id":"chatcmpl-${head.messageId.replaceAll('-', '')}","object":"chat.completion.chunk",` +
    `"created":${head.createdSeconds},"model":${JSON.stringify(head.agent)}`;
  const choice = (delta: string, finish: string | null): SseEvent => ({
    data:
      `${prefix},"choices":[{"index":0,"delta":${delta},"logprobs":null,` +
      `"finish_reason":${JSON.stringify(finish)}}]}`,
  });
  return mapEvents(turn.events, (event: TurnEvent): SseEvent | SseEvent[] => {
    switch (event.type) {
      case 'started':
        return choice('{"role":"assistant","content":""}', null);
      case 'delta':
        return choice(`{"content":${JSON.stringify(event.text)}}`, null);
      case 'finished': {
        countTokens(ctx, event.usage);
        const frames = [choice('{}', event.finishReason ?? 'stop')];
        if (includeUsage) frames.push({ data: `${prefix},"choices":[],"usage":${usageJson(event.usage)}}` });
        frames.push({ data: '[DONE]' });
        return frames;
      }
      case 'failed':
        // What the SDKs raise as an API error; then the stream closes.
        return { data: JSON.stringify(openAiErrorBody(event.error, ctx.requestId)) };
    }
  });
}

/** The whole answer as one `chat.completion` object. */
async function completion(ctx: Context, turn: Turn): Promise<Reply> {
  const answer = await collect(turn);
  countTokens(ctx, answer.usage);
  const { head } = answer;
  return {
    kind: 'json',
    status: 200,
    body: {
      id: `chatcmpl-${head.messageId.replaceAll('-', '')}`,
      object: 'chat.completion',
      created: head.createdSeconds,
      model: head.agent,
      choices: [
        {
          index: 0,
          message: { role: 'assistant', content: answer.text, refusal: null },
          logprobs: null,
          finish_reason: answer.finishReason ?? 'stop',
        },
      ],
      usage: JSON.parse(usageJson(answer.usage)) as object,
    },
  };
}

function usageJson(usage: UpstreamUsage | undefined): string {
  const prompt = usage?.promptTokens ?? 0;
  const completionTokens = usage?.completionTokens ?? 0;
  return (
    `{"prompt_tokens":${prompt},"completion_tokens":${completionTokens},` +
    `"total_tokens":${prompt + completionTokens}}`
  );
}

/** Tokens of the call, for the access log (the API is stateless: this is its record). */
function countTokens(ctx: Context, usage: UpstreamUsage | undefined): void {
  ctx.usage = usage;
}

// Our codes as OpenAI's error `type` and `code`, for the statuses its clients branch on.
const OPENAI_CODES: Partial<Record<AppError['code'], { type: string; code: string }>> = {
  UNAUTHORIZED: { type: 'invalid_request_error', code: 'invalid_api_key' },
  INVALID_TOKEN: { type: 'invalid_request_error', code: 'invalid_api_key' },
  RATE_LIMITED: { type: 'requests', code: 'rate_limit_exceeded' },
  AUTH_THROTTLED: { type: 'requests', code: 'rate_limit_exceeded' },
  TOO_MANY_STREAMS: { type: 'requests', code: 'rate_limit_exceeded' },
  BUDGET_EXCEEDED: { type: 'insufficient_quota', code: 'insufficient_quota' },
  BODY_TOO_LARGE: { type: 'invalid_request_error', code: 'request_too_large' },
  UNSUPPORTED_MEDIA_TYPE: { type: 'invalid_request_error', code: 'invalid_content_type' },
  INVALID_JSON: { type: 'invalid_request_error', code: 'invalid_json' },
  NOT_FOUND: { type: 'invalid_request_error', code: 'not_found' },
};

/** OpenAI's error object for any of our errors: client errors keep their detail, server errors only a title. */
export function openAiErrorBody(err: AppError, requestId: string) {
  if (err instanceof OpenAiRequestError) {
    return {
      error: {
        message: err.detail ?? err.title,
        type: 'invalid_request_error',
        param: err.param,
        code: err.openAiCode,
      },
    };
  }
  const mapped = OPENAI_CODES[err.code];
  const type = mapped?.type ?? (err.status >= 500 ? 'server_error' : 'invalid_request_error');
  const message = err.expose ? (err.detail ?? err.title) : `${err.title} (request id ${requestId})`;
  return { error: { message, type, param: null, code: mapped?.code ?? err.code.toLowerCase() } };
}

/** Writes an error on an OpenAI route in OpenAI's shape, with the error's own headers (Retry-After …). */
export function sendOpenAiError(ctx: Context, err: AppError): void {
  sendJson(ctx, err.status, openAiErrorBody(err, ctx.requestId), err.headers);
}
