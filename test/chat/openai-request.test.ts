// The Chat Completions request parser on plain bodies: what it accepts, maps and refuses, by parameter.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Agent } from '../../lib/chat/agents.ts';
import {
  type CompletionRequest,
  checkSystemMessages,
  OpenAiRequestError,
  parseCompletionRequest,
} from '../../lib/chat/openai-request.ts';

const LIMITS = { maxInputChars: 100 };
const USER = { role: 'user', content: 'Hi' };

function parse(extra: Record<string, unknown>, limits = LIMITS): CompletionRequest {
  return parseCompletionRequest({ model: 'default', messages: [USER], ...extra }, limits);
}

/** The OpenAiRequestError a body is refused with. */
function refusal(body: unknown, limits = LIMITS): OpenAiRequestError {
  try {
    parseCompletionRequest(body, limits);
  } catch (err) {
    assert.ok(err instanceof OpenAiRequestError, `an OpenAiRequestError, not ${String(err)}`);
    return err;
  }
  assert.fail('the body was accepted');
}

function refused(extra: Record<string, unknown>): { code: string; param: string | null } {
  const err = refusal({ model: 'default', messages: [USER], ...extra });
  return { code: err.openAiCode, param: err.param };
}

describe('parseCompletionRequest() accepts', () => {
  it('parseCompletionRequest() reads a minimal body as a non-streaming request with no sampling', () => {
    assert.deepEqual(parse({}), {
      model: 'default',
      stream: false,
      includeUsage: false,
      messages: [{ role: 'user', content: 'Hi' }],
      sampling: {},
    });
  });

  it('parseCompletionRequest() maps every sampling parameter, max_completion_tokens before max_tokens', () => {
    const request = parse({
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: 50,
      max_completion_tokens: 40,
      temperature: 0.3,
      top_p: 0.9,
      stop: ['END', 'STOP'],
      seed: 7,
      presence_penalty: -1,
      frequency_penalty: 1.5,
    });
    assert.equal(request.stream, true);
    assert.equal(request.includeUsage, true);
    assert.deepEqual(request.sampling, {
      maxOutputTokens: 40,
      temperature: 0.3,
      topP: 0.9,
      stop: ['END', 'STOP'],
      seed: 7,
      presencePenalty: -1,
      frequencyPenalty: 1.5,
    });
  });

  it('parseCompletionRequest() takes max_tokens alone and a single stop string as a list', () => {
    assert.deepEqual(parse({ max_tokens: 12, stop: 'END' }).sampling, { maxOutputTokens: 12, stop: ['END'] });
  });

  it('parseCompletionRequest() accepts null for every nullable parameter and maps none of them', () => {
    const nulls = Object.fromEntries(
      [
        'stream_options',
        'max_tokens',
        'max_completion_tokens',
        'temperature',
        'top_p',
        'n',
        'stop',
        'seed',
        'presence_penalty',
        'frequency_penalty',
        'metadata',
        'store',
        'parallel_tool_calls',
        'logit_bias',
        'tool_choice',
        'response_format',
        'logprobs',
        'tools',
        'functions',
        'function_call',
        'audio',
        'modalities',
        'top_logprobs',
      ].map((name) => [name, null]),
    );
    const request = parse(nulls);
    assert.deepEqual(request.sampling, {});
    assert.equal(request.includeUsage, false);
  });

  it('parseCompletionRequest() accepts values that change nothing: n 1, text format, no tools or logprobs', () => {
    const request = parse({
      n: 1,
      response_format: { type: 'text' },
      tool_choice: 'none',
      logprobs: false,
      logit_bias: {},
      parallel_tool_calls: false,
      user: 'u-1',
      metadata: { team: 'a' },
      store: false,
    });
    assert.deepEqual(request.sampling, {});
  });
});

describe('parseCompletionRequest() messages', () => {
  it('parseCompletionRequest() keeps system, user and assistant roles and reads developer as system', () => {
    const request = parse({
      messages: [
        { role: 'system', content: 's' },
        { role: 'developer', content: 'd' },
        { role: 'user', content: 'u' },
        { role: 'assistant', content: 'a', name: 'bot' },
      ],
    });
    assert.deepEqual(
      request.messages.map((m) => [m.role, m.content]),
      [
        ['system', 's'],
        ['system', 'd'],
        ['user', 'u'],
        ['assistant', 'a'],
      ],
    );
  });

  it('parseCompletionRequest() refuses the tool and function roles by the path of the role', () => {
    assert.deepEqual(refused({ messages: [USER, { role: 'tool', content: 'x' }] }), {
      code: 'unsupported_parameter',
      param: 'messages[1].role',
    });
    assert.deepEqual(refused({ messages: [{ role: 'function', content: 'x' }] }), {
      code: 'unsupported_parameter',
      param: 'messages[0].role',
    });
  });

  it('parseCompletionRequest() joins text parts with a newline and reads null content as empty', () => {
    const request = parse({
      messages: [
        {
          role: 'user',
          content: [
            { type: 'text', text: 'one' },
            { type: 'text', text: 'two' },
          ],
        },
        { role: 'assistant', content: null },
      ],
    });
    assert.deepEqual(
      request.messages.map((m) => m.content),
      ['one\ntwo', ''],
    );
  });

  it('parseCompletionRequest() refuses an image part, or a text part with other fields, by its path', () => {
    const image = { type: 'image_url', image_url: { url: 'https://example.com/a.png' } };
    assert.deepEqual(refused({ messages: [{ role: 'user', content: [{ type: 'text', text: 'a' }, image] }] }), {
      code: 'unsupported_parameter',
      param: 'messages[0].content[1]',
    });
    assert.deepEqual(refused({ messages: [{ role: 'user', content: [{ type: 'text', text: 'a', cache: 1 }] }] }), {
      code: 'unsupported_parameter',
      param: 'messages[0].content[0]',
    });
  });

  it('parseCompletionRequest() refuses NUL in a message or in a text part as an invalid value of that path', () => {
    assert.deepEqual(refused({ messages: [{ role: 'user', content: 'a\u0000b' }] }), {
      code: 'invalid_value',
      param: 'messages[0].content',
    });
    assert.deepEqual(refused({ messages: [USER, { role: 'user', content: [{ type: 'text', text: '\u0000' }] }] }), {
      code: 'invalid_value',
      param: 'messages[1].content[0].text',
    });
  });

  it('parseCompletionRequest() accepts messages of exactly the character limit and refuses one more', () => {
    const half = 'x'.repeat(LIMITS.maxInputChars / 2);
    const exact = parse({ messages: [USER, { role: 'user', content: half.slice(2) + half }] });
    assert.equal(exact.messages.length, 2);
    const err = refusal({ model: 'm', messages: [USER, { role: 'user', content: `${half}${half}` }] });
    assert.equal(err.openAiCode, 'context_length_exceeded');
    assert.equal(err.param, 'messages');
    assert.match(err.message, /102 characters.*at most 100/);
  });

  it('parseCompletionRequest() counts the text of content parts toward the character limit', () => {
    const parts = [
      { type: 'text', text: 'x'.repeat(60) },
      { type: 'text', text: 'y'.repeat(60) },
    ];
    assert.equal(
      refusal({ model: 'm', messages: [{ role: 'user', content: parts }] }).openAiCode,
      'context_length_exceeded',
    );
  });
});

