// A real Chromium (Debian's package, driven by playwright-core without any browser download) and
// a tiny static server, so a page can run on an origin of its own against the chat server.
import { existsSync, readFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type Browser, chromium } from 'playwright-core';

/** Where Debian installs Chromium; CHROMIUM_PATH overrides it. */
export const CHROMIUM_PATH = process.env['CHROMIUM_PATH'] || '/usr/bin/chromium';

/** A skip reason when no Chromium is installed here, else false (CI installs it). */
export const BROWSER_UNAVAILABLE: string | false = existsSync(CHROMIUM_PATH)
  ? false
  : `needs Chromium at ${CHROMIUM_PATH}`;

/** Starts headless Chromium; the flags keep it off the network it cannot reach here anyway. */
export function launchBrowser(): Promise<Browser> {
  return chromium.launch({
    executablePath: CHROMIUM_PATH,
    args: [
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
}

/** A server that answers every GET with `html`, on its own origin (127.0.0.1 and a port of its own). */
export async function servePage(html: string): Promise<{ origin: string; close(): Promise<void> }> {
  const server: Server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(html);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The fenced block of README.md right after `<!-- snippet: name -->`. */
export function readmeSnippet(name: string): string {
  const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
  const found = new RegExp(`<!-- snippet: ${name} -->\\n\`\`\`\\w+\\n([\\s\\S]*?)\\n\`\`\``).exec(readme);
  if (found?.[1] === undefined) throw new Error(`README has no snippet "${name}"`);
  return found[1];
}
