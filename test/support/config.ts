// The configuration tests share: the canary secret, the test PostgreSQL, the server's config with
// test defaults, and what a child `node` inherits. Light on purpose: it loads lib/config.ts only, so
// a test file that needs no running server does not load the server's modules.
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Config, parseConfig } from '../../lib/config.ts';

/** A value set as every secret variable; no log line, body or header may ever contain it. */
export const CANARY = 'canary-7f3c9e1d5b2a4f68a0c1e3d5b7f9a2c4';

/** The real PostgreSQL for tests (CI always sets it); undefined means embedded PGlite. */
export const TEST_DATABASE_URL = process.env['TEST_DATABASE_URL'] || undefined;

/**
 * The environment a test hands a child `node` besides the child's own settings: PATH, and the
 * compile cache (Node's, not the server's configuration) so the child compiles less.
 */
export function childProcessEnv(): Record<string, string> {
  const env: Record<string, string> = { PATH: process.env['PATH'] ?? '' };
  const compileCache = process.env['NODE_COMPILE_CACHE'];
  if (compileCache !== undefined) env['NODE_COMPILE_CACHE'] = compileCache;
  return env;
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
