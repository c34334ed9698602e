// The one reader of process.env: a zod schema for every variable, validated once at start.
//
// Invalid configuration lists every problem by variable name and never echoes a value (a value
// may be a secret). The returned object is frozen; secrets live on a non-enumerable property,
// so logging or serialising the config cannot leak them.
import { isIP } from 'node:net';
import * as z from 'zod';
import { LOG_LEVELS } from './log.ts';

// Empty strings count as unset, so `FOO=` in an env file falls back to the default.
function optional<T extends z.ZodType>(schema: T) {
  return z.preprocess((v) => (v === '' ? undefined : v), schema.optional());
}
function withDefault<T extends z.ZodType>(schema: T, fallback: z.input<T>) {
  return z.preprocess((v) => (v === '' || v === undefined ? fallback : v), schema);
}
// Digits only: z.coerce.number() would read ' ' as 0 (a random port) and '0x50' as 80.
const int = (min: number, max: number) =>
  z
    .string()
    .regex(/^[0-9]+$/, 'must be a whole number')
    .transform(Number)
    .pipe(z.number().int().min(min).max(max));
const bool = z.stringbool();
// A decimal in (0, 1], digits only for the same reason as int().
const fraction = z
  .string()
  .regex(/^(0|1)(\.[0-9]+)?$/, 'must be a decimal number such as 0.1')
  .transform(Number)
  .pipe(z.number().gt(0, 'must be greater than 0').lte(1, 'must be at most 1'));
const list = z.string().transform((s) =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter((x) => x !== ''),
);
// Single-field rules live in the schema so that one run reports them together with every other problem.
const corsOrigins = list
  .refine((entries) => !entries.includes('*'), '"*" is refused; list exact origins')
  .refine(
    (entries) => entries.every((e) => e === '*' || isExactOrigin(e)),
    'every entry must be an exact origin, scheme://host[:port], with no path',
  );
const trustProxy = list.refine(
  (entries) => (entries.length === 1 && entries[0] === 'off') || entries.every(isAddressOrCidr),
  'entries must be "off" or IP addresses/CIDRs',
);
// Bytes, not UTF-16 code units: HMAC keys are bytes.
const jwtSecret = z.string().refine((s) => Buffer.byteLength(s) >= 32, 'must be at least 32 bytes');

