// In-process bucket store: a bounded Map, for a single instance or for development.
//
// Memory is bounded by `maxKeys` because keys come from clients (addresses, key ids), and an
// attacker who can mint keys must not be able to grow the map without limit. When the map is
// full, only buckets that have refilled to capacity are evicted: forgetting a full bucket loses
// nothing, since a missing key starts full. A partly spent bucket is never dropped, because
// dropping it would hand its owner a fresh burst. If no bucket can be evicted, the request for
// the new key is refused (fail closed): the flood of new keys is itself what is being limited.
// The Map is kept in touch order (to within TOUCH_INTERVAL_MS), so the head is the least recently
// used bucket and the likeliest to be full; a full scan happens only when the head is not, at most
// once per `minSweepIntervalMs` and not before some bucket can have refilled, so a key flood
// cannot turn each request into an O(n) scan.
import { type BucketPolicy, type BucketStore, type Decision, msUntilFull, takeToken } from './token-bucket.ts';

export interface MemoryStoreOptions {
  /** Most buckets held at once; default 100 000 (about 25 MB of heap with address-sized keys). */
  maxKeys?: number;
  /** Least time between two full scans for refilled buckets; default 1000 ms. */
  minSweepIntervalMs?: number;
  /** Monotonic clock in milliseconds; tests inject one. */
  now?: () => number;
}

/** The memory store adds a synchronous take (no promise on the hot path) and its current size. */
export interface MemoryStore extends BucketStore {
  takeSync(key: string, policy: BucketPolicy): Decision;
  size(): number;
  /** Forgets every bucket; there is no timer to stop. */
  close(): Promise<void>;
}

interface Entry {
  tokens: number;
  updatedMs: number;
  /** Clock reading at which this bucket is full again and may be evicted. */
  fullAtMs: number;
  /** When the key was last moved to the Map's tail. */
  movedMs: number;
}

// Moving a key to the tail (delete + set) reallocates the long-lived Map's table in old space, so
// doing it per request makes old-space garbage; eviction only needs the head to be roughly the
// stalest, so a key moves at most once per interval.
const TOUCH_INTERVAL_MS = 1000;

/** Creates a bounded in-memory bucket store; see the file comment for what happens when it is full. */
export function createMemoryStore(options: MemoryStoreOptions = {}): MemoryStore {
  const maxKeys = options.maxKeys ?? 100_000;
  const minSweepIntervalMs = options.minSweepIntervalMs ?? 1000;
  const now = options.now ?? (() => performance.now());
  if (!(Number.isInteger(maxKeys) && maxKeys >= 1))
    throw new RangeError(`Invalid maxKeys: expected a positive integer, got ${maxKeys}`);
  const buckets = new Map<string, Entry>();
  // A lower bound on every entry's fullAtMs: exact after a sweep, lowered by each write.
  let soonestFullAtMs = Number.POSITIVE_INFINITY;
  let lastSweepMs = Number.NEGATIVE_INFINITY;

  function sweep(nowMs: number): void {
    lastSweepMs = nowMs;
    soonestFullAtMs = Number.POSITIVE_INFINITY;
    for (const [key, entry] of buckets) {
      if (entry.fullAtMs <= nowMs) buckets.delete(key);
      else if (entry.fullAtMs < soonestFullAtMs) soonestFullAtMs = entry.fullAtMs;
    }
  }

  function makeRoom(nowMs: number): boolean {
    const head = buckets.entries().next();
    if (!head.done && head.value[1].fullAtMs <= nowMs) {
      buckets.delete(head.value[0]);
      return true;
    }
    if (nowMs >= soonestFullAtMs && nowMs >= lastSweepMs + minSweepIntervalMs) sweep(nowMs);
    return buckets.size < maxKeys;
  }

  function refuseNewKey(nowMs: number): Decision {
    const waitMs = Math.max(soonestFullAtMs, lastSweepMs + minSweepIntervalMs) - nowMs;
    const seconds = Math.max(1, Math.ceil(waitMs / 1000));
    return { allowed: false, remaining: 0, resetSeconds: seconds, retryAfterSeconds: seconds };
  }

  function takeSync(key: string, policy: BucketPolicy): Decision {
    const nowMs = now();
    const existing = buckets.get(key);
    if (existing === undefined && buckets.size >= maxKeys && !makeRoom(nowMs)) return refuseNewKey(nowMs);
    const { state, decision } = takeToken(existing, policy, nowMs);
    const entry = existing ?? { tokens: 0, updatedMs: 0, fullAtMs: 0, movedMs: nowMs };
    entry.tokens = state.tokens;
    entry.updatedMs = state.updatedMs;
    entry.fullAtMs = state.updatedMs + msUntilFull(state, policy);
    if (existing === undefined) {
      buckets.set(key, entry);
    } else if (nowMs - entry.movedMs >= TOUCH_INTERVAL_MS) {
      // Delete and re-insert to move the key to the tail: the Map's order is touch order.
      buckets.delete(key);
      buckets.set(key, entry);
      entry.movedMs = nowMs;
    }
    if (entry.fullAtMs < soonestFullAtMs) soonestFullAtMs = entry.fullAtMs;
    return decision;
  }

  return {
    takeSync,
    take: (key, policy) => Promise.resolve(takeSync(key, policy)),
    size: () => buckets.size,
    close: () => {
      buckets.clear();
      return Promise.resolve();
    },
  };
}
