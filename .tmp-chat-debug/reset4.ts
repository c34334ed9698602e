import { startFakeUpstream } from '../test/support/fake-upstream.ts';
import { Agent, fetch as uf } from 'undici';
const fake = await startFakeUpstream();
fake.setBehaviour({ kind: 'reset', afterChunks: 1 });
for (const f of [uf, fetch]) {
const t = Date.now();
try {
  const r = await (f as typeof fetch)(`${fake.url}/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer x', 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', stream: true, messages: [] }), ...(f === uf ? { dispatcher: new Agent({ bodyTimeout: 2000 }) } : {}) } as any);
  for await (const c of r.body!) console.log(Date.now() - t, 'chunk', Buffer.from(c).length);
  console.log(Date.now() - t, 'ended');
} catch (e: any) { console.log(Date.now() - t, 'threw', e.message, e.cause?.code); }
}
await fake.close();
