// Prometheus text exposition format 0.0.4, written by hand: counters, gauges, histograms, render().
//
// Hot paths stay cheap: a series is found by one string key (label values joined with \u0001)
// in a Map, and `labels(...)` returns a child bound to its series so callers can resolve it once.
//
// Label sets are bounded: each metric holds at most `maxSeries` series (default 1000). A label
// combination first seen after that is folded into one overflow series whose every label value
// is "other", so a caller that leaks raw paths or user input into a label costs one extra series,
// never unbounded memory (a gauge's overflow series holds whichever value was written last).
// Seeing `…{route="other"}` in a scrape means a metric hit its cap.

/** The Content-Type of `render()`'s output. */
export const CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';
/** Series a metric may hold before new label combinations fold into the overflow series. */
export const DEFAULT_MAX_SERIES = 1000;
/** The value of every label on the overflow series. */
export const OVERFLOW_LABEL_VALUE = 'other';

/** A label value; numbers (status codes) are rendered with String(). */
export type LabelValue = string | number;
/** Label values by label name; every label of the metric must be given. */
export type Labels = Readonly<Record<string, LabelValue>>;

/** Per-metric (or, given to createRegistry(), per-registry) options. */
export interface MetricOptions {
  /** Series cap for this metric; see the file comment. */
  maxSeries?: number;
}

/** A counter bound to one label set, resolved once by `counter.labels(...)`. */
export interface CounterChild {
  inc(by?: number): void;
}
/** A monotonically increasing count; `inc()` throws on a negative or NaN step. */
export interface Counter {
  inc(labels?: Labels, by?: number): void;
  labels(...values: LabelValue[]): CounterChild;
}
/** A gauge bound to one label set. */
export interface GaugeChild {
  set(value: number): void;
  inc(by?: number): void;
  dec(by?: number): void;
}
/** A value that goes up and down, or is sampled by a collect hook at render time. */
export interface Gauge {
  set(value: number, labels?: Labels): void;
  inc(labels?: Labels, by?: number): void;
  dec(labels?: Labels, by?: number): void;
  labels(...values: LabelValue[]): GaugeChild;
}
/** A histogram bound to one label set. */
export interface HistogramChild {
  observe(value: number): void;
}
/** Observations counted into fixed buckets, with their sum and count; `observe()` throws on NaN. */
export interface Histogram {
  observe(value: number, labels?: Labels): void;
  labels(...values: LabelValue[]): HistogramChild;
}

/** A set of metrics and the renderer of their text exposition. */
export interface Registry {
  counter(name: string, help: string, labelNames?: readonly string[], options?: MetricOptions): Counter;
  /** `collect` runs before each render, to refresh values that are sampled rather than counted. */
  gauge(
    name: string,
    help: string,
    labelNames?: readonly string[],
    collect?: () => void,
    options?: MetricOptions,
  ): Gauge;
  /** `buckets` are the finite upper bounds, strictly increasing; `+Inf` is always added. */
  histogram(
    name: string,
    help: string,
    labelNames: readonly string[],
    buckets: readonly number[],
    options?: MetricOptions,
  ): Histogram;
  /** The whole exposition, one `# HELP`/`# TYPE` pair per metric, series sorted by label values. */
  render(): string;
}

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const KEY_SEPARATOR = '\u0001';

interface Series<S> {
  /** `a="x",b="y"`, escaped once when the series is created; '' without labels. */
  labelText: string;
  state: S;
}

/** The series of one metric, keyed by joined label values, with the overflow rule applied. */
interface Family<S> {
  get(values: readonly LabelValue[]): S;
  getByLabels(labels: Labels | undefined): S;
  sorted(): Series<S>[];
}

/** Formats a sample value the way Prometheus parses it: +Inf, -Inf, NaN, integers without exponent. */
export function formatNumber(value: number): string {
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  if (Number.isNaN(value)) return 'NaN';
  // String(1e21) is "1e+21"; a BigInt prints the same integer in full.
  if (Number.isInteger(value) && Math.abs(value) >= 1e21) return BigInt(value).toString();
  return String(value);
}

/** Escapes a label value: backslash, double quote and line feed (exposition format 0.0.4). */
export function escapeLabelValue(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => (c === '\\' ? '\\\\' : c === '"' ? '\\"' : '\\n'));
}

/** Escapes HELP text: backslash and line feed only (quotes are literal there). */
export function escapeHelp(help: string): string {
  return help.replace(/[\\\n]/g, (c) => (c === '\\' ? '\\\\' : '\\n'));
}

// A value holding the key separator would collide with another label set; U+FFFD keeps keys unique.
function keyPart(value: LabelValue): string {
  const s = String(value);
  return s.includes(KEY_SEPARATOR) ? s.replaceAll(KEY_SEPARATOR, '\uFFFD') : s;
}

