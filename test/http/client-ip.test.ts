import assert from 'node:assert/strict';
import type { IncomingMessage } from 'node:http';
import { after, before, describe, it } from 'node:test';
import { addressGroup, createClientIp, normaliseAddress } from '../../lib/http/client-ip.ts';
import { route, type Served, serve } from '../support/http.ts';

function req(remoteAddress: string | undefined, xff?: string): IncomingMessage {
  return {
    socket: { remoteAddress },
    headers: xff === undefined ? {} : { 'x-forwarded-for': xff },
  } as unknown as IncomingMessage;
}

describe('normaliseAddress()', () => {
  it('normaliseAddress() strips the IPv4-mapped IPv6 prefix', () => {
    assert.equal(normaliseAddress('::ffff:192.0.2.7'), '192.0.2.7');
  });

  it('normaliseAddress() keeps other IPv6 addresses', () => {
    assert.equal(normaliseAddress('2001:db8::1'), '2001:db8::1');
    assert.equal(normaliseAddress('::ffff:abcd'), '::ffff:abcd');
  });

  it('normaliseAddress() names a missing address "unknown"', () => {
    assert.equal(normaliseAddress(undefined), 'unknown');
  });
});

describe('createClientIp() without trusted proxies', () => {
  const clientIp = createClientIp([]);

  it('createClientIp() answers the socket peer', () => {
    assert.equal(clientIp(req('192.0.2.7')), '192.0.2.7');
  });

  it('createClientIp() normalises an IPv4-mapped peer', () => {
    assert.equal(clientIp(req('::ffff:192.0.2.7')), '192.0.2.7');
  });

  it('createClientIp() ignores X-Forwarded-For when no proxy is trusted', () => {
    assert.equal(clientIp(req('192.0.2.7', '203.0.113.9')), '192.0.2.7');
  });
});

describe('createClientIp() behind trusted proxies', () => {
  const clientIp = createClientIp(['10.0.0.0/8', '2001:db8:ffff::/48', '192.0.2.1']);

  it('createClientIp() answers the right-most untrusted X-Forwarded-For entry', () => {
    assert.equal(clientIp(req('10.0.0.2', '203.0.113.9, 10.0.0.5')), '203.0.113.9');
  });

  it('createClientIp() ignores spoofed left-most entries', () => {
    // The client wrote '1.1.1.1' itself; the proxy appended the address it saw.
    assert.equal(clientIp(req('10.0.0.2', '1.1.1.1, 198.51.100.4')), '198.51.100.4');
  });

  it('createClientIp() ignores X-Forwarded-For from an untrusted peer', () => {
    assert.equal(clientIp(req('198.51.100.77', '203.0.113.9')), '198.51.100.77');
  });

  it('createClientIp() trusts a single configured address and an IPv4-mapped peer', () => {
    assert.equal(clientIp(req('192.0.2.1', '203.0.113.9')), '203.0.113.9');
    assert.equal(clientIp(req('::ffff:10.1.2.3', '203.0.113.9')), '203.0.113.9');
  });

  it('createClientIp() trusts an IPv6 subnet', () => {
    assert.equal(clientIp(req('2001:db8:ffff:1::1', '2001:db8:1::9')), '2001:db8:1::9');
  });

  it('createClientIp() falls back to the peer when a hop is garbage', () => {
    assert.equal(clientIp(req('10.0.0.2', '203.0.113.9, not-an-ip')), '10.0.0.2');
    assert.equal(clientIp(req('10.0.0.2', '203.0.113.9:4444')), '10.0.0.2');
    assert.equal(clientIp(req('10.0.0.2', '')), '10.0.0.2');
    assert.equal(clientIp(req('10.0.0.2', '203.0.113.9,,10.0.0.3')), '10.0.0.2');
  });

  it('createClientIp() answers the peer when X-Forwarded-For is absent', () => {
    assert.equal(clientIp(req('10.0.0.2')), '10.0.0.2');
  });

  it('createClientIp() answers the left-most entry when every hop is a trusted proxy', () => {
    assert.equal(clientIp(req('10.0.0.2', '10.0.0.9, 10.0.0.5')), '10.0.0.9');
  });

  it('createClientIp() normalises an IPv4-mapped hop', () => {
    assert.equal(clientIp(req('10.0.0.2', '::ffff:203.0.113.9')), '203.0.113.9');
  });

  describe('through a real socket', () => {
    let served: Served;
    before(async () => {
      served = await serve(
        [route('GET', '/ip', async (ctx) => ({ kind: 'json', status: 200, body: { ip: ctx.clientIp } }))],
        [],
        {
          clientIp: createClientIp(['127.0.0.1']),
        },
      );
    });
    after(() => served.close());

    it('createClientIp() reads the peer of a real connection and the header it forwarded', async () => {
      const res = await fetch(`${served.url}/ip`, { headers: { 'x-forwarded-for': '6.6.6.6, 203.0.113.9' } });
      assert.deepEqual(await res.json(), { ip: '203.0.113.9' });
    });
  });
});

describe('addressGroup()', () => {
  it('addressGroup() keeps an IPv4 address as it is', () => {
    assert.equal(addressGroup('192.0.2.7'), '192.0.2.7');
  });

  it('addressGroup() groups IPv6 addresses of one /64 together', () => {
    assert.equal(addressGroup('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
    assert.equal(addressGroup('2001:db8:1:2:bbbb:cccc:dddd:eeee'), '2001:db8:1:2::/64');
  });

  it('addressGroup() separates neighbouring /64s', () => {
    assert.notEqual(addressGroup('2001:db8:1:2::1'), addressGroup('2001:db8:1:3::1'));
  });

  it('addressGroup() spells one /64 one way whatever the case, leading zeros or compression', () => {
    assert.equal(addressGroup('2001:0DB8:0001:0002::1'), '2001:db8:1:2::/64');
    assert.equal(addressGroup('2001:db8::1'), '2001:db8:0:0::/64');
    assert.equal(addressGroup('2001:db8:0:0:1::1'), '2001:db8:0:0::/64');
    assert.equal(addressGroup('::1'), '0:0:0:0::/64');
  });

  it('addressGroup() ignores a zone id', () => {
    assert.equal(addressGroup('fe80::1%eth0'), 'fe80:0:0:0::/64');
  });

  it('addressGroup() keeps a non-address as it is', () => {
    assert.equal(addressGroup('unknown'), 'unknown');
  });
});
