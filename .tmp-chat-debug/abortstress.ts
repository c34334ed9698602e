import { startChat, openStream } from '../test/support/chat.ts';
import { request } from 'node:http';
const h = await startChat({ MAX_CONCURRENT_STREAMS_PER_KEY: '1000' });
h.fake.setBehaviour({ kind: 'slow', chunkDelayMs: 20, chunks: Array(50).fill('y') });
const tag = 'stress-' + Math.random().toString(36).slice(2, 8);
const payload = JSON.stringify({ message: tag });
async function one(delayMs: number) {
  await new Promise<void>((resolve) => {
    const req = request(`${h.server.url}/v1/chat`, { method: 'POST', agent: false, headers: { 'content-type': 'application/json', 'content-length': payload.length, authorization: `Bearer ${h.key}` } });
    req.on('error', () => resolve());
    req.on('response', (res) => { res.on('error', () => {}); res.resume(); });
    req.end(payload);
    setTimeout(() => { req.destroy(); resolve(); }, delayMs);
  });
}
for (let round = 0; round < 50; round++) {
  const jobs = [];
  for (let i = 0; i < 10; i++) jobs.push(one(Math.random() * 60));
  await Promise.all(jobs);
}
await new Promise((r) => setTimeout(r, 2000));
const pool = h.server.db.pool;
console.log({ slots: h.server.slots.inUse(), active: h.server.chat.active(), up: h.server.upstream.stats(), waiting: pool.waitingCount, busy: pool.totalCount - pool.idleCount, fakeOpen: h.fake.requests.filter(r => r.closedAt === undefined).length, fakeReqs: h.fake.requests.length });
const { rows } = await pool.query("select coalesce(a.status, 'MISSING') as status, a.error_code, count(*)::int from conversations c left join messages a on a.conversation_id = c.id and a.role = 'assistant' where c.title = $1 group by 1, 2", [tag]);
console.log(rows);
await h.close();
