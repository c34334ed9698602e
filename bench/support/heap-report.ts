// V8 heap readings of a relay under the memory test, and how they are reported: read over the
// inspector at the measuring points only; a failed reading leaves its figures out of the report.
import { join } from 'node:path';
import { fmt, table } from './harness.ts';
import { type HeapFigures, heapAfterGc, heapNow, writeHeapSnapshot } from './inspector.ts';

/** V8 figures read over the inspector (KiB); each is undefined without an inspector. */
export interface HeapPoint {
  /** Right after the RSS samples with the streams open, no GC forced. */
  now?: HeapFigures;
  /** BENCH_SETTLE_S later, still no GC forced: what V8's own heuristics keep for idle streams. */
  settled?: HeapFigures;
  afterGc?: HeapFigures;
}

/** One inspector reading; a failure leaves the figures out instead of failing the run. */
export async function readHeap(
  url: string | undefined,
  log: (line: string) => void,
  how: 'now' | 'afterGc',
): Promise<HeapFigures | undefined> {
  if (url === undefined) return undefined;
  try {
    return how === 'now' ? await heapNow(url) : await heapAfterGc(url);
  } catch (err) {
    log(`SSE memory: inspector reading failed: ${(err as Error).message}`);
    return undefined;
  }
}

/** BENCH_HEAP_SNAPSHOT_DIR=dir writes idle/open heap snapshots there (for scripts/heap-diff.ts). */
export async function maybeSnapshot(url: string | undefined, name: string, log: (line: string) => void): Promise<void> {
  const dir = process.env.BENCH_HEAP_SNAPSHOT_DIR;
  if (dir === undefined || dir === '' || url === undefined) return;
  const path = join(dir, `${name}.heapsnapshot`);
  await writeHeapSnapshot(url, path);
  log(`SSE memory: heap snapshot written to ${path}`);
}

/** The V8 breakdown: per stream = (with streams open − idle) / streams, idle always after a forced GC. */
export function heapTable(name: string, idle: HeapPoint, open: HeapPoint, n: number): string {
  const base = idle.afterGc;
  if (base === undefined || n === 0) return '';
  const keys = ['rss', 'heapUsed', 'heapTotal', 'external', 'arrayBuffers'] as const;
  const mib = (f: HeapFigures) => keys.map((k) => fmt(f[k] / 1024, 1));
  const per = (f: HeapFigures) => keys.map((k) => fmt((f[k] - base[k]) / n, 1));
  const points: Array<[string, HeapFigures | undefined]> = [
    ['streams open, 1–3 s after opening', open.now],
    ['streams open, settled (no forced GC)', open.settled],
    ['streams open, after forced GC', open.afterGc],
  ];
  const rows = [['idle, after forced GC (MiB)', ...mib(base)]];
  const spaceLines = [`idle after GC: ${spaces(base)}`];
  for (const [label, f] of points) {
    if (f === undefined) continue;
    rows.push([`${label} (MiB)`, ...mib(f)], [`**KiB per stream, ${label}**`, ...per(f)]);
    spaceLines.push(`${label}: ${spaces(f)}`);
  }
  return [
    '',
    `Where it goes in ${name}: \`process.memoryUsage()\` read over the inspector (Runtime.evaluate; for ` +
      `"after forced GC", HeapProfiler.collectGarbage twice first).`,
    '',
    table(['point', 'rss', 'heapUsed', 'heapTotal', 'external', 'arrayBuffers'], rows),
    '',
    `Committed V8 heap spaces ≥ 1 MiB, in MiB: ${spaceLines.join('; ')}.`,
  ].join('\n');
}

function spaces(f: HeapFigures): string {
  return Object.entries(f.spaces)
    .filter(([, kib]) => kib >= 1024)
    .map(([name, kib]) => `${name} ${fmt(kib / 1024, 1)}`)
    .join(', ');
}
