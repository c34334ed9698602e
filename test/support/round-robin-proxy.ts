// A round-robin TCP load balancer on 127.0.0.1: each new client connection goes to the next
// target, skipping targets that refuse the connection (a killed instance), as a load balancer's
// connect failover would. Requests on one keep-alive connection stay on one target.
import { once } from 'node:events';
import { connect, createServer, type Socket } from 'node:net';

export interface Target {
  host: string;
  port: number;
}

export interface RoundRobinProxy {
  readonly host: string;
  readonly port: number;
  /** How many connections each target received, in target order. */
  connectionsPerTarget(): number[];
  /** Destroys every connection and stops listening. */
  close(): Promise<void>;
}

/** Starts the proxy on 127.0.0.1 port 0 in front of `targets`. */
export async function startRoundRobinProxy(targets: readonly Target[]): Promise<RoundRobinProxy> {
  if (targets.length === 0) throw new RangeError('A round-robin proxy needs at least one target');
  const counts = targets.map(() => 0);
  const sockets = new Set<Socket>();
  let next = 0;

  function track(socket: Socket): void {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  }

  /** Connects `client` to the next target that accepts, trying each target at most once. */
  function route(client: Socket, attemptsLeft: number): void {
    const index = next;
    next = (next + 1) % targets.length;
    const target = targets[index] as Target;
    const upstream = connect(target.port, target.host);
    track(upstream);
    let connected = false;
    upstream.once('connect', () => {
      connected = true;
      counts[index] = (counts[index] ?? 0) + 1;
      upstream.on('error', () => client.destroy());
      upstream.on('close', () => client.destroy());
      client.on('close', () => upstream.destroy());
      client.pipe(upstream);
      upstream.pipe(client);
      client.resume();
    });
    upstream.once('error', () => {
      if (!connected && attemptsLeft > 1 && !client.destroyed) route(client, attemptsLeft - 1);
      else client.destroy();
    });
  }

  const server = createServer({ pauseOnConnect: true }, (client) => {
    track(client);
    client.on('error', () => client.destroy());
    route(client, targets.length);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as { port: number };

  return {
    host: '127.0.0.1',
    port,
    connectionsPerTarget: () => [...counts],
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
