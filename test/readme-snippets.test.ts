// The README's code examples, run verbatim against the real server: the text a user copies works.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runInNewContext } from 'node:vm';
import { type ChatHarness, startChat } from './support/chat.ts';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const README = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
// Inside the repository, so the snippets' imports resolve from its node_modules.
const SCRATCH = fileURLToPath(new URL('../.test-tmp/', import.meta.url));

/** The fenced block right after `<!-- snippet: name -->`. */
function snippet(name: string): string {
  const found = new RegExp(`<!-- snippet: ${name} -->\\n\`\`\`\\w+\\n([\\s\\S]*?)\\n\`\`\``).exec(README);
  if (found?.[1] === undefined) throw new Error(`README has no snippet "${name}"`);
  return found[1];
}

type Chat = (
  baseUrl: string,
  token: string,
  message: string,
  output: { textContent: string },
) => Promise<{ conversationId: string; finishReason: string }>;

describe('the README snippets', () => {
  let h: ChatHarness;
  let env: Record<string, string | undefined>;

  before(async () => {
    h = await startChat();
    env = { PATH: process.env['PATH'], CHAT_BASE_URL: `${h.server.url}/v1`, CHAT_API_KEY: h.key };
    await mkdir(SCRATCH, { recursive: true });
  });
  after(async () => {
    await h.close();
    await rm(SCRATCH, { recursive: true, force: true });
  });

  /** Runs a JavaScript snippet as its own ES module with Node 24 and returns its stdout. */
  async function runModule(name: string): Promise<string> {
    const file = `${SCRATCH}${name}-${process.pid}.mjs`;
    await writeFile(file, snippet(name));
    return (await run(process.execPath, [file], { cwd: ROOT, env, timeout: 20_000 })).stdout;
  }

  it('openai-curl streams chat.completion.chunk frames and [DONE]', async () => {
    const { stdout } = await run('bash', ['-c', snippet('openai-curl')], { env, timeout: 20_000 });
    assert.match(stdout, /^data: \{"id":"chatcmpl-/);
    assert.match(stdout, /"content":"Hel"/);
    assert.match(stdout, /data: \[DONE\]\n\n$/);
  });

  it('openai-sdk prints the streamed answer', async () => {
    assert.equal(await runModule('openai-sdk'), 'Hello world');
  });

  it('ai-sdk prints the streamed answer', async () => {
    assert.equal(await runModule('ai-sdk'), 'Hello world');
  });

  describe('browser-chat', () => {
    // The snippet's function, evaluated as a browser would: fetch and TextDecoderStream are globals in both.
    const chat = runInNewContext(`${snippet('browser-chat')}; chat`, {
      fetch,
      TextDecoderStream,
      Error,
      JSON,
    }) as Chat;

    it('shows the deltas and resolves with the conversation id and finish reason', async () => {
      const output = { textContent: '' };
      const result = await chat(h.server.url, h.key, 'Hello', output);
      assert.equal(output.textContent, 'Hello world');
      assert.equal(result.finishReason, 'stop');
      assert.match(result.conversationId, /^[0-9a-f-]{36}$/);
    });

    it('rejects with the code and request id of an error event after the stream started', async () => {
      h.fake.queue({ kind: 'reset', afterChunks: 1 });
      const output = { textContent: '' };
      await assert.rejects(chat(h.server.url, h.key, 'Hello', output), /UPSTREAM_ERROR \(request [0-9a-f-]{36}\)/);
      assert.equal(output.textContent, 'Hel');
    });

    it('rejects with the problem title, code and request id of a refused request', async () => {
      await assert.rejects(chat(h.server.url, 'wrong', 'Hello', { textContent: '' }), /INVALID_TOKEN, request /);
    });
  });
});
