import OpenAI from 'openai';
import { Agent, fetch as undiciFetch } from 'undici';
import { startFakeUpstream } from '/work/main/test/support/fake-upstream.ts';
const fake = await startFakeUpstream();
fake.setBehaviour({ kind: 'reset', afterChunks: 1 });
for (const which of ['undici', 'global']) {
  const agent = new Agent({ allowH2: false, bodyTimeout: 1500, headersTimeout: 1500 });
  const client = new OpenAI({ apiKey: 'x', baseURL: fake.url, maxRetries: 0,
    ...(which === 'undici' ? { fetch: undiciFetch as any, fetchOptions: { dispatcher: agent } as any } : {}) });
  const t = Date.now();
  try {
    const s = await client.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: 'hi' }], stream: true });
    for await (const c of s) console.log(which, Date.now() - t, JSON.stringify(c.choices[0]?.delta));
    console.log(which, 'ended silently', Date.now() - t);
  } catch (e: any) { console.log(which, 'threw', Date.now() - t, e?.name, e?.message, e?.cause?.code); }
  await agent.close();
}
await fake.close();
