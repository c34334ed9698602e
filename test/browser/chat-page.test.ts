// The README's browser snippet in a real Chromium, on a page of another origin: CORS, incremental
// delivery, readable errors, and a reload in the middle of an answer that resumes it.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { Browser, Page } from 'playwright-core';
import { BROWSER_UNAVAILABLE, launchBrowser, readmeSnippet, servePage } from '../support/browser.ts';
import { type ChatHarness, startChat } from '../support/chat.ts';

const WORDS = Array.from({ length: 20 }, (_, i) => `w${i} `);
// Expressions evaluated in the page (strings: they run in the browser, not in this process).
const STATUS_SET = "document.getElementById('status').textContent !== ''";

/** The page: the README's functions, a place for the answer, and a status line the test reads. */
function pageHtml(): string {
  return `<!doctype html><html><body><pre id="out"></pre><p id="status"></p><script>
${readmeSnippet('browser-chat')}
const out = document.getElementById('out');
const status = document.getElementById('status');
const { api, token } = window.chatConfig;
function remember(saved) {
  sessionStorage.setItem('chat', JSON.stringify({ ...saved, text: out.textContent }));
}
function show(promise) {
  promise.then(
    (result) => { status.textContent = result === undefined ? 'ended' : 'done:' + result.finishReason; },
    (err) => { status.textContent = 'error:' + err.message; },
  );
}
window.startChat = (message) => show(chat(api, token, message, out, remember));
const kept = sessionStorage.getItem('chat');
if (kept !== null) {
  const saved = JSON.parse(kept);
  out.textContent = saved.text;
  show(resume(api, token, saved, out, remember));
}
</script></body></html>`;
}

describe('the README snippet in Chromium', () => {
  let h: ChatHarness;
  let browser: Browser;
  let allowed: { origin: string; close(): Promise<void> };
  let foreign: { origin: string; close(): Promise<void> };

  before(async () => {
    if (BROWSER_UNAVAILABLE) return;
    allowed = await servePage(pageHtml());
    foreign = await servePage(pageHtml());
    h = await startChat({ CORS_ORIGINS: allowed.origin, LOG_LEVEL: 'info' });
    browser = await launchBrowser();
  });
  after(async () => {
    await browser?.close();
    await h?.close();
    await allowed?.close();
    await foreign?.close();
  });

  async function open(origin: string, token = h.key): Promise<{ page: Page; console: string[] }> {
    const context = await browser.newContext();
    const page = await context.newPage();
    const console: string[] = [];
    page.on('console', (message) => console.push(message.text()));
    await page.addInitScript(`window.chatConfig = ${JSON.stringify({ api: h.server.url, token })};`);
    await page.goto(origin);
    return { page, console };
  }

  const status = async (page: Page): Promise<string> => (await page.locator('#status').textContent()) ?? '';
  const text = async (page: Page): Promise<string> => (await page.locator('#out').textContent()) ?? '';

  it('streams into a page on an allowed origin, the first delta before the upstream sends its last', {
    skip: BROWSER_UNAVAILABLE,
  }, async () => {
    h.fake.queue({ kind: 'slow', chunks: WORDS, chunkDelayMs: 100 });
    const index = h.fake.requests.length;
    const { page } = await open(allowed.origin);
    await page.evaluate("startChat('Twenty words')");
    await page.waitForFunction("document.getElementById('out').textContent !== ''");
    assert.equal(h.fake.requests[index]?.finished, false, 'the upstream is still sending');
    await page.waitForFunction(STATUS_SET);
    assert.equal(await status(page), 'done:stop');
    assert.equal(await text(page), WORDS.join(''));
    const preflight = h.server.lines().find((l) => l['method'] === 'OPTIONS' && l['route'] === '/v1/chat');
    assert.equal(preflight?.['status'], 204, 'the preflight was answered');
  });

  it('gives a page on an origin not in CORS_ORIGINS nothing, and the upstream is never called', {
    skip: BROWSER_UNAVAILABLE,
  }, async () => {
    const before = h.fake.requests.length;
    const { page, console } = await open(foreign.origin);
    await page.evaluate("startChat('Let me in')");
    await page.waitForFunction(STATUS_SET);
    assert.equal(await status(page), 'error:Failed to fetch');
    assert.equal(await text(page), '');
    assert.ok(
      console.some((line) => line.includes('CORS policy')),
      console.join('\n'),
    );
    assert.equal(h.fake.requests.length, before);
  });

  it('lets the page read a 401 problem+json: its title, code and request id', {
    skip: BROWSER_UNAVAILABLE,
  }, async () => {
    const { page } = await open(allowed.origin, 'not-a-key');
    await page.evaluate("startChat('Hello')");
    await page.waitForFunction(STATUS_SET);
    assert.match(await status(page), /^error:Invalid credentials \(INVALID_TOKEN, request [0-9a-f-]{36}\)$/);
  });

  it('shows the whole answer once after a reload in its middle, resumed after the last delta shown', {
    skip: BROWSER_UNAVAILABLE,
  }, async () => {
    h.fake.queue({ kind: 'slow', chunks: WORDS, chunkDelayMs: 100 });
    const { page } = await open(allowed.origin);
    await page.evaluate("startChat('Twenty words')");
    await page.waitForFunction("document.getElementById('out').textContent.split(' ').length > 3");
    await page.reload(); // the page goes away mid-answer; the answer goes on on the server
    await page.waitForFunction(STATUS_SET);
    assert.equal(await status(page), 'done:stop');
    assert.equal(await text(page), WORDS.join(''));
  });
});