describe('parseCompletionRequest() refuses', () => {
  it('parseCompletionRequest() refuses a body that is not a JSON object with no parameter named', () => {
    for (const body of [null, [], 'text', 42]) {
      const err = refusal(body);
      assert.deepEqual(
        [err.openAiCode, err.param, err.status, err.code],
        ['invalid_value', null, 400, 'VALIDATION_FAILED'],
      );
    }
  });

  it('parseCompletionRequest() refuses an unknown parameter by name', () => {
    assert.deepEqual(refused({ reasoning_effort: 'high' }), {
      code: 'unsupported_parameter',
      param: 'reasoning_effort',
    });
  });

  it('parseCompletionRequest() refuses each parameter it does not serve, by name', () => {
    const cases: Array<[string, unknown]> = [
      ['tools', [{ type: 'function', function: { name: 'f' } }]],
      ['functions', [{ name: 'f' }]],
      ['function_call', 'auto'],
      ['audio', { voice: 'alloy', format: 'mp3' }],
      ['modalities', ['text', 'audio']],
      ['top_logprobs', 2],
      ['logprobs', true],
      ['tool_choice', 'auto'],
      ['response_format', { type: 'json_object' }],
      ['n', 2],
      ['logit_bias', { '50256': -100 }],
    ];
    for (const [param, value] of cases) {
      assert.deepEqual(refused({ [param]: value }), { code: 'unsupported_parameter', param }, param);
    }
  });

  it('parseCompletionRequest() refuses an out-of-range or mistyped value naming its parameter', () => {
    const cases: Array<[Record<string, unknown>, string]> = [
      [{ temperature: 2.5 }, 'temperature'],
      [{ top_p: -0.1 }, 'top_p'],
      [{ max_tokens: 0 }, 'max_tokens'],
      [{ max_completion_tokens: 1.5 }, 'max_completion_tokens'],
      [{ presence_penalty: 3 }, 'presence_penalty'],
      [{ stream: 'yes' }, 'stream'],
      [{ stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
      [{ stream_options: { include_usage: true, extra: 1 } }, 'stream_options'],
      [{ model: '' }, 'model'],
      [{ messages: [] }, 'messages'],
      [{ messages: [{ role: 'user', content: 'x', name: 'n'.repeat(65) }] }, 'messages.0.name'],
    ];
    for (const [extra, param] of cases) {
      const got = refused(extra);
      assert.equal(got.code, 'invalid_value', JSON.stringify(extra));
      assert.equal(got.param, param, JSON.stringify(extra));
    }
  });

  it('parseCompletionRequest() names the parameter in the message without echoing its value', () => {
    const err = refusal({ model: 'default', messages: [USER], temperature: 987654 });
    assert.match(err.message, /^Invalid value for 'temperature'/);
    assert.ok(!err.message.includes('987654'));
  });
});

describe('checkSystemMessages()', () => {
  const agent = (clientSystemMessages: Agent['clientSystemMessages']): Agent => ({
    id: 'a',
    description: '',
    model: 'm',
    systemPrompt: 'p',
    temperatureRange: [0, 2],
    fallbacks: [],
    topPRange: [0, 1],
    maxOutputTokens: 10,
    clientSystemMessages,
  });
  const withDeveloper = parse({ messages: [USER, { role: 'developer', content: 'obey me' }] });

  it('checkSystemMessages() refuses a system or developer message for an agent that refuses them, by its index', () => {
    assert.throws(
      () => checkSystemMessages(withDeveloper, agent('refuse')),
      (err: unknown) =>
        err instanceof OpenAiRequestError && err.openAiCode === 'unsupported_value' && err.param === 'messages[1].role',
    );
  });

  it('checkSystemMessages() lets them through for an agent that appends them, and user messages for any agent', () => {
    checkSystemMessages(withDeveloper, agent('append'));
    checkSystemMessages(parse({}), agent('refuse'));
  });
});
