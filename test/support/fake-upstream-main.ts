// Runs the fake upstream on its own, for benchmarks and manual tries with curl or the server.
//
//   node test/support/fake-upstream-main.ts [port] [--host 127.0.0.1] [--burst N] [--chunk-delay-ms MS]
//     [--huge-line BYTES] [--api-key KEY]
//
// Prints the base URL (for OPENAI_BASE_URL) on stdout and runs until SIGINT/SIGTERM.
import { parseArgs } from 'node:util';
import type { Behaviour } from './fake-upstream.ts';
import { startFakeUpstream } from './fake-upstream.ts';

/** Parses argv, starts the fake and closes it on a signal. */
async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      burst: { type: 'string' },
      'chunk-delay-ms': { type: 'string' },
      'api-key': { type: 'string' },
      'huge-line': { type: 'string' },
    },
  });
  const port = Number(positionals[0] ?? '0');
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`Invalid port: ${positionals[0]}`);
  const behaviour: Behaviour =
    values['huge-line'] !== undefined
      ? { kind: 'huge-line', bytes: Number(values['huge-line']) }
      : values.burst === undefined
        ? { kind: 'normal', chunkDelayMs: Number(values['chunk-delay-ms'] ?? '0') }
        : { kind: 'burst', count: Number(values.burst) };
  const fake = await startFakeUpstream({ host: values.host, port, apiKey: values['api-key'] });
  fake.setBehaviour(behaviour);
  process.stdout.write(`${fake.url}\n`);
  const stop = (): void => {
    void fake.close().then(() => process.exit(0));
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
