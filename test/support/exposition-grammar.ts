// A strict, independent checker of the Prometheus text exposition format 0.0.4, for tests.
//
// Written from the format description, not from lib/metrics/registry.ts, so that it can catch
// the renderer's mistakes: HELP/TYPE lines, sample lines `name{label="value",…} number`, label
// value escapes, TYPE before a family's samples, families not interleaved, no duplicate series,
// and for histograms cumulative buckets ending in +Inf whose count equals `_count`.

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const VALUE = /^(?:[+-]?Inf|NaN|[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

interface Sample {
  name: string;
  labels: Map<string, string>;
  value: number;
}

interface HistogramSeries {
  buckets: Array<[le: number, count: number]>;
  sum?: number;
  count?: number;
}

/** Parses `{a="x",b="y"}` strictly; returns the labels and the rest of the line, or a problem. */
function parseLabels(text: string): { labels: Map<string, string>; rest: string } | string {
  const labels = new Map<string, string>();
  let i = 1;
  if (text[i] === '}') return { labels, rest: text.slice(2) };
  for (;;) {
    const eq = text.indexOf('=', i);
    if (eq < 0) return 'label without "="';
    const name = text.slice(i, eq);
    if (!LABEL_NAME.test(name) || name.startsWith('__')) return `invalid label name ${JSON.stringify(name)}`;
    if (labels.has(name)) return `duplicate label ${name}`;
    if (text[eq + 1] !== '"') return `label ${name} value is not quoted`;
    let value = '';
    for (i = eq + 2; text[i] !== '"'; i++) {
      const c = text[i];
      if (c === undefined) return `label ${name} value is not terminated`;
      if (c === '\\') {
        const next = text[++i];
        if (next === '\\' || next === '"') value += next;
        else if (next === 'n') value += '\n';
        else return `label ${name} value has invalid escape \\${next ?? ''}`;
      } else value += c;
    }
    labels.set(name, value);
    i++;
    if (text[i] === '}') return { labels, rest: text.slice(i + 1) };
    if (text[i] !== ',') return `expected "," or "}" after label ${name}`;
    i++;
  }
}

function parseSample(line: string): Sample | string {
  const nameEnd = line.search(/[{ ]/);
  if (nameEnd <= 0) return 'sample line without a value';
  const name = line.slice(0, nameEnd);
  if (!NAME.test(name)) return `invalid metric name ${JSON.stringify(name)}`;
  let labels = new Map<string, string>();
  let rest = line.slice(nameEnd);
  if (rest.startsWith('{')) {
    const parsed = parseLabels(rest);
    if (typeof parsed === 'string') return parsed;
    ({ labels, rest } = parsed);
  }
  // One space, the value, and optionally one space and an integer millisecond timestamp.
  const m = /^ (\S+)(?: (-?\d+))?$/.exec(rest);
  if (m === null || !VALUE.test(m[1] as string)) return `invalid value part ${JSON.stringify(rest)}`;
  const raw = m[1] as string;
  const value = raw.endsWith('Inf') ? (raw.startsWith('-') ? -Infinity : Infinity) : Number(raw);
  return { name, labels, value };
}

function parseHelp(text: string): string | undefined {
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '\\' && text[i + 1] !== '\\' && text[i + 1] !== 'n') return 'HELP text has an invalid escape';
    if (text[i] === '\\') i++;
  }
  return undefined;
}

function seriesKey(labels: Map<string, string>, without?: string): string {
  return JSON.stringify([...labels].filter(([k]) => k !== without).sort(([a], [b]) => (a < b ? -1 : 1)));
}

/** Which family a sample belongs to, given the family's TYPE; undefined if the name does not fit. */
function familyOf(sample: string, family: string, type: string): string | undefined {
  if (sample === family) return type === 'histogram' ? undefined : '';
  if (type === 'histogram' || type === 'summary') {
    for (const suffix of ['_bucket', '_sum', '_count']) if (sample === family + suffix) return suffix;
  }
  return undefined;
}

function checkHistograms(family: string, series: Map<string, HistogramSeries>, problems: string[]): void {
  for (const [key, s] of series) {
    const where = `histogram ${family} ${key}`;
    const les = s.buckets.map(([le]) => le);
    if (les.at(-1) !== Infinity) problems.push(`${where}: no +Inf bucket`);
    for (let i = 1; i < s.buckets.length; i++) {
      const [le, count] = s.buckets[i] as [number, number];
      const [prevLe, prevCount] = s.buckets[i - 1] as [number, number];
      if (!(le > prevLe)) problems.push(`${where}: buckets not in increasing le order`);
      if (count < prevCount) problems.push(`${where}: bucket counts are not cumulative`);
    }
    if (s.count === undefined || s.sum === undefined) problems.push(`${where}: missing _count or _sum`);
    else if (s.buckets.at(-1)?.[1] !== s.count) problems.push(`${where}: +Inf bucket differs from _count`);
  }
}

/** Checks a whole exposition; returns the problems found, each naming its line (empty when valid). */
export function validateExposition(text: string): string[] {
  const problems: string[] = [];
  if (text !== '' && !text.endsWith('\n')) problems.push('output does not end with a line feed');
  const typed = new Map<string, string>();
  const helped = new Set<string>();
  const seen = new Set<string>();
  let current: { family: string; type: string; histograms: Map<string, HistogramSeries> } | undefined;
  const finish = () => current?.type === 'histogram' && checkHistograms(current.family, current.histograms, problems);
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  const checkLine = (line: string, index: number): void => {
    const at = `line ${index + 1}`;
    const comment = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (line.startsWith('#')) {
      if (comment === null) return void problems.push(`${at}: comment is neither HELP nor TYPE`);
      const [, kind, name = '', rest = ''] = comment;
      if (!NAME.test(name)) return void problems.push(`${at}: invalid metric name in ${kind}`);
      if (kind === 'HELP') {
        if (helped.has(name)) problems.push(`${at}: second HELP for ${name}`);
        helped.add(name);
        const bad = parseHelp(rest);
        if (bad !== undefined) problems.push(`${at}: ${bad}`);
        return;
      }
      if (!TYPES.has(rest)) return void problems.push(`${at}: unknown TYPE ${JSON.stringify(rest)}`);
      if (typed.has(name)) return void problems.push(`${at}: second TYPE for ${name}`);
      finish();
      typed.set(name, rest);
      current = { family: name, type: rest, histograms: new Map() };
      return;
    }
    const sample = parseSample(line);
    if (typeof sample === 'string') return void problems.push(`${at}: ${sample}`);
    const suffix = current === undefined ? undefined : familyOf(sample.name, current.family, current.type);
    if (current === undefined || suffix === undefined) {
      const known = [...typed.keys()].some((family) => sample.name === family || sample.name.startsWith(`${family}_`));
      return void problems.push(
        `${at}: ${sample.name} ${known ? 'is not grouped under its TYPE line' : 'has no TYPE line before it'}`,
      );
    }
    const id = `${sample.name}${seriesKey(sample.labels)}`;
    if (seen.has(id)) problems.push(`${at}: duplicate series ${id}`);
    seen.add(id);
    if (current.type !== 'histogram') return;
    const key = seriesKey(sample.labels, 'le');
    const series = current.histograms.get(key) ?? { buckets: [] };
    current.histograms.set(key, series);
    if (suffix !== '_bucket' && sample.labels.has('le')) return void problems.push(`${at}: ${sample.name} carries le`);
    if (suffix === '_bucket') {
      const le = sample.labels.get('le');
      if (le === undefined || !VALUE.test(le)) return void problems.push(`${at}: bucket without a valid le`);
      series.buckets.push([le === '+Inf' ? Infinity : Number(le), sample.value]);
    } else if (suffix === '_sum') series.sum = sample.value;
    else series.count = sample.value;
  };
  for (const [index, line] of lines.entries()) checkLine(line, index);
  finish();
  return problems;
}

/** The value of one sample, `name{labels}` exactly as rendered (e.g. `chat_active_streams`); undefined when absent. */
export function sampleValue(text: string, series: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}
