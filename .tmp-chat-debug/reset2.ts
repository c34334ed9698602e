import { createServer } from 'node:http';
const server = createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/event-stream' });
  res.write('data: 1\n\n');
  console.log('socket?', !!res.socket, res.socket?.destroyed);
  res.socket?.destroy();
  console.log('after', res.socket?.destroyed);
});
server.listen(0, async () => {
  const { port } = server.address() as any;
  const t = Date.now();
  try {
    const r = await fetch(`http://127.0.0.1:${port}/`);
    for await (const c of r.body!) console.log('chunk', Buffer.from(c).toString());
    console.log('ended', Date.now() - t);
  } catch (e: any) { console.log('threw', e.message, e.cause?.code, Date.now() - t); }
  server.close();
});
