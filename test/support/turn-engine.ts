// The chat layer without the app: a real database, the real upstream client in front of the fake
// upstream, and the options a turn engine (or one TurnRun) is built from.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Agent, createRegistry, withDefaults } from '../../lib/chat/agents.ts';
import type { TurnEngineOptions } from '../../lib/chat/turn.ts';
import { createUpstream, type Upstream } from '../../lib/chat/upstream.ts';
import type { Config } from '../../lib/config.ts';
import { createDatabase, type Database } from '../../lib/db/database.ts';
import { migrate } from '../../lib/db/migrate.ts';
import { createConcurrencyLimiter } from '../../lib/limits/concurrency.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { testConfig } from './config.ts';
import { type FakeUpstream, startFakeUpstream } from './fake-upstream.ts';
import { logLines } from './log-lines.ts';

export interface EngineParts {
  config: Config;
  fake: FakeUpstream;
  db: Database;
  upstream: Upstream;
  /** The `default` agent: its prompt, the configured model and output cap, open sampling bounds. */
  agent: Agent;
  log: Logger;
  /** Every log line so far, parsed. */
  lines(): Array<Record<string, unknown>>;
  /** Aborted by close(), as a drain's grace period ending would. */
  shutdown: AbortController;
  /** Turn engine options over these parts; `agents` holds `agent` plus any `extraAgents`. */
  options(overrides?: Partial<TurnEngineOptions>, extraAgents?: readonly Agent[]): TurnEngineOptions;
  close(): Promise<void>;
}

/** Opens the database of `env` (TEST_DATABASE_URL, else embedded), migrated, and the fake upstream. */
export async function startEngineParts(env: Record<string, string | undefined> = {}): Promise<EngineParts> {
  const dir = await mkdtemp(join(tmpdir(), 'engine-test-'));
  const fake = await startFakeUpstream();
  const config = testConfig({ OPENAI_BASE_URL: fake.url, UPSTREAM_MAX_RETRIES: '0', ...env }, dir);
  const chunks: string[] = [];
  const log = createLogger({ level: 'debug', secrets: config.secrets.values, sink: (c) => chunks.push(c) });
  const db = await createDatabase(config, log);
  await migrate(db.pool);
  const upstream = createUpstream(config, log);
  const agent = withDefaults({ id: 'default', description: 'Test', systemPrompt: 'You are a test.' }, config);
  const shutdown = new AbortController();
  return {
    config,
    fake,
    db,
    upstream,
    agent,
    log,
    lines() {
      log.flush();
      return logLines(chunks.join(''));
    },
    shutdown,
    options: (overrides = {}, extraAgents = []) => ({
      pool: db.pool,
      upstream,
      agents: createRegistry([agent, ...extraAgents]),
      slots: createConcurrencyLimiter(100),
      log,
      historyMaxChars: config.historyMaxChars,
      maxAnswerChars: config.maxAnswerChars,
      shutdownSignal: shutdown.signal,
      ...overrides,
    }),
    async close() {
      shutdown.abort();
      await upstream.close();
      await db.close();
      await fake.close();
      await rm(dir, { recursive: true, force: true });
    },
  };
}
