// A switchable TCP proxy on 127.0.0.1 for fault injection: pass bytes through, stall them
// (a network partition: connections stay open and nothing answers), or reset connections.
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';

/**
 * `pass` forwards; `blackhole` accepts and never answers, and stalls open connections too
 * (bytes wait in the kernel buffers, as behind a partition that later heals); `reset`
 * destroys open connections and every new one.
 */
export type ProxyMode = 'pass' | 'blackhole' | 'reset';

export interface TcpProxy {
  readonly host: string;
  readonly port: number;
  readonly mode: ProxyMode;
  /** Switches mode; open connections follow at once (`pass` resumes stalled ones). */
  setMode(mode: ProxyMode): void;
  /** Client connections currently open through the proxy. */
  connections(): number;
  /** Bytes the target has sent through the proxy so far, over all connections. */
  bytesFromTarget(): number;
  /** Destroys every connection and stops listening. */
  close(): Promise<void>;
}

/**
 * Resets a connection (RST); one already ending is destroyed instead. libuv refuses a reset while a
 * shutdown is pending, and Node then never closes the handle: the process spins at exit.
 */
export function resetConnection(socket: Socket): void {
  if (socket.writableEnded) socket.destroy();
  else socket.resetAndDestroy();
}

interface Link {
  client: Socket;
  upstream: Socket | undefined;
  flowing: boolean;
}

/** Starts a proxy on 127.0.0.1 port 0 in front of `target`. */
export async function startTcpProxy(
  target: { host: string; port: number },
  initialMode: ProxyMode = 'pass',
): Promise<TcpProxy> {
  let mode = initialMode;
  let fromTarget = 0;
  const links = new Set<Link>();

  function drop(link: Link): void {
    links.delete(link);
    link.client.destroy();
    link.upstream?.destroy();
  }

  function forward(link: Link): void {
    if (link.flowing) return;
    link.flowing = true;
    if (link.upstream === undefined) {
      const upstream = connect(target.port, target.host);
      link.upstream = upstream;
      upstream.on('error', () => drop(link));
      upstream.on('close', () => drop(link));
      upstream.on('data', (chunk: Buffer) => {
        fromTarget += chunk.length;
      });
    }
    link.client.pipe(link.upstream);
    link.upstream.pipe(link.client);
    link.client.resume();
    link.upstream.resume();
  }

  function stall(link: Link): void {
    link.flowing = false;
    // Stop reading on both sides: bytes pile up in the kernel buffers, as on a dead network path.
    link.client.unpipe();
    link.upstream?.unpipe();
    link.client.pause();
    link.upstream?.pause();
  }

  const server = createServer({ pauseOnConnect: true }, (client) => {
    if (mode === 'reset') {
      resetConnection(client);
      return;
    }
    const link: Link = { client, upstream: undefined, flowing: false };
    links.add(link);
    client.on('error', () => drop(link));
    client.on('close', () => drop(link));
    if (mode === 'pass') forward(link);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };

  return {
    host: '127.0.0.1',
    port,
    get mode() {
      return mode;
    },
    setMode(next) {
      mode = next;
      for (const link of [...links]) {
        if (next === 'pass') forward(link);
        else if (next === 'blackhole') stall(link);
        else {
          links.delete(link);
          resetConnection(link.client);
          if (link.upstream !== undefined) resetConnection(link.upstream);
        }
      }
    },
    connections: () => links.size,
    bytesFromTarget: () => fromTarget,
    async close() {
      for (const link of [...links]) drop(link);
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
