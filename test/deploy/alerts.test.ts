// YAML sanity for deploy/alerts.yml without a YAML library: the file keeps one fixed layout
// (single-quoted one-line strings), so each rule's fields can be read line by line.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createAppMetrics, METRIC_NAMES } from '../../lib/metrics/app-metrics.ts';

const text = readFileSync(new URL('../../deploy/alerts.yml', import.meta.url), 'utf8');

interface Rule {
  alert: string;
  expr: string | undefined;
  for: string | undefined;
  severity: string | undefined;
  summary: string | undefined;
  runbook: string | undefined;
}

// A single-quoted YAML scalar on one line; '' is an escaped quote.
function field(block: string, indent: number, key: string): string | undefined {
  const m = new RegExp(`^ {${indent}}${key}: '((?:[^']|'')*)'$`, 'm').exec(block);
  return m?.[1]?.replaceAll("''", "'");
}

function parseRules(yaml: string): Rule[] {
  return yaml
    .split(/^ {6}- alert: /m)
    .slice(1)
    .map((block) => ({
      alert: block.slice(0, block.indexOf('\n')),
      expr: field(block, 8, 'expr'),
      for: /^ {8}for: (\d+[smhd])$/m.exec(block)?.[1],
      severity: /^ {8}labels:\n {10}severity: (\w+)$/m.exec(block)?.[1],
      summary: field(block, 10, 'summary'),
      runbook: field(block, 10, 'runbook'),
    }));
}

const KEYWORDS = new Set(['and', 'or', 'unless', 'bool', 'offset']);

/** Metric names an expression selects: identifiers that are not functions, keywords, labels or numbers. */
function metricNames(expr: string): string[] {
  const stripped = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""')
    .replace(/\{[^}]*\}/g, '')
    .replace(/\[[^\]]*\]/g, '')
    .replace(/\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, '')
    .replace(/\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b/gi, '0');
  const names: string[] = [];
  for (const m of stripped.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?/g)) {
    if (m[2] === undefined && !KEYWORDS.has(m[1] as string)) names.push(m[1] as string);
  }
  return names;
}

function exportedSeriesNames(): Set<string> {
  const metrics = createAppMetrics();
  const rendered = metrics.render();
  metrics.close();
  const names = new Set<string>(['up']);
  for (const name of METRIC_NAMES) {
    names.add(name);
    if (rendered.includes(`# TYPE ${name} histogram\n`))
      for (const s of ['_bucket', '_sum', '_count']) names.add(name + s);
  }
  return names;
}

const rules = parseRules(text);

describe('deploy/alerts.yml', () => {
  it('alerts.yml has the groups/rules layout, space indentation and nine rules', () => {
    assert.match(text, /^groups:\n {2}- name: chat-server\n {4}rules:\n/m);
    assert.ok(!text.includes('\t'), 'no tabs in YAML');
    for (const line of text.split('\n'))
      assert.equal((/^ */.exec(line)?.[0].length ?? 0) % 2, 0, `odd indentation: ${line}`);
    assert.equal(rules.length, 9);
    assert.equal(text.match(/^ {6}- alert: /gm)?.length, rules.length);
  });

  it('every rule has expr, for, labels.severity, annotations.summary and a one-line annotations.runbook', () => {
    for (const rule of rules) {
      assert.ok(rule.expr, `${rule.alert}: expr`);
      assert.ok(rule.for, `${rule.alert}: for`);
      assert.match(rule.severity ?? '', /^(critical|warning)$/, `${rule.alert}: labels.severity`);
      assert.ok(rule.summary, `${rule.alert}: annotations.summary`);
      assert.ok((rule.runbook ?? '').length > 20, `${rule.alert}: annotations.runbook`);
    }
  });

  it('alert names are unique CamelCase names', () => {
    const names = rules.map((r) => r.alert);
    assert.equal(new Set(names).size, names.length);
    for (const name of names) assert.match(name, /^ChatServer[A-Z][A-Za-z]+$/);
  });

  it('every metric an expr selects is exported by app-metrics (or is up)', () => {
    const exported = exportedSeriesNames();
    for (const rule of rules) {
      const used = metricNames(rule.expr ?? '');
      assert.ok(used.length > 0, `${rule.alert} selects no metric`);
      for (const name of used) assert.ok(exported.has(name), `${rule.alert} uses unknown metric ${name}`);
    }
  });

  it('the rules cover auth, rate limits, upstream errors, latency, breakers, pool, event loop, uptime, memory', () => {
    const used = new Set(rules.flatMap((r) => metricNames(r.expr ?? '')));
    for (const name of [
      'auth_failures_total',
      'rate_limit_rejections_total',
      'upstream_requests_total',
      'upstream_time_to_first_token_seconds_bucket',
      'upstream_breaker_state',
      'db_pool_connections',
      'nodejs_eventloop_delay_p99_seconds',
      'up',
      'process_resident_memory_bytes',
    ]) {
      assert.ok(used.has(name), `no rule uses ${name}`);
    }
    const byName = new Map(rules.map((r) => [r.alert, r]));
    assert.equal(byName.get('ChatServerDbPoolSaturated')?.expr, 'db_pool_connections{state="waiting"} > 0');
    assert.equal(byName.get('ChatServerDbPoolSaturated')?.for, '5m');
    assert.equal(byName.get('ChatServerEventLoopLag')?.expr, 'nodejs_eventloop_delay_p99_seconds > 0.1');
  });

  it('metricNames() finds selectors and ignores functions, labels, keywords and numbers', () => {
    assert.deepEqual(metricNames('sum by (le) (rate(a_total{x="y z"}[5m])) / b_count > 1.5e9 and on (instance) up'), [
      'a_total',
      'b_count',
      'up',
    ]);
  });
});
