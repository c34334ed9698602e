import { startChat, readEvents } from '../test/support/chat.ts';
const h = await startChat({ MAX_CONCURRENT_STREAMS_PER_KEY: '1000', UPSTREAM_IDLE_TIMEOUT_MS: '300' });
const counts: Record<string, number> = {};
for (let i = 0; i < 100; i++) {
  h.fake.queue({ kind: 'reset', afterChunks: 1 });
  const t = Date.now();
  const frames = await readEvents(await h.chat({ message: 'x' }));
  const last = frames.at(-1);
  const k = `${frames.map(f => f.event).join(',')}:${(last?.data as any)?.code}`;
  counts[k] = (counts[k] ?? 0) + 1;
  if ((last?.data as any)?.code !== 'UPSTREAM_ERROR') console.log(i, Date.now() - t, k);
}
console.log(counts);
await h.close();