function checkLabelNames(metric: string, labelNames: readonly string[], reserved: readonly string[]): void {
  const seen = new Set<string>();
  for (const label of labelNames) {
    if (!LABEL_NAME.test(label) || label.startsWith('__') || reserved.includes(label)) {
      throw new TypeError(`Invalid label name for metric ${metric}: ${JSON.stringify(label)}`);
    }
    if (seen.has(label)) throw new TypeError(`Duplicate label name for metric ${metric}: ${label}`);
    seen.add(label);
  }
}

function createFamily<S>(metric: string, labelNames: readonly string[], maxSeries: number, init: () => S): Family<S> {
  const series = new Map<string, Series<S>>();
  const overflowParts = labelNames.map(() => OVERFLOW_LABEL_VALUE);
  const overflowKey = overflowParts.join(KEY_SEPARATOR);

  function lookup(key: string, parts: readonly string[]): S {
    const found = series.get(key);
    if (found !== undefined) return found.state;
    // Past the cap, new combinations share the overflow series, which alone may exceed it (maxSeries + 1).
    if (series.size >= maxSeries && key !== overflowKey) return lookup(overflowKey, overflowParts);
    const labelText = labelNames.map((name, i) => `${name}="${escapeLabelValue(parts[i] ?? '')}"`).join(',');
    const entry = { labelText, state: init() };
    series.set(key, entry);
    return entry.state;
  }
  function get(values: readonly LabelValue[]): S {
    if (values.length !== labelNames.length) {
      throw new TypeError(`Metric ${metric} takes ${labelNames.length} label values, got ${values.length}`);
    }
    const parts = values.map(keyPart);
    return lookup(parts.join(KEY_SEPARATOR), parts);
  }
  function getByLabels(labels: Labels | undefined): S {
    if (labels === undefined) return get([]);
    if (Object.keys(labels).length !== labelNames.length) {
      throw new TypeError(`Metric ${metric} takes labels ${labelNames.join(', ') || '(none)'}`);
    }
    let key = '';
    for (let i = 0; i < labelNames.length; i++) {
      const value = labels[labelNames[i] as string];
      if (value === undefined) throw new TypeError(`Metric ${metric} is missing label ${labelNames[i]}`);
      key = i === 0 ? keyPart(value) : key + KEY_SEPARATOR + keyPart(value);
    }
    const found = series.get(key);
    return found !== undefined ? found.state : get(labelNames.map((name) => labels[name] as LabelValue));
  }
  function sorted(): Series<S>[] {
    return [...series.entries()].sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0)).map((e) => e[1]);
  }
  // A metric without labels has exactly one series, exported as 0 from the start.
  if (labelNames.length === 0) get([]);
  return { get, getByLabels, sorted };
}

function checkIncrement(metric: string, by: number): void {
  // Counters only go up (a reset is a process restart); NaN would poison the series for good.
  if (!(by >= 0)) throw new RangeError(`Counter ${metric} cannot be incremented by ${by}`);
}

function checkBuckets(metric: string, buckets: readonly number[]): number[] {
  const finite = buckets.filter((b) => b !== Infinity);
  if (finite.length === 0) throw new RangeError(`Histogram ${metric} needs at least one finite bucket`);
  for (let i = 0; i < finite.length; i++) {
    const bound = finite[i] as number;
    if (!Number.isFinite(bound) || (i > 0 && bound <= (finite[i - 1] as number))) {
      throw new RangeError(`Histogram ${metric} buckets must be finite and strictly increasing`);
    }
  }
  return finite;
}

interface HistogramState {
  /** Non-cumulative counts per bucket; the last slot is +Inf. Rendered cumulatively. */
  counts: number[];
  sum: number;
  count: number;
}
type Cell = { n: number };
type Render = (out: string[]) => void;

function braced(labelText: string): string {
  return labelText === '' ? '' : `{${labelText}}`;
}

function renderScalars(out: string[], name: string, family: Family<Cell>): void {
  for (const s of family.sorted()) out.push(`${name}${braced(s.labelText)} ${formatNumber(s.state.n)}`);
}

function buildCounter(name: string, family: Family<Cell>): [Counter, Render] {
  const counter: Counter = {
    inc(labels, by = 1) {
      checkIncrement(name, by);
      family.getByLabels(labels).n += by;
    },
    labels(...values) {
      const cell = family.get(values);
      return {
        inc(by = 1) {
          checkIncrement(name, by);
          cell.n += by;
        },
      };
    },
  };
  return [counter, (out) => renderScalars(out, name, family)];
}

