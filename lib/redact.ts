// Redaction of log text: configured secret values, whole and as any run of 12 or more of their
// characters, and strings shaped like credentials whose values the process cannot know.
//
// Runs are found in one pass over the text with a rolling hash of 12-character windows, so the
// cost does not grow with the number or length of the secrets.

/** What a redacted secret is replaced with. */
export const REDACTED = '[REDACTED]';
/** The shortest run of a configured secret's characters that is redacted wherever it appears. */
export const MIN_SECRET_RUN = 12;

// Credentials whose values nobody configured, by their shape.
const CREDENTIAL_PATTERN = new RegExp(
  [
    'csk_[A-Za-z0-9_-]{16,}', // our API keys
    'eyJ[A-Za-z0-9_-]{6,}\\.[A-Za-z0-9_-]{6,}\\.[A-Za-z0-9_-]*', // JWTs
    '(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{16,}', // provider keys: sk-…, sk-proj-…, sk-ant-…
    '(?<=[Bb][Ee][Aa][Rr][Ee][Rr] +)[A-Za-z0-9._~+/-]{8,}=*', // RFC 6750 §2.1 token68 after "Bearer "
  ].join('|'),
  'g',
);
// A secret shorter than this is not redacted at all: it would turn ordinary words into [REDACTED].
const MIN_SECRET_CHARS = 4;
// A URL-valued secret (DATABASE_URL) is redacted whole only: its host, port and database name are
// not secret and appear in ordinary error messages; its password is configured as a secret of its own.
const URL_SECRET = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//;
// Scrubbing a cut-off head looks this far past the cut, so that a credential across it is still recognised.
const MIN_CUT_MARGIN_CHARS = 512;

const HASH_BASE = 0x01000193;
const TABLE_BITS = 16;
const HASH_SHIFT = 32 - TABLE_BITS;
/** HASH_BASE to the power MIN_SECRET_RUN: takes the outgoing character out of the rolling hash. */
const BASE_POW_RUN = power(HASH_BASE, MIN_SECRET_RUN);

interface Window {
  form: string;
  offset: number;
  text: string;
}

interface RunIndex {
  /** One byte per hash bucket: 1 where some secret window hashes, so most positions cost one load. */
  table: Uint8Array;
  windows: Map<number, Window[]>;
}

/** Removes secrets from text. */
export interface Redactor {
  /** The text with every configured secret (whole or a run of 12+ of its characters) and credential shape redacted. */
  scrub(text: string): string;
  /** The first `maxChars` characters of text, scrubbed so that a secret across the cut is redacted, not halved. */
  head(text: string, maxChars: number): string;
}

/** Builds a redactor for these secret values; each is also searched for as JSON spells it, once and twice escaped. */
export function createRedactor(secrets: readonly string[]): Redactor {
  const urlForms: string[] = [];
  const shortForms: string[] = [];
  const runForms: string[] = [];
  for (const secret of secrets) {
    if (secret.length < MIN_SECRET_CHARS) continue;
    // Log lines are scrubbed after serialisation: a secret with a quote, backslash or control
    // character appears as JSON spells it (twice escaped when it sat in a JSON string).
    for (const form of new Set([secret, jsonEscaped(secret), jsonEscaped(jsonEscaped(secret))])) {
      if (URL_SECRET.test(secret)) urlForms.push(form);
      else if (form.length < MIN_SECRET_RUN) shortForms.push(form);
      else runForms.push(form);
    }
  }
  // Longest first, so a secret that contains another is redacted whole.
  const byLength = (a: string, b: string): number => b.length - a.length;
  urlForms.sort(byLength);
  shortForms.sort(byLength);
  const index = runForms.length === 0 ? undefined : buildRunIndex(runForms);
  const margin = Math.max(MIN_CUT_MARGIN_CHARS, ...urlForms.map((f) => f.length), ...runForms.map((f) => f.length));

  function scrub(text: string): string {
    // Whole URLs first: they contain their password, which is also a run secret.
    for (const form of urlForms) if (text.includes(form)) text = text.replaceAll(form, REDACTED);
    if (index !== undefined) text = redactRuns(text, index);
    for (const form of shortForms) if (text.includes(form)) text = text.replaceAll(form, REDACTED);
    CREDENTIAL_PATTERN.lastIndex = 0;
    if (CREDENTIAL_PATTERN.test(text)) {
      CREDENTIAL_PATTERN.lastIndex = 0;
      text = text.replace(CREDENTIAL_PATTERN, REDACTED);
    }
    return text;
  }
  return {
    scrub,
    head(text, maxChars) {
      if (text.length <= maxChars) return scrub(text);
      return scrub(text.slice(0, maxChars + margin)).slice(0, maxChars);
    },
  };
}

