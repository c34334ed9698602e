// The Portkey AI gateway (@portkey-ai/gateway, open source) as an SSE relay peer, bound to loopback.
//
// Usage: node peers/portkey.ts PORT   (prints 'listening' once the gateway accepts connections)
// The gateway parses only `--port=N` and has no host option: it listens on every interface. Every
// listen() without a host is bound to 127.0.0.1 here before the gateway's code runs, and the process
// exits if a server still ends up on another address. `--headless` drops its web UI and log feed.
import net from 'node:net';
import { announce, HOST, peerPort } from './common.ts';

const port = peerPort();
const listen = net.Server.prototype.listen;

/** listen() with the host forced to loopback when the caller left it out. */
function loopbackListen(this: net.Server, ...args: unknown[]): net.Server {
  const [first] = args;
  if (typeof first === 'number' && (args[1] === undefined || typeof args[1] === 'function')) {
    // listen(port, cb) and listen(port, undefined, cb) both mean "all interfaces" in node:net
    if (typeof args[1] === 'function') args.splice(1, 0, HOST);
    else args[1] = HOST;
  } else if (typeof first === 'object' && first !== null && (first as net.ListenOptions).host === undefined) {
    args[0] = { ...(first as net.ListenOptions), host: HOST };
  }
  this.once('listening', () => {
    const address = this.address();
    if (address === null || typeof address === 'string') return;
    if (address.address !== HOST) {
      process.stderr.write(`portkey peer: a server listens on ${address.address}, not ${HOST}; stopping\n`);
      process.exit(1);
    }
    if (address.port === port) announce();
  });
  return (listen as (...a: unknown[]) => net.Server).apply(this, args);
}
net.Server.prototype.listen = loopbackListen as typeof listen;

process.argv.splice(2, process.argv.length - 2, `--port=${port}`, '--headless');
await import('@portkey-ai/gateway/build/start-server.js');
