// Per-key policies: the limits `keys create|update` store on a key, read from flags and shown back.
// A limit left unset (or set back with `default`) is the server's own configuration.

/** One key's stored limits and expiry; an absent field is the server's default. */
export interface KeyPolicy {
  rateLimitPerMinute?: number;
  rateLimitBurst?: number;
  maxStreams?: number;
  tokensPerDay?: number;
  expiresAt?: Date;
  agents?: readonly string[];
}

/** A change to a key's policy: a value to set, or null to go back to the server's default (or no expiry). */
export type PolicyChange = { -readonly [K in keyof KeyPolicy]?: KeyPolicy[K] | null };

interface NumberFlag {
  field: 'rateLimitPerMinute' | 'rateLimitBurst' | 'maxStreams' | 'tokensPerDay';
  max: number;
}

// The same bounds as the server-wide settings they override.
const NUMBER_FLAGS: Record<string, NumberFlag> = {
  '--rpm': { field: 'rateLimitPerMinute', max: 1_000_000 },
  '--burst': { field: 'rateLimitBurst', max: 1_000_000 },
  '--streams': { field: 'maxStreams', max: 1000 },
  '--tokens-per-day': { field: 'tokensPerDay', max: 1_000_000_000_000 },
};
/** Every flag with what its value may be, for the usage text. */
export const POLICY_FLAGS_USAGE =
  '[--rpm N] [--burst N] [--streams N] [--tokens-per-day N] [--expires 30d|12h|2027-01-31|never] [--agents a,b|all]';
const AGENT_ID = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const MAX_AGENTS = 100;
const MAX_EXPIRY_DAYS = 3650;
const DAY_MS = 86_400_000;

export type Parsed<T> = { ok: true; value: T } | { ok: false; problem: string };

/** Reads policy flags (`--rpm 60 --agents a,b`); `nowMs` anchors relative expiries. Never throws. */
export function parsePolicyFlags(args: readonly string[], nowMs: number): Parsed<PolicyChange> {
  const change: PolicyChange = {};
  const seen = new Set<string>();
  for (let i = 0; i < args.length; i += 2) {
    const flag = args[i] as string;
    const value = args[i + 1];
    if (!flag.startsWith('--')) return fail(`Unexpected argument ${JSON.stringify(flag)}`);
    if (!(flag in NUMBER_FLAGS) && flag !== '--expires' && flag !== '--agents') {
      return fail(`Unknown option ${JSON.stringify(flag)}`);
    }
    if (seen.has(flag)) return fail(`${flag} given twice`);
    seen.add(flag);
    if (value === undefined || value.startsWith('--')) return fail(`${flag} needs a value`);
    const parsed = parseFlag(flag, value, nowMs);
    if (!parsed.ok) return parsed;
    Object.assign(change, parsed.value);
  }
  return { ok: true, value: change };
}

function parseFlag(flag: string, value: string, nowMs: number): Parsed<PolicyChange> {
  const numeric = NUMBER_FLAGS[flag];
  if (numeric !== undefined) {
    if (value === 'default') return { ok: true, value: { [numeric.field]: null } };
    if (!/^[1-9][0-9]{0,12}$/.test(value) || Number(value) > numeric.max) {
      return fail(`${flag} must be a whole number from 1 to ${numeric.max}, or default`);
    }
    return { ok: true, value: { [numeric.field]: Number(value) } };
  }
  if (flag === '--expires') {
    const expiresAt = parseExpiry(value, nowMs);
    return expiresAt.ok ? { ok: true, value: { expiresAt: expiresAt.value } } : expiresAt;
  }
  const agents = parseAgents(value);
  return agents.ok ? { ok: true, value: { agents: agents.value } } : agents;
}

/** `30d` or `12h` from now, a date (00:00 UTC that day) or an ISO timestamp with its zone, or `never`. */
export function parseExpiry(value: string, nowMs: number): Parsed<Date | null> {
  if (value === 'never') return { ok: true, value: null };
  const relative = /^([1-9][0-9]{0,4})([dh])$/.exec(value);
  let ms: number;
  if (relative !== null) {
    ms = nowMs + Number(relative[1]) * (relative[2] === 'd' ? DAY_MS : DAY_MS / 24);
  } else if (/^\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,3})?)?(Z|[+-]\d{2}:\d{2}))?$/.test(value)) {
    ms = realDate(value.slice(0, 10)) ? Date.parse(value.length === 10 ? `${value}T00:00:00Z` : value) : Number.NaN;
  } else {
    return fail('--expires must be like 30d, 12h, 2027-01-31, 2027-01-31T12:00:00Z, or never');
  }
  if (!Number.isFinite(ms)) return fail(`--expires ${value} is not a real date`);
  if (ms <= nowMs) return fail(`--expires ${value} is not in the future`);
  if (ms > nowMs + MAX_EXPIRY_DAYS * DAY_MS) return fail(`--expires must be within ${MAX_EXPIRY_DAYS} days`);
  return { ok: true, value: new Date(ms) };
}

// Date.parse rolls 2027-02-30 over to March instead of refusing it.
function realDate(ymd: string): boolean {
  const [y, m, d] = ymd.split('-').map(Number) as [number, number, number];
  const date = new Date(Date.UTC(y, m - 1, d));
  return date.getUTCMonth() === m - 1 && date.getUTCDate() === d;
}

function parseAgents(value: string): Parsed<string[] | null> {
  if (value === 'all') return { ok: true, value: null };
  const ids = value.split(',');
  if (ids.length > MAX_AGENTS) return fail(`--agents takes at most ${MAX_AGENTS} agent ids`);
  const bad = ids.find((id) => !AGENT_ID.test(id));
  if (bad !== undefined) return fail(`--agents: ${JSON.stringify(bad)} is not an agent id (a-z 0-9 . _ -)`);
  return { ok: true, value: [...new Set(ids)] };
}

function fail(problem: string): { ok: false; problem: string } {
  return { ok: false, problem };
}

/** The policy as `keys show` prints it: one `flag: value` line each, `default` where the server's applies. */
export function describePolicy(policy: KeyPolicy): string[] {
  const value = (n: number | undefined) => (n === undefined ? 'default' : String(n));
  return [
    `rpm: ${value(policy.rateLimitPerMinute)}`,
    `burst: ${value(policy.rateLimitBurst)}`,
    `streams: ${value(policy.maxStreams)}`,
    `tokens-per-day: ${value(policy.tokensPerDay)}`,
    `expires: ${policy.expiresAt?.toISOString() ?? 'never'}`,
    `agents: ${policy.agents?.join(',') ?? 'all'}`,
  ];
}
