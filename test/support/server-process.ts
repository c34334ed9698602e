// Runs the real entry point (`node server.ts`) as production does, keeping all it writes.
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { childProcessEnv } from './config.ts';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** How a run of server.ts ended, and everything it wrote to stdout and stderr. */
export interface ProcessRun {
  code: number | null;
  output: string;
}

/**
 * Runs `node server.ts …args` with exactly `env` (plus childProcessEnv()). Once it listens, `during` gets its
 * base URL and a `stop()` that sends SIGTERM once; SIGTERM follows `during` if it did not stop it.
 * The process is killed after 30 s.
 */
export function runServerProcess(
  args: string[],
  env: Record<string, string>,
  during?: (url: string, stop: () => void) => Promise<void>,
): Promise<ProcessRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['server.ts', ...args], {
      cwd: REPO_ROOT,
      env: { ...childProcessEnv(), ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let output = '';
    let started = false;
    let signalled = false;
    // A second SIGTERM means "exit at once": never send two.
    const stop = (): void => {
      if (signalled) return;
      signalled = true;
      child.kill('SIGTERM');
    };
    const killer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    const onOutput = (chunk: string): void => {
      output += chunk;
      const url = /"msg":"listening","url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(output)?.[1];
      if (url === undefined || started || during === undefined) return;
      started = true;
      during(url, stop).then(stop, (err: unknown) => {
        stop();
        reject(err);
      });
    };
    child.stdout.setEncoding('utf8').on('data', onOutput);
    child.stderr.setEncoding('utf8').on('data', onOutput);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(killer);
      resolve({ code, output });
    });
  });
}
