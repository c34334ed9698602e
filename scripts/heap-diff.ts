// Compares two V8 heap snapshots by what their objects are, to see what one open stream costs.
//
//   npx node --max-old-space-size=6000 scripts/heap-diff.ts idle.heapsnapshot open.heapsnapshot [streams] [rows]
//
// Snapshots come from the SSE memory test (BENCH_HEAP_SNAPSHOT_DIR=dir, see bench/sse.ts).
// Groups nodes by type + constructor/function name and prints the growth in count and self size,
// per stream when `streams` is given. Self size only: where a retained chain matters, open the
// snapshots in Chrome DevTools' comparison view.
import { readFileSync } from 'node:fs';

interface Snapshot {
  snapshot: { meta: { node_fields: string[]; node_types: [string[], ...unknown[]] } };
  nodes: number[];
  strings: string[];
}

interface Group {
  count: number;
  bytes: number;
}

/** Names that make thousands of groups (every string, every number) are folded into their type. */
const FOLD_TYPES = new Set([
  'string',
  'concatenated string',
  'sliced string',
  'number',
  'bigint',
  'symbol',
  'code',
  'regexp',
]);

function groups(path: string): Map<string, Group> {
  const snap = JSON.parse(readFileSync(path, 'utf8')) as Snapshot;
  const fields = snap.snapshot.meta.node_fields;
  const types = snap.snapshot.meta.node_types[0];
  const width = fields.length;
  const typeAt = fields.indexOf('type');
  const nameAt = fields.indexOf('name');
  const sizeAt = fields.indexOf('self_size');
  const out = new Map<string, Group>();
  for (let i = 0; i < snap.nodes.length; i += width) {
    const type = types[snap.nodes[i + typeAt] as number] ?? '?';
    const name = FOLD_TYPES.has(type) ? '' : (snap.strings[snap.nodes[i + nameAt] as number] ?? '?').slice(0, 80);
    const key = `${type} ${name}`.trim();
    const g = out.get(key) ?? { count: 0, bytes: 0 };
    g.count += 1;
    g.bytes += snap.nodes[i + sizeAt] as number;
    out.set(key, g);
  }
  return out;
}

function main(): void {
  const [before, after, streamsArg = '1', rowsArg = '40'] = process.argv.slice(2);
  if (before === undefined || after === undefined) {
    process.stderr.write('Usage: node scripts/heap-diff.ts BEFORE.heapsnapshot AFTER.heapsnapshot [streams] [rows]\n');
    process.exit(2);
  }
  const n = Number(streamsArg);
  const a = groups(before);
  const b = groups(after);
  const rows: Array<{ key: string; count: number; bytes: number }> = [];
  for (const [key, g] of b) {
    const prev = a.get(key) ?? { count: 0, bytes: 0 };
    rows.push({ key, count: g.count - prev.count, bytes: g.bytes - prev.bytes });
  }
  rows.sort((x, y) => y.bytes - x.bytes);
  const total = rows.reduce((s, r) => s + r.bytes, 0);
  const lines = [
    `self-size growth: ${(total / 1024 / n).toFixed(2)} KiB per stream (${n} streams)`,
    '',
    '| group | count/stream | bytes/stream |',
    '| --- | --- | --- |',
  ];
  for (const r of rows.slice(0, Number(rowsArg)))
    lines.push(`| ${r.key} | ${(r.count / n).toFixed(2)} | ${Math.round(r.bytes / n)} |`);
  process.stdout.write(`${lines.join('\n')}\n`);
}

main();
