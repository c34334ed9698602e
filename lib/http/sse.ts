// Server-sent event formatting (WHATWG HTML §9.2): one place that turns events into bytes.
import type { SseEvent } from './types.ts';

const LINE_BREAK = /[\r\n]/;

/** Formats one event; `event`, `id` and comments must not contain CR or LF (they would forge fields). */
export function formatSse(event: SseEvent): string {
  let out = '';
  if (event.comment !== undefined) {
    if (LINE_BREAK.test(event.comment)) throw new TypeError('SSE comment must not contain CR or LF');
    out += `: ${event.comment}\n`;
  }
  if (event.event !== undefined) {
    if (LINE_BREAK.test(event.event)) throw new TypeError('SSE event name must not contain CR or LF');
    out += `event: ${event.event}\n`;
  }
  if (event.id !== undefined) {
    // The spec also ignores ids containing NUL.
    if (LINE_BREAK.test(event.id) || event.id.includes('\0'))
      throw new TypeError('SSE id must not contain CR, LF or NUL');
    out += `id: ${event.id}\n`;
  }
  if (event.data !== undefined) {
    const text: string | undefined = typeof event.data === 'string' ? event.data : JSON.stringify(event.data);
    if (text === undefined) throw new TypeError('SSE data must be a string or JSON-serialisable');
    // A multi-line string becomes several data fields; JSON never contains a raw line break.
    for (const line of text.split(/\r\n|\r|\n/)) out += `data: ${line}\n`;
  }
  if (out === '') throw new TypeError('SSE event must have a field');
  return `${out}\n`;
}
