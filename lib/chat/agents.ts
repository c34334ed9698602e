// Agents: server-side system prompts, models and sampling caps, loaded once at start.
//
// Clients only name an agent; they can never send a system prompt, model or upstream URL
// (the gateway lesson: LiteLLM PR #5418, LibreChat enforceModelSpec). The file is validated
// strictly so a typo in a field name fails the start instead of being silently ignored, and
// error messages name the file and the problems but never echo a prompt.
import { readFile } from 'node:fs/promises';
import * as z from 'zod';
import { type Config, ENV_SCHEMA, VARIABLE_NAME } from '../config.ts';

/** Another model to try when the agent's own fails before its first token; optionally on another server. */
export interface AgentFallback {
  readonly model: string;
  /** Another OpenAI-compatible server; unset = OPENAI_BASE_URL (and its key). */
  readonly baseURL?: string;
  /** The environment variable holding this server's key: its name, never the key. */
  readonly apiKeyEnv?: string;
}

/** One agent as the chat service uses it. */
export interface Agent {
  readonly id: string;
  readonly description: string;
  readonly model: string;
  readonly systemPrompt: string;
  /** Pinned: a client's temperature is ignored. */
  readonly temperature?: number;
  /** Bounds a client's temperature is clamped to when the agent does not pin one. */
  readonly temperatureRange: readonly [number, number];
  /** Pinned: a client's top_p is ignored. */
  readonly topP?: number;
  readonly topPRange: readonly [number, number];
  /** The output cap sent upstream; a client may ask for less, never more. */
  readonly maxOutputTokens: number;
  /** What happens to a client's own system/developer messages: kept after the agent's prompt, or refused. */
  readonly clientSystemMessages: 'append' | 'refuse';
  /** Tried in order when the model fails before its first token (connection, 5xx, 429, first-token timeout). */
  readonly fallbacks: readonly AgentFallback[];
}

/** The public view of an agent: never its prompt. */
export interface AgentSummary {
  readonly id: string;
  readonly description: string;
}

/** The loaded agents, looked up by id. */
export interface AgentRegistry {
  get(id: string): Agent | undefined;
  /** Ids and descriptions, computed once. */
  list(): readonly AgentSummary[];
  /** Every agent, for building the upstream clients and breakers of their models at start. */
  all(): readonly Agent[];
  readonly defaultId: string;
}

const DEFAULT_ID = 'default';
const DEFAULT_PROMPT =
  'You are a helpful assistant. Answer clearly and concisely. If you do not know something, say so.';
const MAX_AGENTS = 1000;
const MAX_FALLBACKS = 4;

/** A [min, max] pair within [lo, hi]. */
function range(lo: number, hi: number) {
  return z
    .tuple([z.number().min(lo).max(hi), z.number().min(lo).max(hi)])
    .refine(([min, max]) => min <= max, 'must be [min, max] with min <= max');
}

// A key in the URL would be a secret in the agents file and in every log line naming the endpoint.
function plainBaseUrl(text: string): boolean {
  const url = new URL(text);
  return url.username === '' && url.password === '' && url.search === '' && url.hash === '';
}
// The server's own secrets (JWT_SECRET, DATABASE_URL, …) must never be sent to a provider as its key.
const SERVER_VARIABLES = new Set<string>(Object.keys(ENV_SCHEMA).filter((name) => name !== 'OPENAI_API_KEY'));

const FallbackSchema = z.strictObject({
  model: z.string().min(1).max(200),
  baseURL: z
    .url({ protocol: /^https?$/ })
    .refine(plainBaseUrl, 'must have no user, password, query or fragment (name the key in apiKeyEnv)')
    .optional(),
  apiKeyEnv: z
    .string()
    .regex(VARIABLE_NAME, 'must be an environment variable name (A-Z, 0-9, _)')
    .refine((name) => !SERVER_VARIABLES.has(name), 'must not name one of the server configuration variables')
    .optional(),
});

const ID_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const AgentSchema = z.strictObject({
  id: z
    .string()
    .regex(ID_PATTERN, 'must be 1-64 characters of a-z, 0-9, ".", "_" or "-", starting with a letter or digit'),
  description: z.string().max(500),
  // Optional so one OPENAI_MODEL switch (e.g. to a local server) moves every agent along.
  model: z.string().min(1).max(200).optional(),
  systemPrompt: z.string().min(1).max(20_000),
  temperature: z.number().min(0).max(2).optional(),
  temperatureRange: range(0, 2).optional(),
  topP: z.number().min(0).max(1).optional(),
  topPRange: range(0, 1).optional(),
  maxOutputTokens: z.number().int().min(1).max(200_000).optional(),
  clientSystemMessages: z.enum(['append', 'refuse']).optional(),
  fallbacks: z.array(FallbackSchema).max(MAX_FALLBACKS).optional(),
});
const AgentsFileSchema = z.array(AgentSchema).max(MAX_AGENTS);

