// Starts the real server (lib/main.ts) on port 0 for a test, with captured logs and a canary secret.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Config } from '../../lib/config.ts';
import { createLogger, type Logger } from '../../lib/log.ts';
import { type RunningServer, startServer } from '../../lib/main.ts';
import { testConfig } from './config.ts';
import { logLines } from './log-lines.ts';
import { seedEmbeddedDatabase } from './pglite-template.ts';

export interface TestServer extends RunningServer {
  config: Config;
  log: Logger;
  /** Everything logged so far (flushed first). */
  logs(): string;
  /** Every log line so far, parsed. */
  lines(): Array<Record<string, unknown>>;
  close(): Promise<void>;
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
