// A test reporter that fails the run when a test file's results did not all reach the runner.
// Each test process sends its own summary last; Node can drop the tail of what a process sent
// (nodejs/node#64833, under --test-force-exit), and the run would then pass with fewer tests than
// ran. blocking-report.ts removes the known cause; whatever else cuts a file short is caught here.
// npm test runs the files in parts (parts.ts): a part's process sends the summary for its files.
import { resolve } from 'node:path';
import type { TestEvent } from 'node:test/reporters';
import { partOfFile } from './parts.ts';

// The events of a file's own tests; its output lines (test:stdout, test:stderr) can come after its summary.
const RESULTS = new Set(['test:start', 'test:pass', 'test:fail', 'test:plan', 'test:summary']);

export default async function* verdicts(source: AsyncIterable<TestEvent>): AsyncGenerator<string> {
  const files = new Set<string>();
  const summarised = new Set<string>();
  for await (const event of source) {
    const named = (event.data as { file?: string } | undefined)?.file;
    if (named === undefined || !RESULTS.has(event.type)) continue;
    const file = resolve(named);
    files.add(file);
    if (event.type === 'test:summary') summarised.add(file);
  }
  const partOf = partOfFile();
  const cut = [...files].filter((file) => !summarised.has(file) && !summarised.has(partOf.get(file) ?? file));
  // A part that ended whole but never ran one of its files.
  const unrun = [...partOf].filter(([file, part]) => summarised.has(part) && !files.has(file)).map(([file]) => file);
  if (cut.length === 0 && unrun.length === 0) return;
  process.exitCode = 1;
  for (const file of cut)
    yield `✖ ${file}: its results stopped before its summary; tests may be missing from the counts\n`;
  for (const file of unrun) yield `✖ ${file}: its part ended without running it\n`;
}
