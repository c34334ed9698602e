import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CONTENT_TYPE, createRegistry, formatNumber } from '../../lib/metrics/registry.ts';
import { validateExposition } from '../support/exposition-grammar.ts';

describe('createRegistry()', () => {
  it('counter() renders HELP, TYPE and one sample per label set', () => {
    const r = createRegistry();
    const c = r.counter('jobs_total', 'Jobs done.', ['queue', 'result']);
    c.inc({ queue: 'mail', result: 'ok' });
    c.inc({ queue: 'mail', result: 'ok' }, 2);
    c.inc({ queue: 'sms', result: 'failed' }, 0.5);
    assert.equal(
      r.render(),
      '# HELP jobs_total Jobs done.\n' +
        '# TYPE jobs_total counter\n' +
        'jobs_total{queue="mail",result="ok"} 3\n' +
        'jobs_total{queue="sms",result="failed"} 0.5\n',
    );
  });

  it('counter() without labels renders 0 before the first increment', () => {
    const r = createRegistry();
    r.counter('starts_total', 'Starts.');
    assert.equal(r.render(), '# HELP starts_total Starts.\n# TYPE starts_total counter\nstarts_total 0\n');
  });

  it('counter.labels() returns a child that increments the same series as inc(labels)', () => {
    const r = createRegistry();
    const c = r.counter('hits_total', 'Hits.', ['route', 'status']);
    const child = c.labels('/a', 200);
    child.inc();
    child.inc(4);
    c.inc({ route: '/a', status: 200 });
    assert.match(r.render(), /^hits_total\{route="\/a",status="200"\} 6$/m);
    assert.equal(r.render().match(/^hits_total\{/gm)?.length, 1);
  });

  it('counter.inc() rejects negative and NaN increments', () => {
    const c = createRegistry().counter('x_total', 'X.');
    assert.throws(() => c.inc(undefined, -1), {
      name: 'RangeError',
      message: 'Counter x_total cannot be incremented by -1',
    });
    assert.throws(() => c.inc(undefined, Number.NaN), RangeError);
    assert.throws(() => c.labels().inc(-2), RangeError);
  });

  it('counter.inc() rejects missing, extra and wrongly counted labels', () => {
    const c = createRegistry().counter('y_total', 'Y.', ['a', 'b']);
    assert.throws(() => c.inc({ a: '1' }), { message: 'Metric y_total takes labels a, b' });
    assert.throws(() => c.inc({ a: '1', c: '2' }), { message: 'Metric y_total is missing label b' });
    assert.throws(() => c.inc({ a: '1', b: '2', c: '3' }), TypeError);
    assert.throws(() => c.labels('1'), { message: 'Metric y_total takes 2 label values, got 1' });
  });

  it('gauge() sets, increments and decrements', () => {
    const r = createRegistry();
    const g = r.gauge('queue_depth', 'Items waiting.', ['queue']);
    g.set(10, { queue: 'a' });
    g.inc({ queue: 'a' }, 5);
    g.dec({ queue: 'a' });
    const b = g.labels('b');
    b.inc();
    b.inc();
    b.dec(3);
    assert.equal(
      r.render(),
      '# HELP queue_depth Items waiting.\n# TYPE queue_depth gauge\n' +
        'queue_depth{queue="a"} 14\nqueue_depth{queue="b"} -1\n',
    );
  });

  it('gauge() calls collect before every render', () => {
    const r = createRegistry();
    let reads = 0;
    const g = r.gauge('reads', 'Times read.', [], () => g.set(++reads));
    assert.match(r.render(), /^reads 1$/m);
    assert.match(r.render(), /^reads 2$/m);
  });

  it('histogram() renders cumulative buckets with +Inf, _sum and _count', () => {
    const r = createRegistry();
    const h = r.histogram('latency_seconds', 'Latency.', ['route'], [0.1, 0.5, 1]);
    for (const v of [0.05, 0.1, 0.3, 0.7, 2]) h.observe(v, { route: '/x' });
    assert.equal(
      r.render(),
      '# HELP latency_seconds Latency.\n' +
        '# TYPE latency_seconds histogram\n' +
        'latency_seconds_bucket{route="/x",le="0.1"} 2\n' +
        'latency_seconds_bucket{route="/x",le="0.5"} 3\n' +
        'latency_seconds_bucket{route="/x",le="1"} 4\n' +
        'latency_seconds_bucket{route="/x",le="+Inf"} 5\n' +
        'latency_seconds_sum{route="/x"} 3.15\n' +
        'latency_seconds_count{route="/x"} 5\n',
    );
  });

  it('histogram() without labels renders le as the only label and zeros before observations', () => {
    const r = createRegistry();
    const h = r.histogram('size_bytes', 'Size.', [], [1024, Infinity]);
    assert.equal(
      r.render(),
      '# HELP size_bytes Size.\n# TYPE size_bytes histogram\n' +
        'size_bytes_bucket{le="1024"} 0\nsize_bytes_bucket{le="+Inf"} 0\nsize_bytes_sum 0\nsize_bytes_count 0\n',
    );
    h.labels().observe(4096);
    assert.match(
      r.render(),
      /^size_bytes_bucket\{le="1024"\} 0\nsize_bytes_bucket\{le="\+Inf"\} 1\nsize_bytes_sum 4096\nsize_bytes_count 1$/m,
    );
  });

  it('histogram() rejects NaN observations and bad bucket lists', () => {
    const r = createRegistry();
    const h = r.histogram('h_seconds', 'H.', [], [1]);
    assert.throws(() => h.observe(Number.NaN), { message: 'Histogram h_seconds cannot observe NaN' });
    assert.throws(() => r.histogram('b1', 'B.', [], [1, 1]), /strictly increasing/);
    assert.throws(() => r.histogram('b2', 'B.', [], [2, 1]), /strictly increasing/);
    assert.throws(() => r.histogram('b3', 'B.', [], [Number.NaN]), /strictly increasing/);
    assert.throws(() => r.histogram('b4', 'B.', [], []), /at least one finite bucket/);
    assert.throws(() => r.histogram('b5', 'B.', ['le'], [1]), /Invalid label name/);
  });

  it('render() escapes label values (backslash, quote, newline) and HELP text (backslash, newline)', () => {
    const r = createRegistry();
    r.counter('esc_total', 'Say "hi" \\ then\nbye.', ['v']).inc({ v: 'a\\b"c\nd' });
    assert.equal(
      r.render(),
      '# HELP esc_total Say "hi" \\\\ then\\nbye.\n# TYPE esc_total counter\nesc_total{v="a\\\\b\\"c\\nd"} 1\n',
    );
  });

  it('formatNumber() renders +Inf, -Inf, NaN and integers without exponent', () => {
    assert.equal(formatNumber(Infinity), '+Inf');
    assert.equal(formatNumber(-Infinity), '-Inf');
    assert.equal(formatNumber(Number.NaN), 'NaN');
    assert.equal(formatNumber(1e21), '1000000000000000000000');
    assert.equal(formatNumber(-2e22), '-20000000000000000000000');
    assert.equal(formatNumber(123456789), '123456789');
    assert.equal(formatNumber(0.25), '0.25');
    assert.equal(formatNumber(-0), '0');
  });

  it('gauge() renders infinite and NaN values in Prometheus spelling', () => {
    const r = createRegistry();
    const g = r.gauge('odd', 'Odd values.', ['k']);
    g.set(Infinity, { k: 'a' });
    g.set(-Infinity, { k: 'b' });
    g.set(Number.NaN, { k: 'c' });
    assert.match(r.render(), /odd\{k="a"\} \+Inf\nodd\{k="b"\} -Inf\nodd\{k="c"\} NaN\n$/);
  });

  it('registry refuses invalid metric and label names and duplicate registrations', () => {
    const r = createRegistry();
    for (const bad of ['1abc', 'a-b', '', 'é']) assert.throws(() => r.counter(bad, 'X.'), /Invalid metric name/);
    for (const bad of ['__reserved', '1a', 'a:b', 'a-b'])
      assert.throws(() => r.counter(`ok_${bad.length}_total`, 'X.', [bad]), /Invalid label name/);
    assert.throws(() => r.counter('dup_labels_total', 'X.', ['a', 'a']), /Duplicate label name/);
    r.counter('ns:ok_total', 'Colons are allowed in metric names.');
    r.histogram('req_seconds', 'R.', [], [1]);
    assert.throws(() => r.gauge('req_seconds', 'R.'), { message: 'Metric already registered: req_seconds' });
    assert.throws(() => r.counter('req_seconds_count', 'R.'), {
      message: 'Metric already registered: req_seconds_count',
    });
  });

  it('registry folds label sets beyond maxSeries into one overflow series labelled "other"', () => {
    const r = createRegistry();
    const c = r.counter('paths_total', 'Paths.', ['path', 'method'], { maxSeries: 2 });
    c.inc({ path: '/a', method: 'GET' });
    c.inc({ path: '/b', method: 'GET' });
    c.inc({ path: '/c', method: 'GET' });
    c.labels('/d', 'POST').inc(2);
    c.inc({ path: '/a', method: 'GET' });
    assert.equal(
      r.render(),
      '# HELP paths_total Paths.\n# TYPE paths_total counter\n' +
        'paths_total{path="/a",method="GET"} 2\npaths_total{path="/b",method="GET"} 1\n' +
        'paths_total{path="other",method="other"} 3\n',
    );
  });

  it('registry caps a metric at 1000 series by default, and createRegistry() sets another default', () => {
    const r = createRegistry();
    const c = r.counter('raw_total', 'Raw.', ['path']);
    for (let i = 0; i < 1500; i++) c.inc({ path: `/item/${i}` });
    const lines = r
      .render()
      .split('\n')
      .filter((l) => l.startsWith('raw_total{'));
    assert.equal(lines.length, 1001);
    assert.ok(lines.includes('raw_total{path="other"} 500'));
    const small = createRegistry({ maxSeries: 3 });
    const g = small.gauge('g', 'G.', ['k']);
    for (const k of ['a', 'b', 'c', 'd']) g.set(1, { k });
    assert.match(small.render(), /g\{k="c"\} 1\ng\{k="other"\} 1\n$/);
  });

  it('registry keeps label values that contain the key separator apart', () => {
    const r = createRegistry();
    const c = r.counter('sep_total', 'Sep.', ['a', 'b']);
    c.labels('x\u0001y', 'z').inc();
    c.labels('x', 'y\u0001z').inc();
    assert.equal(
      r
        .render()
        .split('\n')
        .filter((l) => l.startsWith('sep_total{')).length,
      2,
    );
  });

  it('render() sorts series by label values whatever the insertion order, metrics in registration order', () => {
    const r = createRegistry();
    const b = r.counter('b_total', 'B.', ['k']);
    const a = r.counter('a_total', 'A.', ['k']);
    for (const k of ['zeta', 'alpha', 'mid']) b.inc({ k });
    a.inc({ k: 'x' });
    const samples = r
      .render()
      .split('\n')
      .filter((l) => l !== '' && !l.startsWith('#'));
    assert.deepEqual(samples, [
      'b_total{k="alpha"} 1',
      'b_total{k="mid"} 1',
      'b_total{k="zeta"} 1',
      'a_total{k="x"} 1',
    ]);
  });

  it('render() of an empty registry is the empty string', () => {
    assert.equal(createRegistry().render(), '');
  });

  it('CONTENT_TYPE is the text exposition format 0.0.4 type', () => {
    assert.equal(CONTENT_TYPE, 'text/plain; version=0.0.4; charset=utf-8');
  });

  it('render() output passes the exposition grammar check with every metric kind and hostile values', () => {
    const r = createRegistry({ maxSeries: 3 });
    const c = r.counter('c_total', 'Counter with "quotes" and \\ and\nnewline.', ['v']);
    for (const v of ['plain', 'q"uote', 'back\\slash', 'new\nline', '{}=,']) c.inc({ v });
    const g = r.gauge('g', 'Gauge.', ['v']);
    g.set(Infinity, { v: 'inf' });
    g.set(Number.NaN, { v: 'nan' });
    g.set(1e21, { v: 'big' });
    const h = r.histogram('h_seconds', 'Histogram.', ['route'], [0.001, 0.5, 10]);
    for (const [v, route] of [
      [0.0001, '/a'],
      [0.7, '/a'],
      [100, '/b'],
      [0.5, '/"c"'],
    ] as const)
      h.observe(v, { route });
    r.histogram('empty_seconds', 'Never observed.', [], [1]);
    assert.deepEqual(validateExposition(r.render()), []);
  });
});

describe('validateExposition()', () => {
  // The grammar check guards the renderer only if it can fail: each of these must be caught.
  const bad: Array<[what: string, text: string, problem: RegExp]> = [
    ['sample before TYPE', 'x 1\n', /x has no TYPE line/],
    ['missing final newline', '# TYPE x counter\nx 1', /^output does not end with a line feed$/],
    ['bad label escape', '# TYPE x counter\nx{a="\\t"} 1\n', /invalid escape \\t/],
    ['unquoted label value', '# TYPE x counter\nx{a=b} 1\n', /not quoted/],
    ['reserved label name', '# TYPE x counter\nx{__a="b"} 1\n', /invalid label name "__a"/],
    ['bad value', '# TYPE x counter\nx 1,5\n', /invalid value part/],
    ['Infinity spelled the JavaScript way', '# TYPE x gauge\nx Infinity\n', /invalid value part/],
    ['two TYPE lines', '# TYPE x counter\n# TYPE x counter\nx 1\n', /second TYPE for x/],
    ['interleaved families', '# TYPE x counter\n# TYPE y counter\nx 1\n', /x is not grouped under its TYPE line/],
    ['duplicate series', '# TYPE x counter\nx{a="1"} 1\nx{a="1"} 2\n', /duplicate series/],
    ['bad HELP escape', '# HELP x a \\" b\n# TYPE x counter\nx 1\n', /HELP text has an invalid escape/],
    ['histogram without +Inf', '# TYPE h histogram\nh_bucket{le="1"} 1\nh_sum 1\nh_count 1\n', /no \+Inf bucket/],
    [
      'histogram +Inf differs from _count',
      '# TYPE h histogram\nh_bucket{le="+Inf"} 2\nh_sum 1\nh_count 3\n',
      /\+Inf bucket differs from _count/,
    ],
    [
      'histogram not cumulative',
      '# TYPE h histogram\nh_bucket{le="1"} 2\nh_bucket{le="+Inf"} 1\nh_sum 1\nh_count 1\n',
      /not cumulative/,
    ],
    ['histogram without _sum', '# TYPE h histogram\nh_bucket{le="+Inf"} 1\nh_count 1\n', /missing _count or _sum/],
  ];
  for (const [what, text, problem] of bad) {
    it(`validateExposition() reports ${what}`, () => {
      const problems = validateExposition(text);
      assert.ok(
        problems.some((p) => problem.test(p)),
        `expected ${problem} among ${JSON.stringify(problems)}`,
      );
    });
  }

  it('validateExposition() accepts a hand-written valid exposition', () => {
    const text =
      '# HELP x X.\n# TYPE x counter\nx{a="q\\"\\\\\\n"} 1\n' +
      '# TYPE h histogram\nh_bucket{le="1"} 1\nh_bucket{le="+Inf"} 2\nh_sum 3.5\nh_count 2\n';
    assert.deepEqual(validateExposition(text), []);
  });
});
