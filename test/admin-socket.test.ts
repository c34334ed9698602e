import assert from 'node:assert/strict';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { adminSocketPath, sendAdminCommand, startAdminSocket } from '../lib/admin-socket.ts';
import { createLogger } from '../lib/log.ts';

/** Sends raw bytes and resolves with everything the server answered before it closed. */
function raw(path: string, bytes: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = createConnection(path, () => socket.write(bytes));
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (text += chunk));
    socket.on('error', () => {});
    socket.on('close', () => resolve(text));
  });
}

describe('startAdminSocket()', () => {
  let dir: string;
  let close: () => Promise<void>;
  const seen: string[][] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'admin-socket-'));
    const admin = await startAdminSocket(
      dir,
      async (args, io) => {
        seen.push([...args]);
        io.out(`ran ${args.join(' ')}\n`);
        io.err('done\n');
        return args[0] === 'fail' ? 1 : 0;
      },
      createLogger({ level: 'silent' }),
    );
    close = admin.close;
  });
  after(async () => {
    await close?.();
    await rm(dir, { recursive: true, force: true });
  });

  it('runs the arguments sent by sendAdminCommand() and answers its output and exit code', async () => {
    assert.deepEqual(await sendAdminCommand(dir, ['list']), { code: 0, stdout: 'ran list\n', stderr: 'done\n' });
    assert.equal((await sendAdminCommand(dir, ['fail']))?.code, 1);
  });

  it('listens on a socket file only its owner can use', async () => {
    assert.equal((await stat(adminSocketPath(dir))).mode & 0o777, 0o600);
  });

  it('answers code 2 to a line that is not a list of at most 8 short strings, and runs nothing', async () => {
    const before = seen.length;
    for (const line of [
      'not json',
      '{"args":"list"}',
      '{"args":[1]}',
      `{"args":${JSON.stringify(new Array(9).fill('x'))}}`,
    ]) {
      assert.equal((JSON.parse(await raw(adminSocketPath(dir), `${line}\n`)) as { code: number }).code, 2, line);
    }
    assert.equal(seen.length, before);
  });

  it('cuts a request longer than 4 KiB without answering', async () => {
    assert.equal(await raw(adminSocketPath(dir), 'x'.repeat(5000)), '');
  });

  it('sendAdminCommand() answers undefined where no server listens', async () => {
    const empty = await mkdtemp(join(tmpdir(), 'admin-none-'));
    try {
      assert.equal(await sendAdminCommand(empty, ['list']), undefined);
    } finally {
      await rm(empty, { recursive: true, force: true });
    }
  });
});