/** Each environment variable's type, default and one-line description (the README table is checked against these). */
export const ENV_SCHEMA = {
  HOST: withDefault(
    z.string().refine((h) => isIP(h) !== 0 || /^[A-Za-z0-9.-]+$/.test(h), 'must be an IP address or host name'),
    '127.0.0.1',
  ),
  PORT: withDefault(int(0, 65535), '8000'),
  LOG_LEVEL: withDefault(z.enum(LOG_LEVELS), 'info'),
  DATABASE_URL: optional(z.url({ protocol: /^postgres(ql)?$/ })),
  DATABASE_SESSION_URL: optional(z.url({ protocol: /^postgres(ql)?$/ })),
  DB_POOLER: withDefault(z.enum(['none', 'transaction']), 'none'),
  DATA_DIR: withDefault(z.string().min(1), './data'),
  DATABASE_CA_FILE: optional(z.string().min(1)),
  DATABASE_PASSWORD_FILE: optional(z.string().min(1)),
  DB_POOL_MAX: withDefault(int(1, 200), '10'),
  DB_STATEMENT_TIMEOUT_MS: withDefault(int(100, 600_000), '15000'),
  DB_MAX_LIFETIME_SECONDS: withDefault(int(0, 86_400), '300'),
  HEALTH_DB_TIMEOUT_MS: withDefault(int(100, 60_000), '5000'),
  OPENAI_API_KEY: optional(z.string().min(1)),
  // z.httpUrl() would refuse localhost and IP hosts (its hostname must be a domain); local model servers need them.
  OPENAI_BASE_URL: optional(z.url({ protocol: /^https?$/ })),
  OPENAI_MODEL: withDefault(z.string().min(1).max(200), 'gpt-4o-mini'),
  AGENTS_FILE: optional(z.string().min(1)),
  MAX_MESSAGE_CHARS: withDefault(int(1, 1_000_000), '8000'),
  HISTORY_MAX_CHARS: withDefault(int(0, 10_000_000), '24000'),
  UPSTREAM_TIMEOUT_MS: withDefault(int(100, 600_000), '30000'),
  UPSTREAM_IDLE_TIMEOUT_MS: withDefault(int(100, 600_000), '20000'),
  UPSTREAM_MAX_CONNECTIONS: withDefault(int(1, 10_000), '64'),
  UPSTREAM_MAX_RETRIES: withDefault(int(0, 5), '2'),
  UPSTREAM_MAX_DURATION_MS: withDefault(int(1000, 3_600_000), '300000'),
  UPSTREAM_MAX_RESPONSE_BYTES: withDefault(int(65_536, 1_073_741_824), '16777216'),
  TOKEN_BUDGET_PER_DAY: optional(int(1, 1_000_000_000_000)),
  ANSWER_ON_DISCONNECT: withDefault(z.enum(['finish', 'abort']), 'finish'),
  UPSTREAM_BREAKER_FAILURES: withDefault(int(1, 1000), '5'),
  UPSTREAM_BREAKER_COOLDOWN_MS: withDefault(int(100, 3_600_000), '30000'),
  // 0 turns the ratio rule off; consecutive failures still open the breaker.
  UPSTREAM_BREAKER_FAILURE_PERCENT: withDefault(int(0, 100), '50'),
  UPSTREAM_BREAKER_WINDOW_MS: withDefault(int(1000, 3_600_000), '60000'),
  UPSTREAM_BREAKER_MIN_CALLS: withDefault(int(1, 1_000_000), '20'),
  MAX_ANSWER_CHARS: withDefault(int(1, 100_000_000), '100000'),
  DEFAULT_MAX_OUTPUT_TOKENS: withDefault(int(1, 1_000_000), '4096'),
  CORS_ORIGINS: withDefault(corsOrigins, ''),
  MAX_BODY_BYTES: withDefault(int(64, 10_485_760), '10240'),
  COMPLETIONS_MAX_BODY_BYTES: withDefault(int(1024, 10_485_760), '262144'),
  MODELS_OWNED_BY: withDefault(
    z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, 'must be 1-64 of A-Z a-z 0-9 . _ -'),
    'chat-server',
  ),
  RATE_LIMIT_PER_MINUTE: withDefault(int(1, 1_000_000), '60'),
  RATE_LIMIT_BURST: withDefault(int(1, 1_000_000), '20'),
  RATE_LIMIT_STORE: withDefault(z.enum(['memory', 'postgres', 'postgres-leased']), 'memory'),
  RATE_LIMIT_LEASE_FRACTION: withDefault(fraction, '0.1'),
  AUTH_FAILURES_PER_MINUTE: withDefault(int(1, 100_000), '10'),
  MAX_CONCURRENT_STREAMS_PER_KEY: withDefault(int(1, 1000), '4'),
  STREAM_LEASE_TTL_MS: withDefault(int(1000, 600_000), '30000'),
  TRUST_PROXY: withDefault(trustProxy, 'off'),
  JWT_SECRET: optional(jwtSecret),
  JWT_PUBLIC_KEY_FILE: optional(z.string().min(1)),
  JWT_ISSUER: optional(z.string().min(1)),
  JWT_AUDIENCE: optional(z.string().min(1)),
  // A claim name, not a value: printable, no spaces, as JWT claim names are in practice.
  JWT_BUDGET_CLAIM: optional(
    z.string().regex(/^[A-Za-z0-9_:./-]{1,100}$/, 'must be a claim name (A-Z a-z 0-9 _ : . / -)'),
  ),
  METRICS_TOKEN: optional(z.string().min(16, 'must be at least 16 characters')),
  HSTS: withDefault(bool, 'true'),
  SHUTDOWN_GRACE_MS: withDefault(int(0, 600_000), '10000'),
  // Unset = 5000 or the whole grace when that is shorter; set, it must fit within SHUTDOWN_GRACE_MS.
  DRAIN_READINESS_MS: optional(int(0, 600_000)),
  HEADERS_TIMEOUT_MS: withDefault(int(1000, 15_000), '10000'),
  REQUEST_TIMEOUT_MS: withDefault(int(1000, 60_000), '30000'),
  KEEP_ALIVE_TIMEOUT_MS: withDefault(int(100, 120_000), '5000'),
  MAX_REQUESTS_PER_SOCKET: withDefault(int(0, 1_000_000), '1000'),
  MAX_CONNECTIONS: optional(int(1, 1_000_000)),
} as const;

const DEFAULT_DRAIN_READINESS_MS = 5000;
/** What an environment variable's name may be: upper case, digits and underscores. */
export const VARIABLE_NAME = /^[A-Z_][A-Z0-9_]{0,127}$/;

