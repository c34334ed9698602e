// Composition root and subcommand dispatch: `serve` (default), `migrate`, `keys create|list|revoke`.
import { loadConfig } from './lib/config.ts';
import { createDatabase } from './lib/db/database.ts';
import { migrate } from './lib/db/migrate.ts';
import { createLogger, type Logger } from './lib/log.ts';
import type { startServer } from './lib/main.ts';

const config = loadConfig();
const [command = 'serve', ...args] = process.argv.slice(2);
// Admin commands keep stdout for their result (a new key goes there alone); their log goes to stderr.
const log = createLogger({ level: config.logLevel, secrets: config.secrets.values, sink: command === 'serve' ? 1 : 2 });

process.on('uncaughtException', (err) => die(log, 'uncaught exception', err));
process.on('unhandledRejection', (err) => die(log, 'unhandled rejection', err));

switch (command) {
  case 'serve':
    await serve();
    break;
  case 'migrate':
    await runMigrate();
    break;
  case 'keys': {
    const { runKeysCommand } = await import('./lib/auth/keys-command.ts');
    process.exitCode = await runKeysCommand(config, log, args);
    log.flush();
    break;
  }
  default:
    process.stderr.write(
      `Unknown command: ${command}\n` +
        'Usage: server.ts [serve | migrate | keys create NAME | keys list | keys revoke NAME]\n',
    );
    process.exitCode = 2;
}

async function serve(): Promise<void> {
  // Signals are handled from the first moment: a SIGTERM during a slow (embedded) database start
  // waits for the start to finish and then drains, instead of killing the process mid-write.
  let stopping = false;
  let running: Awaited<ReturnType<typeof startServer>> | undefined;
  const drain = (): void => {
    running?.shutdown().then(
      () => {
        log.info('stopped');
        log.flush();
        process.exit(0);
      },
      (err: unknown) => die(log, 'shutdown failed', err),
    );
  };
  const stop = (signal: string): void => {
    if (stopping) {
      // A second signal means "now": skip the drain.
      log.warn('second signal: exiting at once', { signal });
      log.flush();
      process.exit(130);
    }
    stopping = true;
    log.info('draining', { signal, graceMs: config.shutdownGraceMs, readinessMs: config.drainReadinessMs });
    drain();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Loaded here, not at the top: the admin commands need none of the server's modules.
  const { startServer: start } = await import('./lib/main.ts');
  running = await start(config, log).catch((err: unknown) => die(log, 'server failed to start', err));
  if (stopping) drain();
}

async function runMigrate(): Promise<void> {
  const db = await createDatabase(config, log);
  try {
    const applied = await migrate(db.pool);
    log.info('migrations applied', { applied });
  } finally {
    await db.close();
    log.flush();
  }
}

function die(logger: Logger, msg: string, err: unknown): never {
  logger.error(msg, { err });
  logger.flush();
  // systemd restarts the unit (Restart=on-failure); a half-broken process must not linger.
  process.exit(1);
}
