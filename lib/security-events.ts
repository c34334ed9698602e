// Structured `security` log events, rate-limited so an attack cannot flood the log.
import type { Logger } from './log.ts';

/** What a security event reports; each kind is emitted where that refusal happens. */
export type SecurityEventKind =
  | 'auth_failure'
  | 'auth_throttled'
  | 'rate_limited'
  | 'cors_rejected'
  | 'metrics_denied'
  | 'upstream_breaker';

export interface SecurityEvents {
  emit(kind: SecurityEventKind, fields: Record<string, unknown>): void;
}

/** At most `perSecond` lines a second; the rest are counted and reported in one summary line. */
export function createSecurityEvents(
  log: Logger,
  options: { perSecond?: number; onEvent?: (kind: SecurityEventKind) => void } = {},
): SecurityEvents {
  const perSecond = options.perSecond ?? 20;
  let windowStart = 0;
  let written = 0;
  let dropped = 0;
  let summaryTimer: NodeJS.Timeout | undefined;

  function reportSuppressed(): void {
    clearTimeout(summaryTimer);
    summaryTimer = undefined;
    if (dropped > 0) log.warn('security events suppressed', { event: 'security', suppressed: dropped });
    dropped = 0;
  }

  return {
    emit(kind, fields) {
      options.onEvent?.(kind);
      const nowMs = Date.now();
      const second = Math.floor(nowMs / 1000);
      if (second !== windowStart) {
        reportSuppressed();
        windowStart = second;
        written = 0;
      }
      if (written >= perSecond) {
        // A flood that stops must still be reported: summarise when this second ends, not at the next event.
        if (dropped++ === 0) {
          summaryTimer = setTimeout(reportSuppressed, 1000 - (nowMs % 1000));
          summaryTimer.unref();
        }
        return;
      }
      written++;
      log.warn('security event', { event: 'security', kind, ...fields });
    },
  };
}
