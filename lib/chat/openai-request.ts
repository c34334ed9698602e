// The Chat Completions request as OpenAI's API reference defines it, narrowed to what this server
// serves: text in, text out. A field we do not serve is refused by name, never silently ignored.
import * as z from 'zod';
import { AppError, type ErrorCode } from '../errors.ts';
import type { Agent } from './agents.ts';
import type { Sampling, UpstreamMessage } from './upstream.ts';

/** An error in OpenAI's shape: HTTP status, type, code and the parameter it is about. */
export class OpenAiRequestError extends AppError {
  readonly param: string | null;
  readonly openAiCode: string;

  constructor(message: string, openAiCode: string, param: string | null, code: ErrorCode = 'VALIDATION_FAILED') {
    super(code, { detail: message });
    this.param = param;
    this.openAiCode = openAiCode;
  }
}

const TextPart = z.strictObject({ type: z.literal('text'), text: z.string() });
const Content = z.union([z.string(), z.array(z.unknown()).max(256)]);
const Message = z.object({
  role: z.string(),
  content: Content.nullable().optional(),
  name: z.string().max(64).optional(),
});

// Accepted as OpenAI defines them; `user`, `metadata` and `store` are read and not forwarded.
const Body = z.strictObject({
  model: z.string().min(1).max(128),
  messages: z.array(Message).min(1).max(1_000),
  stream: z.boolean().optional(),
  stream_options: z.strictObject({ include_usage: z.boolean().optional() }).nullable().optional(),
  max_tokens: z.number().int().min(1).nullable().optional(),
  max_completion_tokens: z.number().int().min(1).nullable().optional(),
  temperature: z.number().min(0).max(2).nullable().optional(),
  top_p: z.number().min(0).max(1).nullable().optional(),
  n: z.number().int().min(1).nullable().optional(),
  stop: z
    .union([z.string().max(256), z.array(z.string().max(256)).max(4)])
    .nullable()
    .optional(),
  seed: z.number().int().nullable().optional(),
  user: z.string().max(256).optional(),
  presence_penalty: z.number().min(-2).max(2).nullable().optional(),
  frequency_penalty: z.number().min(-2).max(2).nullable().optional(),
  metadata: z.record(z.string().max(64), z.string().max(512)).nullable().optional(),
  store: z.boolean().nullable().optional(),
  parallel_tool_calls: z.boolean().nullable().optional(),
  logit_bias: z.record(z.string(), z.number()).nullable().optional(),
  tool_choice: z.unknown().optional(),
  response_format: z.unknown().optional(),
  logprobs: z.unknown().optional(),
  tools: z.unknown().optional(),
  functions: z.unknown().optional(),
  function_call: z.unknown().optional(),
  audio: z.unknown().optional(),
  modalities: z.unknown().optional(),
  top_logprobs: z.unknown().optional(),
});
type Body = z.output<typeof Body>;

/** What a validated request asks of the turn engine. */
export interface CompletionRequest {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  messages: UpstreamMessage[];
  sampling: Sampling;
}

/** Limits of one request: the characters of all message text. */
export interface CompletionLimits {
  maxInputChars: number;
}

/** Validates the body; every refusal names its parameter in OpenAI's error shape. */
export function parseCompletionRequest(body: unknown, limits: CompletionLimits): CompletionRequest {
  refuseUnknownFields(body);
  const parsed = Body.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const param = issue === undefined ? null : issue.path.join('.') || null;
    throw new OpenAiRequestError(
      `Invalid value for '${param ?? 'body'}': ${issue?.message ?? 'invalid'}`,
      'invalid_value',
      param,
    );
  }
  const b = parsed.data;
  refuseUnsupported(b);
  const messages = b.messages.map((m, i) => toMessage(m, i));
  const chars = messages.reduce((sum, m) => sum + m.content.length, 0);
  if (chars > limits.maxInputChars) {
    throw new OpenAiRequestError(
      `The messages hold ${chars} characters; this server accepts at most ${limits.maxInputChars}`,
      'context_length_exceeded',
      'messages',
    );
  }
  return {
    model: b.model,
    stream: b.stream === true,
    includeUsage: b.stream_options?.include_usage === true,
    messages,
    sampling: sampling(b),
  };
}

