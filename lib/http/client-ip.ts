// Client address: the socket peer, or the right-most untrusted X-Forwarded-For entry behind trusted proxies.

import type { IncomingMessage } from 'node:http';
import { BlockList, isIP } from 'node:net';

/** Strips the IPv4-mapped IPv6 prefix so one client has one spelling. */
export function normaliseAddress(address: string | undefined): string {
  if (address === undefined) return 'unknown';
  return address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
}

/** Builds the address resolver for a TRUST_PROXY list (addresses or CIDRs; empty = trust nobody). */
export function createClientIp(trustProxy: readonly string[]): (req: IncomingMessage) => string {
  if (trustProxy.length === 0) {
    return function peerAddress(req) {
      return normaliseAddress(req.socket.remoteAddress);
    };
  }
  const isTrusted = createProxyCheck(trustProxy);
  return function forwardedAddress(req) {
    const peer = normaliseAddress(req.socket.remoteAddress);
    // Never trust X-Forwarded-For unless the peer is a configured proxy.
    if (!isTrusted(peer)) return peer;
    const header = req.headers['x-forwarded-for'];
    if (header === undefined) return peer;
    const hops = (Array.isArray(header) ? header.join(',') : header).split(',');
    // Walk from the right: each trusted proxy appended the address it saw; the first untrusted
    // one is the client as far as we can know. Left-most entries are client-controlled.
    for (let i = hops.length - 1; i >= 0; i--) {
      const hop = normaliseAddress(hops[i]?.trim());
      if (isIP(hop) === 0) return peer; // garbage in the chain: fall back to what we saw ourselves
      if (!isTrusted(hop)) return hop;
    }
    return normaliseAddress(hops[0]?.trim());
  };
}

/** True for a normalised address in the TRUST_PROXY list (addresses or CIDRs; empty = trust nobody). */
export function createProxyCheck(trustProxy: readonly string[]): (address: string) => boolean {
  const trusted = new BlockList();
  for (const entry of trustProxy) {
    const [addr, bits] = entry.split('/') as [string, string | undefined];
    const type = isIP(addr) === 6 ? 'ipv6' : 'ipv4';
    if (bits === undefined) trusted.addAddress(addr, type);
    else trusted.addSubnet(addr, Number(bits), type);
  }
  return function isTrustedProxy(address: string): boolean {
    const family = isIP(address);
    return family !== 0 && trusted.check(address, family === 6 ? 'ipv6' : 'ipv4');
  };
}

/** The key for per-address throttles: IPv6 grouped by /64 (one host usually owns a whole /64). */
export function addressGroup(address: string): string {
  if (isIP(address) !== 6) return address;
  const full = expandIpv6(address);
  return full === undefined ? address : `${full.slice(0, 4).join(':')}::/64`;
}

function expandIpv6(address: string): string[] | undefined {
  const zoneless = address.split('%')[0] as string;
  const [head, tail] = zoneless.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  if (tail === undefined && left.length !== 8) return undefined;
  const fill = new Array<string>(8 - left.length - right.length).fill('0');
  return [...left, ...fill, ...right].map((h) => h.toLowerCase().replace(/^0+(?=.)/, ''));
}
