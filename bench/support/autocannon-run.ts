// One autocannon run, driven by run.ts when wrk is not installed: argv[2] is a JSON job, stdout one JSON result.
import autocannon from 'autocannon';

const job = JSON.parse(process.argv[2] ?? '{}') as {
  url: string;
  connections: number;
  durationS: number;
  headers: Record<string, string>;
};
const r = await autocannon({
  url: job.url,
  connections: job.connections,
  duration: job.durationS,
  headers: job.headers,
  pipelining: 1,
});
const out = {
  requests: r.requests.total,
  durationS: r.duration,
  p50ms: r.latency.p50,
  p99ms: r.latency.p99,
  non2xx: r.non2xx,
  errors: r.errors + r.timeouts,
};
process.stdout.write(`${JSON.stringify(out)}\n`);
