// A bounded wait: the value of a promise, or a fallback once the deadline passes.

/**
 * Resolves with what `promise` settles to, or with `fallback` once `ms` have passed, whichever
 * comes first; the timer never outlives the wait. This bounds how long we wait, it does not stop
 * the work: use it only where the work cannot be cancelled (a query on a dead socket) or is bounded
 * elsewhere (a drain). Anything that takes an AbortSignal gets one instead.
 */
export function waitAtMost<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<F>((resolve) => {
    timer = setTimeout(resolve, ms, fallback);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}
