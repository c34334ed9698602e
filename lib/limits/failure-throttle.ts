// Failed-authentication throttle: a bucket per client address group; once empty, the address is refused up front.
import { createMemoryStore } from './memory-store.ts';
import { bucketPolicy } from './token-bucket.ts';

export interface FailureThrottle {
  /** 0 when the address may try; else whole seconds until it may try again. */
  blockedFor(address: string): number;
  /** Records one failed attempt. */
  fail(address: string): void;
  /** False while no address is blocked: callers may skip computing the address key. */
  anyBlocked(): boolean;
}

/** `perMinute` failures per address, refilling continuously; bounded memory. */
export function createFailureThrottle(
  perMinute: number,
  options: { now?: () => number; maxKeys?: number } = {},
): FailureThrottle {
  const now = options.now ?? (() => performance.now());
  const policy = bucketPolicy(perMinute, perMinute);
  const store = createMemoryStore({ now, maxKeys: options.maxKeys ?? 100_000 });
  // Addresses whose bucket is empty, with the time a token is back; bounded like the store.
  const blocked = new Map<string, number>();
  const tokenMs = 1000 / policy.refillPerSecond;

  return {
    anyBlocked: () => blocked.size > 0,
    blockedFor(address) {
      const until = blocked.get(address);
      if (until === undefined) return 0;
      const left = until - now();
      if (left <= 0) {
        blocked.delete(address);
        return 0;
      }
      return Math.ceil(left / 1000);
    },
    fail(address) {
      const decision = store.takeSync(address, policy);
      if (!decision.allowed || decision.remaining === 0) {
        const waitMs = decision.allowed ? tokenMs : decision.retryAfterSeconds * 1000;
        if (blocked.size >= 100_000) blocked.delete(blocked.keys().next().value as string);
        blocked.set(address, now() + waitMs);
      }
    },
  };
}
