// Structured `security` log events, rate-limited so an attack cannot flood the log.
import type { Logger } from './log.ts';

export type SecurityEventKind = 'auth_failure' | 'auth_throttled' | 'rate_limited' | 'cors_rejected' | 'stream_cap' | 'metrics_denied';

export interface SecurityEvents {
  emit(kind: SecurityEventKind, fields: Record<string, unknown>): void;
}

/** At most `perSecond` lines a second; the rest are counted and reported in one summary line. */
export function createSecurityEvents(log: Logger, options: { perSecond?: number; onEvent?: (kind: SecurityEventKind) => void } = {}): SecurityEvents {
  const perSecond = options.perSecond ?? 20;
  let windowStart = 0;
  let written = 0;
  let dropped = 0;
  return {
    emit(kind, fields) {
      options.onEvent?.(kind);
      const second = Math.floor(Date.now() / 1000);
      if (second !== windowStart) {
        if (dropped > 0) log.warn('security events suppressed', { event: 'security', suppressed: dropped });
        windowStart = second;
        written = 0;
        dropped = 0;
      }
      if (written >= perSecond) {
        dropped++;
        return;
      }
      written++;
      log.warn('security event', { event: 'security', kind, ...fields });
    },
  };
}
