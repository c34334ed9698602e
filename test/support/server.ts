// Starts the real server (lib/main.ts) on port 0 for a test, with captured logs and a canary secret.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Config, parseConfig } from '../../lib/config.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { type RunningServer, startServer } from '../../lib/main.ts';
import { logLines } from './log-lines.ts';
import { seedEmbeddedDatabase } from './pglite-template.ts';

/** A value set as every secret variable; no log line, body or header may ever contain it. */
export const CANARY = 'canary-7f3c9e1d5b2a4f68a0c1e3d5b7f9a2c4';

/** The real PostgreSQL for tests (CI always sets it); undefined means embedded PGlite. */
export const TEST_DATABASE_URL = process.env['TEST_DATABASE_URL'] || undefined;

/**
 * The environment a test hands a child `node` besides the child's own settings: PATH, and the
 * run's compile cache (Node's, not the server's configuration) so the child compiles less.
 */
export function childProcessEnv(): Record<string, string> {
  const env: Record<string, string> = { PATH: process.env['PATH'] ?? '' };
  const compileCache = process.env['NODE_COMPILE_CACHE'];
  if (compileCache !== undefined) env['NODE_COMPILE_CACHE'] = compileCache;
  return env;
}

export interface TestServer extends RunningServer {
  config: Config;
  log: Logger;
  /** Everything logged so far (flushed first). */
  logs(): string;
  /** Every log line so far, parsed. */
  lines(): Array<Record<string, unknown>>;
  close(): Promise<void>;
}

/** Builds a config from defaults suitable for tests plus `env`; throws on invalid config. */
export function testConfig(env: Record<string, string | undefined> = {}, dataDir = join(tmpdir(), 'unused')): Config {
  const result = parseConfig({
    HOST: '127.0.0.1',
    PORT: '0',
    LOG_LEVEL: 'debug',
    DATA_DIR: dataDir,
    DATABASE_URL: TEST_DATABASE_URL,
    OPENAI_API_KEY: CANARY,
    METRICS_TOKEN: CANARY,
    JWT_SECRET: `${CANARY}-jwt`,
    JWT_AUDIENCE: 'chat-server-test',
    SHUTDOWN_GRACE_MS: '2000',
    DRAIN_READINESS_MS: '0',
    ...env,
  });
  if (!result.ok) throw new Error(`test config invalid: ${result.problems.join('; ')}`);
  return result.config;
}

/** Starts the server; pass `DATABASE_URL: undefined` in env to force the embedded database. */
export async function startTestServer(env: Record<string, string | undefined> = {}): Promise<TestServer> {
  const dataDir = await mkdtemp(join(tmpdir(), 'chat-test-'));
  const config = testConfig(env, dataDir);
  if (!config.database.external) await seedEmbeddedDatabase(config.dataDir);
  const lines: string[] = [];
  const log = createLogger({
    level: config.logLevel,
    secrets: config.secrets.values,
    sink: (chunk) => lines.push(chunk),
  });
  const running = await startServer(config, log);
  let closed = false;
  return {
    ...running,
    config,
    log,
    logs() {
      log.flush();
      return lines.join('');
    },
    lines() {
      log.flush();
      return logLines(lines.join(''));
    },
    async close() {
      if (closed) return;
      closed = true;
      await running.shutdown(0);
      log.flush();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