function buildGauge(name: string, family: Family<Cell>, collect: (() => void) | undefined): [Gauge, Render] {
  const gauge: Gauge = {
    set(value, labels) {
      family.getByLabels(labels).n = value;
    },
    inc(labels, by = 1) {
      family.getByLabels(labels).n += by;
    },
    dec(labels, by = 1) {
      family.getByLabels(labels).n -= by;
    },
    labels(...values) {
      const cell = family.get(values);
      return {
        set(value) {
          cell.n = value;
        },
        inc(by = 1) {
          cell.n += by;
        },
        dec(by = 1) {
          cell.n -= by;
        },
      };
    },
  };
  const render: Render = (out) => {
    collect?.();
    renderScalars(out, name, family);
  };
  return [gauge, render];
}

function buildHistogram(
  name: string,
  family: Family<HistogramState>,
  bounds: readonly number[],
  les: readonly string[],
): [Histogram, Render] {
  function observe(state: HistogramState, value: number): void {
    if (Number.isNaN(value)) throw new RangeError(`Histogram ${name} cannot observe NaN`);
    let i = 0;
    while (i < bounds.length && value > (bounds[i] as number)) i++;
    (state.counts[i] as number)++;
    state.sum += value;
    state.count++;
  }
  function render(out: string[]): void {
    for (const s of family.sorted()) {
      const prefix = s.labelText === '' ? '' : `${s.labelText},`;
      let cumulative = 0;
      for (let i = 0; i < les.length; i++) {
        cumulative += s.state.counts[i] as number;
        out.push(`${name}_bucket{${prefix}le="${les[i]}"} ${formatNumber(cumulative)}`);
      }
      out.push(
        `${name}_sum${braced(s.labelText)} ${formatNumber(s.state.sum)}`,
        `${name}_count${braced(s.labelText)} ${formatNumber(s.state.count)}`,
      );
    }
  }
  const histogram: Histogram = {
    observe: (value, labels) => observe(family.getByLabels(labels), value),
    labels(...values) {
      const state = family.get(values);
      return { observe: (value) => observe(state, value) };
    },
  };
  return [histogram, render];
}

/** Creates an empty registry; `options.maxSeries` is the default cap for its metrics. */
export function createRegistry(options: MetricOptions = {}): Registry {
  const taken = new Set<string>();
  const renderers: Render[] = [];

  // Validates and reserves the name(s), then returns a renderer that writes HELP and TYPE first.
  function register<S>(
    type: string,
    name: string,
    help: string,
    labelNames: readonly string[],
    opts: MetricOptions,
    init: () => S,
  ) {
    const maxSeries = opts.maxSeries ?? options.maxSeries ?? DEFAULT_MAX_SERIES;
    if (!METRIC_NAME.test(name)) throw new TypeError(`Invalid metric name: ${JSON.stringify(name)}`);
    if (!Number.isInteger(maxSeries) || maxSeries < 1)
      throw new RangeError(`Metric ${name} maxSeries must be a positive integer`);
    checkLabelNames(name, labelNames, type === 'histogram' ? ['le'] : []);
    // A histogram also owns name_bucket, name_sum and name_count; a counter named like one would clash.
    const names = type === 'histogram' ? [name, `${name}_bucket`, `${name}_sum`, `${name}_count`] : [name];
    for (const n of names) if (taken.has(n)) throw new TypeError(`Metric already registered: ${n}`);
    for (const n of names) taken.add(n);
    const header = [`# HELP ${name} ${escapeHelp(help)}`, `# TYPE ${name} ${type}`];
    const family = createFamily(name, labelNames, maxSeries, init);
    return {
      family,
      add(render: Render): void {
        renderers.push((out) => {
          out.push(...header);
          render(out);
        });
      },
    };
  }

  return {
    counter(name, help, labelNames = [], opts = {}) {
      const { family, add } = register('counter', name, help, labelNames, opts, () => ({ n: 0 }));
      const [counter, render] = buildCounter(name, family);
      add(render);
      return counter;
    },
    gauge(name, help, labelNames = [], collect, opts = {}) {
      const { family, add } = register('gauge', name, help, labelNames, opts, () => ({ n: 0 }));
      const [gauge, render] = buildGauge(name, family, collect);
      add(render);
      return gauge;
    },
    histogram(name, help, labelNames, buckets, opts = {}) {
      const bounds = checkBuckets(name, buckets);
      const les = [...bounds.map(formatNumber), '+Inf'];
      const init = () => ({ counts: les.map(() => 0), sum: 0, count: 0 });
      const { family, add } = register<HistogramState>('histogram', name, help, labelNames, opts, init);
      const [histogram, render] = buildHistogram(name, family, bounds, les);
      add(render);
      return histogram;
    },
    render() {
      const out: string[] = [];
      for (const renderMetric of renderers) renderMetric(out);
      return out.length === 0 ? '' : `${out.join('\n')}\n`;
    },
  };
}
