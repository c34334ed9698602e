import OpenAI from 'openai';
import { Agent, fetch as undiciFetch } from 'undici';
import { startFakeUpstream } from '../test/support/fake-upstream.ts';
const fake = await startFakeUpstream();
fake.setBehaviour({ kind: 'reset', afterChunks: 1 });
const agent = new Agent({ allowH2: false, bodyTimeout: 2000 });
const client = new OpenAI({ apiKey: 'x', baseURL: fake.url, maxRetries: 0, fetch: undiciFetch as any, fetchOptions: { dispatcher: agent } as any });
const t = Date.now();
setTimeout(() => console.log('at 500ms sockets', fake.openSockets(), fake.requests.map(r => [r.closedEarly, r.finished, r.headers['content-length'], r.headers['transfer-encoding']])), 500);
try {
  const s = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true });
  for await (const c of s) console.log(Date.now() - t, JSON.stringify(c.choices[0]?.delta));
  console.log('ended silently', Date.now() - t);
} catch (e: any) { console.log('threw', Date.now() - t, e?.name, e?.message, e?.cause?.code); }
await agent.close();
await fake.close();