/** Loads AGENTS_FILE (when set) plus the built-in `default` agent; throws a clear Error on an invalid file. */
export async function loadAgents(config: Config): Promise<AgentRegistry> {
  const file = config.upstream.agentsFile;
  const fromFile = file === undefined ? [] : parseAgentsFile(file, await readAgentsFile(file));
  const unset = unsetKeyVariables(fromFile, config);
  if (unset.length > 0) throw new Error(`Invalid agents file ${file}:\n${unset.map((p) => `  - ${p}`).join('\n')}`);
  const agents = fromFile.map((a) => withDefaults(a, config));
  if (!agents.some((a) => a.id === DEFAULT_ID)) {
    const builtIn = { id: DEFAULT_ID, description: 'A general helpful assistant', systemPrompt: DEFAULT_PROMPT };
    agents.unshift(withDefaults(builtIn, config));
  }
  return createRegistry(agents);
}

/** An agent from the file (or the built-in one) with the configured model, output cap and open bounds. */
export function withDefaults(a: FileAgent, config: Config): Agent {
  const open: { temperature: readonly [number, number]; topP: readonly [number, number] } = {
    temperature: [0, 2],
    topP: [0, 1],
  };
  return Object.freeze({
    ...a,
    model: a.model ?? config.upstream.model,
    maxOutputTokens: a.maxOutputTokens ?? config.upstream.defaultMaxOutputTokens,
    temperatureRange: a.temperatureRange ?? open.temperature,
    topPRange: a.topPRange ?? open.topP,
    clientSystemMessages: a.clientSystemMessages ?? 'append',
    fallbacks: Object.freeze((a.fallbacks ?? []).map((f) => Object.freeze({ ...f }))),
  });
}

/** Every fallback key variable the file names that the environment does not set. */
function unsetKeyVariables(agents: readonly FileAgent[], config: Config): string[] {
  const problems: string[] = [];
  agents.forEach((agent, i) => {
    agent.fallbacks?.forEach((f, j) => {
      if (f.apiKeyEnv !== undefined && config.secrets.variable(f.apiKeyEnv) === undefined)
        problems.push(`[${i}].fallbacks[${j}].apiKeyEnv: ${f.apiKeyEnv} is not set`);
    });
  });
  return problems;
}

/** Builds a registry from already-validated agents (tests and alternative sources). */
export function createRegistry(agents: readonly Agent[]): AgentRegistry {
  const byId = new Map(agents.map((a) => [a.id, a] as const));
  const summaries = Object.freeze(agents.map((a) => Object.freeze({ id: a.id, description: a.description })));
  const all = Object.freeze([...agents]);
  return Object.freeze({
    get: (id: string) => byId.get(id),
    list: () => summaries,
    all: () => all,
    defaultId: DEFAULT_ID,
  });
}

async function readAgentsFile(file: string): Promise<string> {
  try {
    return await readFile(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'unknown error';
    throw new Error(`Cannot read agents file ${file}: ${code}`, { cause: err });
  }
}

type FileAgent = z.output<typeof AgentSchema>;

/** Parses and validates the file's text; the error lists every problem by path, never a value. */
export function parseAgentsFile(file: string, text: string): FileAgent[] {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    // JSON.parse quotes the text around the error, which may be prompt content: keep only the position.
    const position = /position (\d+)/.exec(String((err as Error).message))?.[1];
    throw new Error(
      `Invalid agents file ${file}: not valid JSON${position === undefined ? '' : ` (at position ${position})`}`,
    );
  }
  const parsed = AgentsFileSchema.safeParse(json);
  const problems = parsed.success ? [] : parsed.error.issues.map((i) => `${formatPath(i.path)}: ${i.message}`);
  problems.push(...duplicateProblems(json));
  if (problems.length > 0 || !parsed.success) {
    throw new Error(`Invalid agents file ${file}:\n${problems.map((p) => `  - ${p}`).join('\n')}`);
  }
  return parsed.data;
}

/** Duplicate ids, checked on the raw input so they are reported next to any schema problems. */
function duplicateProblems(json: unknown): string[] {
  if (!Array.isArray(json)) return [];
  const seen = new Set<string>();
  const problems: string[] = [];
  json.forEach((item: unknown, i) => {
    const id = (item as { id?: unknown } | null)?.id;
    if (typeof id !== 'string' || !ID_PATTERN.test(id)) return; // a bad id is already a schema problem
    if (seen.has(id)) problems.push(`[${i}].id: duplicate id "${id}"`);
    seen.add(id);
  });
  return problems;
}

function formatPath(path: readonly PropertyKey[]): string {
  if (path.length === 0) return '(root)';
  return path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .replace(/^\./, '');
}
