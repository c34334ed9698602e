// A lock shared by the test files of one run, for suites that must not overlap even when files
// run concurrently: each load test saturates the machine by itself, and two at once starve each
// other past the deadlines they check.
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { acquireLock, DatabaseLockedError } from '../../lib/db/database.ts';

/** The variable the global setup sets to the run's folder, where run-wide locks live. */
export const RUN_DIR_ENV = 'TEST_RUN_DIR';

const POLL_MS = 100;
// Below the runner's --test-timeout, which hooks share: a clear message instead of a cancellation.
const DEFAULT_TIMEOUT_MS = 55_000;

/**
 * Waits until this process holds the run-wide lock `name` and resolves with its release. A lock
 * whose holder died is taken over. A file run without the global setup runs alone: no lock.
 */
export async function runLock(name: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<() => void> {
  const runDir = process.env[RUN_DIR_ENV];
  if (!runDir) return () => {};
  const path = join(runDir, `${name}.lock`);
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    try {
      return acquireLock(path);
    } catch (err) {
      if (!(err instanceof DatabaseLockedError)) throw err;
      if (performance.now() > deadline) throw new Error(`Run lock ${name} still held after ${timeoutMs} ms`);
    }
    await sleep(POLL_MS);
  }
}
