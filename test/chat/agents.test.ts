import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { loadAgents } from '../../lib/chat/agents.ts';
import type { Config } from '../../lib/config.ts';
import { parseConfig } from '../../lib/config.ts';

const SECRET_PROMPT = 'PROMPT-SECRET-MARKER';
let dir: string;
let counter = 0;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'agents-test-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const BACKUP_KEY = 'backup-key-canary-5e1f0a9b7c3d';

function config(agentsFile?: string, env: Record<string, string> = {}): Config {
  const parsed = parseConfig({
    OPENAI_MODEL: 'model-from-env',
    BACKUP_PROVIDER_KEY: BACKUP_KEY,
    ...(agentsFile === undefined ? {} : { AGENTS_FILE: agentsFile }),
    ...env,
  });
  if (!parsed.ok) throw new Error(parsed.problems.join('; '));
  return parsed.config;
}

/** Writes `content` (JSON-encoded unless a string) to a fresh file and returns its config. */
async function withFile(content: unknown, env: Record<string, string> = {}): Promise<{ file: string; config: Config }> {
  const file = join(dir, `agents-${++counter}.json`);
  await writeFile(file, typeof content === 'string' ? content : JSON.stringify(content));
  return { file, config: config(file, env) };
}

async function loadError(
  content: unknown,
  env: Record<string, string> = {},
): Promise<{ file: string; message: string }> {
  const { file, config: c } = await withFile(content, env);
  const err = await loadAgents(c).then(
    () => assert.fail('expected loadAgents() to reject'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof Error);
  return { file, message: err.message };
}

const coder = {
  id: 'coder',
  description: 'Writes code',
  model: 'big-model',
  systemPrompt: `You write code. ${SECRET_PROMPT}`,
  temperature: 0.2,
  maxOutputTokens: 4000,
};

describe('loadAgents()', () => {
  it('provides a built-in default agent on the configured model when there is no file', async () => {
    const agents = await loadAgents(config());
    assert.equal(agents.defaultId, 'default');
    const agent = agents.get('default');
    assert.equal(agent?.model, 'model-from-env');
    assert.ok((agent?.systemPrompt.length ?? 0) > 0);
    assert.deepEqual(
      agents.list().map((a) => a.id),
      ['default'],
    );
  });

  it('caps the output of every agent without its own cap at DEFAULT_MAX_OUTPUT_TOKENS (4096 unless set)', async () => {
    assert.equal((await loadAgents(config())).get('default')?.maxOutputTokens, 4096);
    const { config: withCap } = await withFile(
      [
        { id: 'terse', description: 'Terse', systemPrompt: 'Be brief.' },
        { id: 'own', description: 'Own', systemPrompt: 'x', maxOutputTokens: 50 },
      ],
      { DEFAULT_MAX_OUTPUT_TOKENS: '100' },
    );
    const agents = await loadAgents(withCap);
    assert.deepEqual(
      ['default', 'terse', 'own'].map((id) => agents.get(id)?.maxOutputTokens),
      [100, 100, 50],
    );
  });

  it('loads the agents of the file next to the built-in default', async () => {
    const { config: c } = await withFile([coder, { id: 'plain', description: 'No model', systemPrompt: 'Be plain.' }]);
    const agents = await loadAgents(c);
    const open = { temperatureRange: [0, 2], topPRange: [0, 1], clientSystemMessages: 'append', fallbacks: [] };
    assert.deepEqual(agents.get('coder'), { ...coder, ...open });
    assert.equal(agents.get('plain')?.model, 'model-from-env');
    assert.deepEqual(
      agents.list().map((a) => a.id),
      ['default', 'coder', 'plain'],
    );
    assert.equal(agents.get('nope'), undefined);
    assert.equal(agents.get('__proto__'), undefined);
  });

  it('uses the file default agent instead of the built-in one', async () => {
    const { config: c } = await withFile([
      { id: 'default', description: 'Custom', model: 'm2', systemPrompt: 'Custom default.' },
    ]);
    const agents = await loadAgents(c);
    assert.equal(agents.get('default')?.systemPrompt, 'Custom default.');
    assert.equal(agents.list().length, 1);
  });

  it('lists ids and descriptions only, never prompts or models', async () => {
    const { config: c } = await withFile([coder]);
    const list = (await loadAgents(c)).list();
    assert.deepEqual(
      list.find((a) => a.id === 'coder'),
      { id: 'coder', description: 'Writes code' },
    );
    assert.ok(!JSON.stringify(list).includes(SECRET_PROMPT));
    assert.ok(Object.isFrozen(list));
  });

  it('refuses duplicate ids and names the file and the id', async () => {
    const { file, message } = await loadError([coder, { ...coder, description: 'again' }]);
    assert.ok(message.includes(file));
    assert.match(message, /\[1\]\.id: duplicate id "coder"/);
  });

  it('reports duplicate ids alongside other problems', async () => {
    const { message } = await loadError([coder, { ...coder, temperature: -1 }]);
    assert.match(message, /\[1\]\.temperature:/);
    assert.match(message, /\[1\]\.id: duplicate id "coder"/);
  });

  it('refuses unknown fields, bad ids and out-of-range values, listing every problem', async () => {
    const { file, message } = await loadError([
      { ...coder, id: 'Bad ID' },
      { ...coder, id: 'ok', temperature: 3 },
      { ...coder, id: 'ok2', maxOutputTokens: 1.5 },
      { ...coder, id: 'ok3', sytemPrompt: 'typo' },
      { ...coder, id: 'ok4', description: 'd'.repeat(501) },
    ]);
    assert.ok(message.startsWith(`Invalid agents file ${file}:`));
    for (const path of ['[0].id', '[1].temperature', '[2].maxOutputTokens', '[3]', '[4].description']) {
      assert.ok(message.includes(`${path}:`), `missing ${path} in ${message}`);
    }
    assert.match(message, /sytemPrompt/);
  });

  it('refuses a prompt over 20000 characters without echoing it', async () => {
    const { message } = await loadError([{ ...coder, systemPrompt: SECRET_PROMPT.repeat(2000) }]);
    assert.match(message, /\[0\]\.systemPrompt:/);
    assert.ok(!message.includes(SECRET_PROMPT));
  });

  it('refuses invalid JSON without quoting the file', async () => {
    // JSON.parse would quote the text around this token ("…PROMPT-SEC…").
    const { file, message } = await loadError(`[{"id": "x", "systemPrompt": "y"}, ${SECRET_PROMPT}]`);
    assert.ok(message.startsWith(`Invalid agents file ${file}: not valid JSON`));
    assert.ok(!message.includes('PROMPT-SEC'));
  });

  it('refuses a file that is not an array', async () => {
    const { message } = await loadError({ agents: [coder] });
    assert.match(message, /\(root\):/);
  });

  it('fails clearly when the file cannot be read', async () => {
    const missing = join(dir, 'missing.json');
    await assert.rejects(loadAgents(config(missing)), { message: `Cannot read agents file ${missing}: ENOENT` });
  });

  it('loads fallbacks in order, each with its model and optionally a base URL and a key variable', async () => {
    const fallbacks = [
      { model: 'backup-model', baseURL: 'https://backup.example.com/v1', apiKeyEnv: 'BACKUP_PROVIDER_KEY' },
      { model: 'cheaper-model' },
    ];
    const { config: c } = await withFile([{ ...coder, fallbacks }]);
    const agents = await loadAgents(c);
    assert.deepEqual(agents.get('coder')?.fallbacks, fallbacks);
    assert.deepEqual(agents.get('default')?.fallbacks, []);
    assert.deepEqual(
      agents.all().map((a) => a.id),
      ['default', 'coder'],
    );
  });

  it('refuses a fallback whose key variable is unset, naming the variable and never a key', async () => {
    const fallbacks = [{ model: 'm', baseURL: 'https://backup.example.com/v1', apiKeyEnv: 'MISSING_PROVIDER_KEY' }];
    const { file, message } = await loadError([{ ...coder, fallbacks }], { MISSING_PROVIDER_KEY: '' });
    assert.ok(message.startsWith(`Invalid agents file ${file}:`));
    assert.match(message, /\[0\]\.fallbacks\[0\]\.apiKeyEnv: MISSING_PROVIDER_KEY is not set/);
  });

  it('refuses a fallback base URL with credentials or a query, and a server setting as key variable', async () => {
    const { message } = await loadError([
      {
        ...coder,
        fallbacks: [
          { model: 'a', baseURL: `https://user:${BACKUP_KEY}@backup.example.com/v1` },
          { model: 'b', baseURL: `https://backup.example.com/v1?key=${BACKUP_KEY}` },
          { model: 'c', apiKeyEnv: 'JWT_SECRET' },
          { model: 'd', apiKeyEnv: 'lower-case' },
        ],
      },
    ]);
    for (const path of ['[0].fallbacks[0].baseURL', '[0].fallbacks[1].baseURL', '[0].fallbacks[2].apiKeyEnv']) {
      assert.ok(message.includes(`${path}:`), `missing ${path} in ${message}`);
    }
    assert.ok(message.includes('[0].fallbacks[3].apiKeyEnv:'));
    assert.ok(!message.includes(BACKUP_KEY), 'the key in the URL is never echoed');
  });

  it('refuses more than four fallbacks and unknown fallback fields', async () => {
    const { message } = await loadError([
      { ...coder, fallbacks: Array.from({ length: 5 }, (_, i) => ({ model: `m${i}` })) },
      { ...coder, id: 'other', fallbacks: [{ model: 'm', apiKey: BACKUP_KEY }] },
    ]);
    assert.match(message, /\[0\]\.fallbacks:/);
    assert.match(message, /\[1\]\.fallbacks\[0\]/);
    assert.ok(!message.includes(BACKUP_KEY));
  });
});
