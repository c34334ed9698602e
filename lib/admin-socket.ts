// Admin commands over a Unix socket in DATA_DIR, for the embedded database: while a server holds
// it, `keys …` subcommands run inside that server instead of failing on the lock. The socket
// is a file of the owner's (mode 0600, in the 0700 DATA_DIR), never a TCP port.
import { chmodSync, unlinkSync } from 'node:fs';
import { createConnection, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import type { Logger } from './log.ts';

/** What one command printed and its exit code. */
export interface AdminAnswer {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs one command's arguments, writing as a terminal would. */
export type AdminRunner = (
  args: readonly string[],
  io: { out(text: string): void; err(text: string): void },
) => Promise<number>;

const SOCKET_FILE = 'admin.sock';
const MAX_REQUEST_BYTES = 4096;
const TIMEOUT_MS = 10_000;

/** The socket's path for a data directory. */
export function adminSocketPath(dataDir: string): string {
  return join(dataDir, SOCKET_FILE);
}

/** Listens on DATA_DIR/admin.sock; one JSON line in (`{"args":[…]}`), one JSON line out. */
export async function startAdminSocket(
  dataDir: string,
  run: AdminRunner,
  log: Logger,
): Promise<{ close(): Promise<void> }> {
  const path = adminSocketPath(dataDir);
  // The data directory's lock says no other server is running: a socket file left here is stale.
  removeStale(path);
  const server = createServer((socket) => void serve(socket, run, log));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => resolve());
  });
  chmodSync(path, 0o600);
  return {
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        removeStale(path);
      }),
  };
}

async function serve(socket: Socket, run: AdminRunner, log: Logger): Promise<void> {
  socket.setTimeout(TIMEOUT_MS, () => socket.destroy());
  socket.on('error', () => {});
  const args = await readRequest(socket);
  if (args === undefined) {
    socket.end(`${JSON.stringify({ code: 2, stdout: '', stderr: 'Invalid admin request\n' })}\n`);
    return;
  }
  const answer: AdminAnswer = { code: 1, stdout: '', stderr: '' };
  try {
    answer.code = await run(args, { out: (t) => (answer.stdout += t), err: (t) => (answer.stderr += t) });
  } catch (err) {
    log.error('admin command failed', { err });
    answer.stderr += 'The command failed; see the server log\n';
  }
  socket.end(`${JSON.stringify(answer)}\n`);
}

/** The request's arguments: a list of at most 8 short strings, or undefined for anything else. */
function readRequest(socket: Socket): Promise<string[] | undefined> {
  return new Promise((resolve) => {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.length > MAX_REQUEST_BYTES) {
        socket.destroy();
        resolve(undefined);
        return;
      }
      const end = text.indexOf('\n');
      if (end === -1) return;
      socket.removeAllListeners('data');
      resolve(parseArgs(text.slice(0, end)));
    });
    socket.on('close', () => resolve(undefined));
  });
}

function parseArgs(line: string): string[] | undefined {
  try {
    const { args } = JSON.parse(line) as { args?: unknown };
    const valid =
      Array.isArray(args) && args.length <= 8 && args.every((a) => typeof a === 'string' && a.length <= 200);
    return valid ? (args as string[]) : undefined;
  } catch {
    return undefined;
  }
}

/** Asks the server holding DATA_DIR to run `args`; undefined when no server answers there. */
export function sendAdminCommand(dataDir: string, args: readonly string[]): Promise<AdminAnswer | undefined> {
  return new Promise((resolve) => {
    const socket = createConnection(adminSocketPath(dataDir));
    let text = '';
    socket.setTimeout(TIMEOUT_MS, () => socket.destroy());
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${JSON.stringify({ args })}\n`));
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('error', () => resolve(undefined));
    socket.on('close', () => {
      try {
        resolve(JSON.parse(text) as AdminAnswer);
      } catch {
        resolve(undefined);
      }
    });
  });
}

function removeStale(path: string): void {
  try {
    unlinkSync(path);
  } catch {
    // nothing there
  }
}