/** Variable names whose values are secrets; they are never printed. */
export const SECRET_VARIABLES = [
  'OPENAI_API_KEY',
  'JWT_SECRET',
  'METRICS_TOKEN',
  'DATABASE_URL',
  'DATABASE_SESSION_URL',
] as const;

const EnvSchema = z.object(ENV_SCHEMA);
type Env = z.output<typeof EnvSchema>;

/** Values that must never be logged; reachable only through `config.secrets`. */
export interface Secrets {
  openaiApiKey: string | undefined;
  jwtSecret: string | undefined;
  metricsToken: string | undefined;
  databaseUrl: string | undefined;
  /** A direct (session) URL for what needs a session of its own, such as LISTEN; unset = databaseUrl. */
  databaseSessionUrl: string | undefined;
  /** Every secret value, for the logger's redaction list. */
  values: readonly string[];
  /** A provider key from a variable the agents file names (`apiKeyEnv`); undefined when unset or empty. */
  variable(name: string): string | undefined;
}

export interface Config {
  host: string;
  port: number;
  logLevel: (typeof LOG_LEVELS)[number];
  database: {
    /** True when DATABASE_URL is set; false means embedded PGlite in dataDir. */
    external: boolean;
    caFile: string | undefined;
    passwordFile: string | undefined;
    poolMax: number;
    statementTimeoutMs: number;
    maxLifetimeSeconds: number;
    /** `transaction`: DATABASE_URL leads to a transaction-mode pooler; nothing may rely on session state. */
    pooler: 'none' | 'transaction';
  };
  dataDir: string;
  healthDbTimeoutMs: number;
  upstream: {
    baseUrl: string | undefined;
    model: string;
    agentsFile: string | undefined;
    timeoutMs: number;
    idleTimeoutMs: number;
    maxConnections: number;
    maxRetries: number;
    /** Deadline for a whole answer, however steadily it streams. */
    maxDurationMs: number;
    /** Largest upstream response body, in bytes. */
    maxResponseBytes: number;
    /** Output cap of every agent that does not set its own. */
    defaultMaxOutputTokens: number;
    breaker: BreakerConfig;
  };
  /** Longest answer stored or relayed; longer ones end with finish reason `length`. */
  maxAnswerChars: number;
  /** What a stored answer does when its client leaves: run to its end (resumable), or stop. */
  answerOnDisconnect: 'finish' | 'abort';
  /** Tokens per identity per UTC day unless its key sets its own; undefined = unlimited. */
  tokenBudgetPerDay: number | undefined;
  maxMessageChars: number;
  historyMaxChars: number;
  corsOrigins: readonly string[];
  maxBodyBytes: number;
  /** Body cap of POST /v1/chat/completions, which carries a whole history. */
  completionsMaxBodyBytes: number;
  /** `owned_by` of the models GET /v1/models lists. */
  modelsOwnedBy: string;
  rateLimit: {
    perMinute: number;
    burst: number;
    store: 'memory' | 'postgres' | 'postgres-leased';
    /** Largest lease (postgres-leased) as a fraction of the burst. */
    leaseFraction: number;
  };
  authFailuresPerMinute: number;
  maxConcurrentStreamsPerKey: number;
  /** How long a stream lease outlives its instance's last renewal (shared stream caps). */
  streamLeaseTtlMs: number;
  /** Proxy addresses or CIDRs whose X-Forwarded-For is believed; empty means off. */
  trustProxy: readonly string[];
  jwt: {
    publicKeyFile: string | undefined;
    issuer: string | undefined;
    audience: string | undefined;
    /** The claim that sets a JWT identity's tokens per day; unset: JWTs get TOKEN_BUDGET_PER_DAY. */
    budgetClaim: string | undefined;
    enabled: boolean;
  };
  metricsTokenSet: boolean;
  hsts: boolean;
  shutdownGraceMs: number;
  /** How long a drain keeps listening, answering 503, before it closes the listener (within the grace). */
  drainReadinessMs: number;
  http: {
    headersTimeoutMs: number;
    requestTimeoutMs: number;
    keepAliveTimeoutMs: number;
    maxRequestsPerSocket: number;
    maxConnections: number | undefined;
  };
  /** Non-enumerable: JSON.stringify and util.inspect do not show it. */
  readonly secrets: Secrets;
}

