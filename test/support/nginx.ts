// Runs the system nginx in the foreground on a site file, inside an http {} block that carries
// Debian 12's http-wide settings, with its pid, logs and temp files in a temporary folder.
import { spawn } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createConnection, createServer } from 'node:net';
import { join } from 'node:path';
import { waitFor } from './chat.ts';

const NGINX = ['/usr/sbin/nginx', '/usr/bin/nginx'].find((path) => existsSync(path));

/** A skip reason when nginx is not installed, else false (CI installs it). */
export const NGINX_UNAVAILABLE: string | false = NGINX === undefined ? 'needs nginx (apt-get install nginx)' : false;

/** A running nginx; `stop()` it in after(). */
export interface Nginx {
  /** Sends SIGTERM (fast shutdown: open streams are cut) and waits for the exit; safe to call twice. */
  stop(): Promise<void>;
}

/** A TCP port nothing listens on right now on 127.0.0.1 (the kernel's pick for port 0). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** Debian 12's nginx.conf reduced to what a site inherits (its TLS and gzip settings), paths in `dir`. */
function mainConfig(dir: string): string {
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `  ${k}_temp_path ${join(dir, k)};`);
  return [
    // As root, workers run unprivileged as in production (Debian's is www-data).
    process.getuid?.() === 0 ? 'user nobody nogroup;' : '',
    'worker_processes 1;',
    `pid ${join(dir, 'nginx.pid')};`,
    `error_log ${join(dir, 'error.log')} info;`,
    'daemon off;',
    'events { worker_connections 256; }',
    'http {',
    '  ssl_protocols TLSv1 TLSv1.1 TLSv1.2 TLSv1.3;',
    '  ssl_prefer_server_ciphers on;',
    // Debian's gzip on, plus the API's types: a site that does not turn gzip off would compress them.
    '  gzip on;',
    '  gzip_types text/event-stream application/json;',
    '  access_log off;',
    ...temp,
    `  include ${join(dir, 'site.conf')};`,
    '}',
    '',
  ].join('\n');
}

/** Starts nginx on `site` under a new folder of `root` and resolves once `readyPort` accepts connections. */
export async function startNginx(root: string, site: string, readyPort: number): Promise<Nginx> {
  if (NGINX === undefined) throw new Error('nginx is not installed');
  const dir = mkdtempSync(join(root, 'nginx-'));
  chmodSync(dir, 0o755); // the workers' user creates its temp folders in here
  writeFileSync(join(dir, 'site.conf'), site);
  writeFileSync(join(dir, 'nginx.conf'), mainConfig(dir));
  const errorLog = join(dir, 'error.log');
  // -e: errors before the configuration is read go to our log, not the system's.
  const child = spawn(NGINX, ['-e', errorLog, '-p', `${dir}/`, '-c', join(dir, 'nginx.conf')], { stdio: 'ignore' });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  async function stop(): Promise<void> {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
  }
  try {
    await waitFor('nginx to listen', 10_000, async () => {
      if (child.exitCode !== null) throw new Error(`nginx exited: ${readFileSync(errorLog, 'utf8')}`);
      return (await accepts(readyPort)) ? true : undefined;
    });
  } catch (err) {
    await stop();
    throw err;
  }
  return { stop };
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
