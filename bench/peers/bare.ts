// a. bare node:http: the physical limit. No middleware; the bearer check and the JSON reply only.
import { AGENTS, serveAgentsBare } from './common.ts';

const body = JSON.stringify(AGENTS);
serveAgentsBare({ 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(body)) }, body);
