import { startFakeUpstream } from '../test/support/fake-upstream.ts';
import { request } from 'node:http';
const fake = await startFakeUpstream();
fake.setBehaviour({ kind: 'reset', afterChunks: 1 });
const t = Date.now();
const req = request(`${fake.url}/chat/completions`, { method: 'POST', headers: { authorization: 'Bearer x', 'content-type': 'application/json' } }, (res) => {
  res.on('data', (c) => console.log(Date.now() - t, 'data', String(c).slice(0, 60)));
  res.on('end', () => console.log(Date.now() - t, 'end'));
  res.on('error', (e) => console.log(Date.now() - t, 'res error', e.message));
  res.on('close', () => console.log(Date.now() - t, 'close'));
});
req.on('error', (e) => console.log('req error', e.message));
req.end(JSON.stringify({ model: 'm', stream: true, messages: [] }));
setTimeout(async () => { console.log('sockets', fake.openSockets(), fake.requests[0]); await fake.close(); }, 1500);