function jsonEscaped(text: string): string {
  return JSON.stringify(text).slice(1, -1);
}

function power(base: number, exponent: number): number {
  let result = 1;
  for (let i = 0; i < exponent; i++) result = Math.imul(result, base);
  return result;
}

/** The rolling hash of the MIN_SECRET_RUN characters of `text` from `start`. */
function hashWindow(text: string, start: number): number {
  let h = 0;
  for (let i = start; i < start + MIN_SECRET_RUN; i++) h = (Math.imul(h, HASH_BASE) + text.charCodeAt(i)) | 0;
  return h;
}

function buildRunIndex(forms: readonly string[]): RunIndex {
  const table = new Uint8Array(1 << TABLE_BITS);
  const windows = new Map<number, Window[]>();
  for (const form of forms) {
    for (let offset = 0; offset + MIN_SECRET_RUN <= form.length; offset++) {
      const h = hashWindow(form, offset);
      table[h >>> HASH_SHIFT] = 1;
      const window = { form, offset, text: form.slice(offset, offset + MIN_SECRET_RUN) };
      const list = windows.get(h);
      if (list === undefined) windows.set(h, [window]);
      else list.push(window);
    }
  }
  return { table, windows };
}

/** Replaces every run of MIN_SECRET_RUN or more characters of an indexed secret. */
function redactRuns(text: string, index: RunIndex): string {
  const ranges = findRuns(text, index);
  if (ranges.length === 0) return text;
  ranges.sort((a, b) => a[0] - b[0]);
  let out = '';
  let from = 0;
  let [start, end] = ranges[0] as [number, number];
  for (const [s, e] of ranges) {
    if (s > end) {
      out += `${text.slice(from, start)}${REDACTED}`;
      from = end;
      start = s;
    }
    if (e > end) end = e;
  }
  return `${out}${text.slice(from, start)}${REDACTED}${text.slice(end)}`;
}

/** [start, end) of each maximal run of a secret found in text; ranges may overlap. */
function findRuns(text: string, index: RunIndex): Array<[number, number]> {
  const ranges: Array<[number, number]> = [];
  const n = text.length;
  if (n < MIN_SECRET_RUN) return ranges;
  const { table, windows } = index;
  let h = hashWindow(text, 0);
  let coveredTo = 0;
  for (let end = MIN_SECRET_RUN; ; end++) {
    const start = end - MIN_SECRET_RUN;
    // A window inside a run already found can only lead to a run that reaches past it later.
    if (end > coveredTo && table[h >>> HASH_SHIFT] === 1) {
      const run = longestRun(text, start, windows.get(h));
      if (run !== undefined) {
        ranges.push(run);
        if (run[1] > coveredTo) coveredTo = run[1];
      }
    }
    if (end >= n) break;
    h = (Math.imul(h, HASH_BASE) + text.charCodeAt(end) - Math.imul(text.charCodeAt(start), BASE_POW_RUN)) | 0;
  }
  return ranges;
}

/** The longest stretch around `start` that matches a secret aligned with one of these windows. */
function longestRun(text: string, start: number, candidates: Window[] | undefined): [number, number] | undefined {
  let best: [number, number] | undefined;
  for (const { form, offset, text: window } of candidates ?? []) {
    if (!text.startsWith(window, start)) continue; // a hash collision
    let from = start;
    let formFrom = offset;
    while (from > 0 && formFrom > 0 && text.charCodeAt(from - 1) === form.charCodeAt(formFrom - 1)) {
      from--;
      formFrom--;
    }
    let to = start + MIN_SECRET_RUN;
    let formTo = offset + MIN_SECRET_RUN;
    while (to < text.length && formTo < form.length && text.charCodeAt(to) === form.charCodeAt(formTo)) {
      to++;
      formTo++;
    }
    if (best === undefined || to - from > best[1] - best[0]) best = [from, to];
  }
  return best;
}
