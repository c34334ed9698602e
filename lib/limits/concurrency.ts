// Per-identity cap on simultaneous work (open chat streams), counted in this process.
//
// A lease is taken when a stream starts and released in a `finally` (or by `using`) when it
// ends. Release is idempotent so that two cleanup paths (the stream ending and the client
// disconnecting) cannot release a slot twice and let the caller exceed the cap. Counts that
// reach zero are deleted so idle identities cost no memory.

/** One held slot; releasing it twice is harmless. */
export interface Lease extends Disposable {
  release(): void;
}

/** Counts slots per key and refuses a key that holds `maxPerKey` of them. */
export interface ConcurrencyLimiter {
  /** A lease, or undefined when the key is already at its cap (`max`, the key's own, or the limiter's). */
  acquire(key: string, max?: number): Lease | undefined;
  /** Slots held by one key, or by all keys when no key is given. */
  inUse(key?: string): number;
}

/** Creates a limiter allowing at most `maxPerKey` simultaneous leases per key. */
export function createConcurrencyLimiter(maxPerKey: number): ConcurrencyLimiter {
  if (!(Number.isInteger(maxPerKey) && maxPerKey >= 1))
    throw new RangeError(`Invalid concurrency cap: expected a positive integer, got ${maxPerKey}`);
  const counts = new Map<string, number>();
  let total = 0;

  function acquire(key: string, max = maxPerKey): Lease | undefined {
    const held = counts.get(key) ?? 0;
    if (held >= max) return undefined;
    counts.set(key, held + 1);
    total += 1;
    let released = false;
    function release(): void {
      if (released) return;
      released = true;
      total -= 1;
      const left = (counts.get(key) ?? 1) - 1;
      if (left <= 0) counts.delete(key);
      else counts.set(key, left);
    }
    return { release, [Symbol.dispose]: release };
  }

  function inUse(key?: string): number {
    return key === undefined ? total : (counts.get(key) ?? 0);
  }

  return { acquire, inUse };
}