/** When an upstream's circuit breaker opens, and how long it stays open before one trial request. */
export interface BreakerConfig {
  /** Consecutive failures that open it. */
  failures: number;
  cooldownMs: number;
  /** Failed share of the calls in the window, in percent, that opens it; 0 = off. */
  failurePercent: number;
  windowMs: number;
  /** Calls the window must hold before the ratio counts. */
  minCalls: number;
}

export type ConfigResult = { ok: true; config: Config } | { ok: false; problems: string[] };

/** Validates an environment record; pure, so tests pass their own. */
export function parseConfig(env: Record<string, string | undefined>): ConfigResult {
  const parsed = EnvSchema.safeParse(env);
  // Issues name the variable and the rule, never the input (zod omits it unless asked).
  const problems = parsed.success
    ? []
    : parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`);
  problems.push(...crossFieldProblems(env));
  if (!parsed.success || problems.length > 0) return { ok: false, problems };
  return { ok: true, config: buildConfig(parsed.data, env) };
}

/** Rules between variables, each run when its variables are valid on their own, so every problem is listed at once. */
function crossFieldProblems(env: Record<string, string | undefined>): string[] {
  const problems: string[] = [];
  const requestTimeout = ENV_SCHEMA.REQUEST_TIMEOUT_MS.safeParse(env['REQUEST_TIMEOUT_MS']);
  const headersTimeout = ENV_SCHEMA.HEADERS_TIMEOUT_MS.safeParse(env['HEADERS_TIMEOUT_MS']);
  if (requestTimeout.success && headersTimeout.success && requestTimeout.data < headersTimeout.data) {
    problems.push('REQUEST_TIMEOUT_MS: must be greater than or equal to HEADERS_TIMEOUT_MS');
  }
  const grace = ENV_SCHEMA.SHUTDOWN_GRACE_MS.safeParse(env['SHUTDOWN_GRACE_MS']);
  const readiness = ENV_SCHEMA.DRAIN_READINESS_MS.safeParse(env['DRAIN_READINESS_MS']);
  if (grace.success && readiness.success && readiness.data !== undefined && readiness.data > grace.data) {
    problems.push('DRAIN_READINESS_MS: must be less than or equal to SHUTDOWN_GRACE_MS');
  }
  const jwtSecretSet = ENV_SCHEMA.JWT_SECRET.safeParse(env['JWT_SECRET']).data !== undefined;
  const publicKeySet = ENV_SCHEMA.JWT_PUBLIC_KEY_FILE.safeParse(env['JWT_PUBLIC_KEY_FILE']).data !== undefined;
  if (jwtSecretSet && publicKeySet) {
    problems.push('JWT_SECRET: set either JWT_SECRET or JWT_PUBLIC_KEY_FILE, not both');
  }
  problems.push(...jwtScopeProblems(env), ...metricsTokenProblems(env), ...databaseProblems(env));
  return problems;
}

/**
 * The session URL and the pooler mode describe how DATABASE_URL is reached, so they need it; and
 * behind a transaction-mode pooler LISTEN hears nothing, so sessions need a direct URL of their own.
 */
function databaseProblems(env: Record<string, string | undefined>): string[] {
  const problems: string[] = [];
  const urlSet = ENV_SCHEMA.DATABASE_URL.safeParse(env['DATABASE_URL']).data !== undefined;
  const sessionUrlSet = ENV_SCHEMA.DATABASE_SESSION_URL.safeParse(env['DATABASE_SESSION_URL']).data !== undefined;
  const pooled = ENV_SCHEMA.DB_POOLER.safeParse(env['DB_POOLER']).data === 'transaction';
  if (!urlSet && sessionUrlSet) problems.push('DATABASE_SESSION_URL: needs DATABASE_URL');
  if (!urlSet && pooled) problems.push('DB_POOLER: transaction needs DATABASE_URL');
  if (urlSet && pooled && !sessionUrlSet) {
    problems.push('DATABASE_SESSION_URL: required with DB_POOLER=transaction, a direct URL for LISTEN');
  }
  return problems;
}

/**
 * Without a token /metrics answers loopback peers, which means "this host" only while nothing relays
 * to us: behind a configured proxy, or listening beyond loopback, a token is required.
 */
function metricsTokenProblems(env: Record<string, string | undefined>): string[] {
  if (isSet(env['METRICS_TOKEN'])) return [];
  const trustProxy = ENV_SCHEMA.TRUST_PROXY.safeParse(env['TRUST_PROXY']);
  const proxied = trustProxy.success && !(trustProxy.data.length === 1 && trustProxy.data[0] === 'off');
  const host = ENV_SCHEMA.HOST.safeParse(env['HOST']);
  const exposed = host.success && !isLoopbackHost(host.data);
  if (!proxied && !exposed) return [];
  return ['METRICS_TOKEN: required when TRUST_PROXY is set or HOST is not a loopback address'];
}

function isLoopbackHost(host: string): boolean {
  if (host.toLowerCase() === 'localhost' || host === '::1') return true;
  const v4 = host.startsWith('::ffff:') ? host.slice(7) : host;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

/** RFC 8725 §3.9: a token minted for another service with the same key must not be accepted here. */
function jwtScopeProblems(env: Record<string, string | undefined>): string[] {
  const problems: string[] = [];
  // Set at all, valid or not: an operator who meant to turn JWTs on hears about every missing piece at once.
  const jwtConfigured = isSet(env['JWT_SECRET']) || isSet(env['JWT_PUBLIC_KEY_FILE']);
  if (jwtConfigured && !isSet(env['JWT_AUDIENCE'])) {
    problems.push('JWT_AUDIENCE: required when JWT_SECRET or JWT_PUBLIC_KEY_FILE is set (the aud tokens must carry)');
  }
  // A public key usually belongs to an identity provider that signs tokens for many services.
  if (isSet(env['JWT_PUBLIC_KEY_FILE']) && !isSet(env['JWT_ISSUER'])) {
    problems.push('JWT_ISSUER: required when JWT_PUBLIC_KEY_FILE is set (the iss tokens must carry)');
  }
  return problems;
}

function isSet(value: string | undefined): boolean {
  return value !== undefined && value !== '';
}

function isExactOrigin(origin: string): boolean {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false;
  }
  return (url.protocol === 'https:' || url.protocol === 'http:') && url.origin === origin;
}

function isAddressOrCidr(entry: string): boolean {
  const [addr, bits, ...rest] = entry.split('/');
  if (rest.length > 0 || addr === undefined) return false;
  const family = isIP(addr);
  if (family === 0) return false;
  if (bits === undefined) return true;
  if (!/^\d{1,3}$/.test(bits)) return false;
  return Number(bits) <= (family === 4 ? 32 : 128);
}

/** The secret values, kept off the config's enumerable fields so no dump or log of it shows them. */
function buildSecrets(e: Env, env: Record<string, string | undefined>): Secrets {
  const values = [
    e.OPENAI_API_KEY,
    e.JWT_SECRET,
    e.METRICS_TOKEN,
    e.DATABASE_URL,
    databasePassword(e.DATABASE_URL),
    e.DATABASE_SESSION_URL,
    databasePassword(e.DATABASE_SESSION_URL),
  ].filter((v): v is string => v !== undefined && v !== '');
  return Object.freeze({
    openaiApiKey: e.OPENAI_API_KEY,
    jwtSecret: e.JWT_SECRET,
    metricsToken: e.METRICS_TOKEN,
    databaseUrl: e.DATABASE_URL,
    databaseSessionUrl: e.DATABASE_SESSION_URL,
    values: Object.freeze(values),
    // Read on demand: which variables hold keys is known only once the agents file is loaded.
    variable: (name: string) => (VARIABLE_NAME.test(name) && env[name] !== '' ? env[name] : undefined),
  });
}

function buildConfig(e: Env, env: Record<string, string | undefined>): Config {
  const trustOff = e.TRUST_PROXY.length === 1 && e.TRUST_PROXY[0] === 'off';
  const secrets = buildSecrets(e, env);
  const config = {
    host: e.HOST,
    port: e.PORT,
    logLevel: e.LOG_LEVEL,
    database: Object.freeze({
      external: e.DATABASE_URL !== undefined,
      caFile: e.DATABASE_CA_FILE,
      passwordFile: e.DATABASE_PASSWORD_FILE,
      poolMax: e.DB_POOL_MAX,
      statementTimeoutMs: e.DB_STATEMENT_TIMEOUT_MS,
      maxLifetimeSeconds: e.DB_MAX_LIFETIME_SECONDS,
      pooler: e.DB_POOLER,
    }),
    dataDir: e.DATA_DIR,
    healthDbTimeoutMs: e.HEALTH_DB_TIMEOUT_MS,
    upstream: Object.freeze({
      baseUrl: e.OPENAI_BASE_URL,
      model: e.OPENAI_MODEL,
      agentsFile: e.AGENTS_FILE,
      timeoutMs: e.UPSTREAM_TIMEOUT_MS,
      idleTimeoutMs: e.UPSTREAM_IDLE_TIMEOUT_MS,
      maxConnections: e.UPSTREAM_MAX_CONNECTIONS,
      maxRetries: e.UPSTREAM_MAX_RETRIES,
      maxDurationMs: e.UPSTREAM_MAX_DURATION_MS,
      maxResponseBytes: e.UPSTREAM_MAX_RESPONSE_BYTES,
      defaultMaxOutputTokens: e.DEFAULT_MAX_OUTPUT_TOKENS,
      breaker: Object.freeze({
        failures: e.UPSTREAM_BREAKER_FAILURES,
        cooldownMs: e.UPSTREAM_BREAKER_COOLDOWN_MS,
        failurePercent: e.UPSTREAM_BREAKER_FAILURE_PERCENT,
        windowMs: e.UPSTREAM_BREAKER_WINDOW_MS,
        minCalls: e.UPSTREAM_BREAKER_MIN_CALLS,
      }),
    }),
    maxAnswerChars: e.MAX_ANSWER_CHARS,
    answerOnDisconnect: e.ANSWER_ON_DISCONNECT,
    tokenBudgetPerDay: e.TOKEN_BUDGET_PER_DAY,
    maxMessageChars: e.MAX_MESSAGE_CHARS,
    historyMaxChars: e.HISTORY_MAX_CHARS,
    corsOrigins: Object.freeze([...e.CORS_ORIGINS]),
    maxBodyBytes: e.MAX_BODY_BYTES,
    completionsMaxBodyBytes: e.COMPLETIONS_MAX_BODY_BYTES,
    modelsOwnedBy: e.MODELS_OWNED_BY,
    rateLimit: Object.freeze({
      perMinute: e.RATE_LIMIT_PER_MINUTE,
      burst: e.RATE_LIMIT_BURST,
      store: e.RATE_LIMIT_STORE,
      leaseFraction: e.RATE_LIMIT_LEASE_FRACTION,
    }),
    authFailuresPerMinute: e.AUTH_FAILURES_PER_MINUTE,
    maxConcurrentStreamsPerKey: e.MAX_CONCURRENT_STREAMS_PER_KEY,
    streamLeaseTtlMs: e.STREAM_LEASE_TTL_MS,
    trustProxy: Object.freeze(trustOff ? [] : [...e.TRUST_PROXY]),
    jwt: Object.freeze({
      publicKeyFile: e.JWT_PUBLIC_KEY_FILE,
      issuer: e.JWT_ISSUER,
      audience: e.JWT_AUDIENCE,
      budgetClaim: e.JWT_BUDGET_CLAIM,
      enabled: e.JWT_SECRET !== undefined || e.JWT_PUBLIC_KEY_FILE !== undefined,
    }),
    metricsTokenSet: e.METRICS_TOKEN !== undefined,
    hsts: e.HSTS,
    shutdownGraceMs: e.SHUTDOWN_GRACE_MS,
    drainReadinessMs: e.DRAIN_READINESS_MS ?? Math.min(DEFAULT_DRAIN_READINESS_MS, e.SHUTDOWN_GRACE_MS),
    http: Object.freeze({
      headersTimeoutMs: e.HEADERS_TIMEOUT_MS,
      requestTimeoutMs: e.REQUEST_TIMEOUT_MS,
      keepAliveTimeoutMs: e.KEEP_ALIVE_TIMEOUT_MS,
      maxRequestsPerSocket: e.MAX_REQUESTS_PER_SOCKET,
      maxConnections: e.MAX_CONNECTIONS,
    }),
  };
  Object.defineProperty(config, 'secrets', { value: secrets, enumerable: false, writable: false });
  return Object.freeze(config) as Config;
}

function databasePassword(url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  try {
    const password = decodeURIComponent(new URL(url).password);
    return password === '' ? undefined : password;
  } catch {
    return undefined;
  }
}

/** Reads process.env; on invalid configuration prints every problem (never a value) and exits 1. */
export function loadConfig(): Config {
  const result = parseConfig(process.env);
  if (result.ok) return result.config;
  process.stderr.write(`Invalid configuration:\n${result.problems.map((p) => `  - ${p}`).join('\n')}\n`);
  process.exit(1);
}
