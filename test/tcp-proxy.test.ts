// The fault-injection proxy's reset, in a process of its own: a reset must never keep that
// process from exiting.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { childProcessEnv } from './support/config.ts';
import { runNode } from './support/run-node.ts';

const PROXY = new URL('./support/tcp-proxy.ts', import.meta.url).href;

/** A server that resets its one connection, after ending it first when `end` is set. */
const script = (end: boolean): string => `import { connect, createServer } from 'node:net';
import { resetConnection } from '${PROXY}';
const server = createServer((socket) => {
  socket.on('error', (err) => console.log('server error ' + err.code));
  if (${end}) socket.end();
  resetConnection(socket);
  server.close();
});
server.listen(0, '127.0.0.1', () => {
  const client = connect(server.address().port, '127.0.0.1');
  client.on('error', (err) => console.log('client error ' + err.code));
  client.on('close', () => console.log('client closed'));
});
`;

let dir: string;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'tcp-proxy-'));
  await writeFile(join(dir, 'reset.mjs'), script(false));
  await writeFile(join(dir, 'reset-ending.mjs'), script(true));
});
after(() => rm(dir, { recursive: true, force: true }));

test('resetConnection() sends a reset: the peer sees ECONNRESET', async () => {
  const { code, stdout } = await runNode(['reset.mjs'], dir, childProcessEnv());
  assert.equal(code, 0);
  assert.equal(stdout, 'client error ECONNRESET\nclient closed\n');
});

test('resetConnection() of a connection already ending closes it, and the process exits', async () => {
  // A reset while the shutdown is pending fails with EINVAL and leaves the process spinning at exit.
  const { code, stdout } = await runNode(['reset-ending.mjs'], dir, childProcessEnv());
  assert.equal(code, 0);
  assert.equal(stdout, 'client closed\n');
});