/** A client's system and developer messages follow the agent's prompt, unless the agent refuses them. */
export function checkSystemMessages(request: CompletionRequest, agent: Agent): void {
  if (agent.clientSystemMessages !== 'refuse') return;
  const index = request.messages.findIndex((m) => m.role === 'system');
  if (index !== -1) {
    throw new OpenAiRequestError(
      `This model does not accept system or developer messages (messages[${index}])`,
      'unsupported_value',
      `messages[${index}].role`,
    );
  }
}

function refuseUnknownFields(body: unknown): void {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new OpenAiRequestError('The body must be a JSON object', 'invalid_value', null);
  }
  const known = Body.keyof().options as readonly string[];
  const unknown = Object.keys(body).find((key) => !known.includes(key));
  if (unknown !== undefined) unsupported(unknown);
}

function unsupported(param: string): never {
  throw new OpenAiRequestError(
    `Unsupported parameter: '${param}' is not supported by this server`,
    'unsupported_parameter',
    param,
  );
}

function refuseUnsupported(b: Body): void {
  for (const param of ['tools', 'functions', 'function_call', 'audio', 'modalities', 'top_logprobs'] as const) {
    if (b[param] !== undefined && b[param] !== null) unsupported(param);
  }
  if (b.logprobs !== undefined && b.logprobs !== null && b.logprobs !== false) unsupported('logprobs');
  if (b.tool_choice !== undefined && b.tool_choice !== null && b.tool_choice !== 'none') unsupported('tool_choice');
  const format = b.response_format as { type?: unknown } | null | undefined;
  if (format !== undefined && format !== null && format?.type !== 'text') unsupported('response_format');
  if (b.n !== undefined && b.n !== null && b.n > 1) unsupported('n');
  if (b.logit_bias !== undefined && b.logit_bias !== null && Object.keys(b.logit_bias).length > 0) {
    unsupported('logit_bias');
  }
}

const ROLES: Record<string, UpstreamMessage['role']> = {
  system: 'system',
  developer: 'system', // the model sees a client's developer message as a system message after the agent's
  user: 'user',
  assistant: 'assistant',
};

function toMessage(m: z.output<typeof Message>, i: number): UpstreamMessage {
  const role = ROLES[m.role];
  if (role === undefined) unsupported(`messages[${i}].role`);
  return { role, content: textOf(m.content, i) };
}

/** A string, or the text parts of an array joined; images, files and audio are refused by path. */
function textOf(content: z.output<typeof Content> | null | undefined, i: number): string {
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return checkedText(content, `messages[${i}].content`);
  const texts = content.map((part, j) => {
    const parsed = TextPart.safeParse(part);
    if (!parsed.success) unsupported(`messages[${i}].content[${j}]`);
    return checkedText(parsed.data.text, `messages[${i}].content[${j}].text`);
  });
  return texts.join('\n');
}

function checkedText(text: string, param: string): string {
  // PostgreSQL-free route, but the same rule as everywhere: NUL is never valid text here.
  if (text.includes('\u0000'))
    throw new OpenAiRequestError(`'${param}' must not contain NUL characters`, 'invalid_value', param);
  return text;
}

function sampling(b: Body): Sampling {
  const out: Sampling = {};
  const maxTokens = b.max_completion_tokens ?? b.max_tokens;
  if (maxTokens !== undefined && maxTokens !== null) out.maxOutputTokens = maxTokens;
  if (b.temperature !== undefined && b.temperature !== null) out.temperature = b.temperature;
  if (b.top_p !== undefined && b.top_p !== null) out.topP = b.top_p;
  if (b.stop !== undefined && b.stop !== null) out.stop = typeof b.stop === 'string' ? [b.stop] : b.stop;
  if (b.seed !== undefined && b.seed !== null) out.seed = b.seed;
  if (b.presence_penalty !== undefined && b.presence_penalty !== null) out.presencePenalty = b.presence_penalty;
  if (b.frequency_penalty !== undefined && b.frequency_penalty !== null) out.frequencyPenalty = b.frequency_penalty;
  return out;
}
