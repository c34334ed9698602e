import { startChat, readEvents, openStream, storedMessages, waitFor } from '../test/support/chat.ts';
const h = await startChat({ MAX_CONCURRENT_STREAMS_PER_KEY: '1000' });
// NUL in message
let r = await h.chat({ message: 'a\u0000b' });
console.log('NUL message', r.status, await r.text());
// NUL in upstream answer
h.fake.queue({ kind: 'normal', chunks: ['x\u0000y'] });
r = await h.chat({ message: 'nul answer' });
const ev = await readEvents(r);
console.log('NUL answer', JSON.stringify(ev.map(e => e.event)));
const cid = (ev[0]!.data as any).conversationId;
await new Promise(r => setTimeout(r, 1500));
console.log('stored', await storedMessages(h.server.db.pool, cid));
// surrogate title
r = await h.chat({ message: 'a'.repeat(79) + '😀 tail', stream: false });
const b = await r.json() as any;
const conv = await (await h.call('GET', `/v1/conversations/${b.conversationId}`)).json() as any;
console.log('title end', JSON.stringify(conv.title.slice(-3)), [...conv.title.slice(-2)].map((c: string) => c.codePointAt(0)!.toString(16)));
// delete mid-stream
h.fake.queue({ kind: 'slow', chunks: Array(10).fill('z'), chunkDelayMs: 30 });
const s = await openStream(h.server.url, h.key, { message: 'delete me' });
const st = await s.next();
const id = (st!.data as any).conversationId;
console.log('delete', (await h.call('DELETE', `/v1/conversations/${id}`)).status);
const t = Date.now();
const frames = [];
for (let f = await s.next(); f; f = await s.next()) frames.push(f.event);
console.log('after delete frames', frames.join(','), 'ended after', Date.now() - t, 'ms');
await new Promise(r => setTimeout(r, 1000));
console.log(h.server.logs().split('\n').filter(l => /"level":"(error|warn)"/.test(l)).map(l => l.slice(0, 400)));
await h.close();
