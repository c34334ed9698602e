// Failed-authentication throttle: a bucket per client address group; once empty, the group is blocked.
//
// A block exists to stop guessing and the database work garbage credentials cost, not to lock out
// users who share the group (an IPv6 /64, or everyone behind a proxy when TRUST_PROXY is off). So
// from a blocked group a credential is still checked when it proved valid before, and otherwise at
// most once per probe interval for the whole group: a valid key waits a second, not a minute.
import { hash } from 'node:crypto';
import { createMemoryStore } from './memory-store.ts';
import { bucketPolicy } from './token-bucket.ts';

export interface FailureThrottle {
  /** 0 when the address may try; else whole seconds until it may try again. */
  blockedFor(address: string): number;
  /** Records one failed attempt; the credential, if given, is no longer known valid. */
  fail(address: string, credential?: string): void;
  /** False while no address is blocked: callers may skip computing the address key. */
  anyBlocked(): boolean;
  /**
   * Whether a credential from this address may be checked now: 0 if so (the address is not
   * blocked, the credential proved valid before, or the address's probe is due, which this call
   * takes), else whole seconds until the next probe.
   */
  admit(address: string, credential: string): number;
  /** Remembers a credential that proved valid, so a block on its address does not refuse it unchecked. */
  succeed(credential: string): void;
}

export interface FailureThrottleOptions {
  now?: () => number;
  maxKeys?: number;
  /** How often a blocked address may have one credential checked that is not known valid. */
  probeIntervalMs?: number;
  /** How long a credential that proved valid is remembered (by its hash, never itself). */
  knownValidMs?: number;
}

const DEFAULT_PROBE_INTERVAL_MS = 1_000;
const DEFAULT_KNOWN_VALID_MS = 10 * 60_000;
const MAX_KNOWN_VALID = 10_000;

/** `perMinute` failures per address, refilling continuously; bounded memory. */
export function createFailureThrottle(perMinute: number, options: FailureThrottleOptions = {}): FailureThrottle {
  const now = options.now ?? (() => performance.now());
  const maxKeys = options.maxKeys ?? 100_000;
  const probeIntervalMs = options.probeIntervalMs ?? DEFAULT_PROBE_INTERVAL_MS;
  const knownValidMs = options.knownValidMs ?? DEFAULT_KNOWN_VALID_MS;
  const policy = bucketPolicy(perMinute, perMinute);
  const store = createMemoryStore({ now, maxKeys });
  // Blocked addresses: when a token is back, and when the next probe may run; bounded like the store.
  const blocked = new Map<string, { untilMs: number; nextProbeMs: number }>();
  // Hashes of credentials that proved valid, with when that is forgotten.
  const knownValid = new Map<string, number>();
  const tokenMs = 1000 / policy.refillPerSecond;

  function blockedFor(address: string): number {
    const entry = blocked.get(address);
    if (entry === undefined) return 0;
    const left = entry.untilMs - now();
    if (left <= 0) {
      blocked.delete(address);
      return 0;
    }
    return Math.ceil(left / 1000);
  }
  function isKnownValid(credential: string): boolean {
    if (knownValid.size === 0) return false;
    const key = hash('sha256', credential, 'base64');
    const until = knownValid.get(key);
    if (until === undefined) return false;
    if (until > now()) return true;
    knownValid.delete(key);
    return false;
  }

  return {
    anyBlocked: () => blocked.size > 0,
    blockedFor,
    fail(address, credential) {
      if (credential !== undefined && knownValid.size > 0) knownValid.delete(hash('sha256', credential, 'base64'));
      const decision = store.takeSync(address, policy);
      if (!decision.allowed || decision.remaining === 0) {
        const waitMs = decision.allowed ? tokenMs : decision.retryAfterSeconds * 1000;
        const entry = blocked.get(address);
        if (entry === undefined && blocked.size >= maxKeys) blocked.delete(blocked.keys().next().value as string);
        blocked.set(address, { untilMs: now() + waitMs, nextProbeMs: entry?.nextProbeMs ?? 0 });
      }
    },
    admit(address, credential) {
      if (blockedFor(address) === 0 || isKnownValid(credential)) return 0;
      const entry = blocked.get(address) as { untilMs: number; nextProbeMs: number };
      const t = now();
      if (t >= entry.nextProbeMs) {
        entry.nextProbeMs = t + probeIntervalMs;
        return 0;
      }
      return Math.ceil((entry.nextProbeMs - t) / 1000);
    },
    succeed(credential) {
      const key = hash('sha256', credential, 'base64');
      knownValid.delete(key); // re-inserted at the tail: the oldest entries are evicted first
      if (knownValid.size >= MAX_KNOWN_VALID) knownValid.delete(knownValid.keys().next().value as string);
      knownValid.set(key, now() + knownValidMs);
    },
  };
}
