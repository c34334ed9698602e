// Which agents an identity may use: every agent, unless its key names some (`keys … --agents a,b`).
// To a limited key the other agents do not exist: they are not listed, and naming one answers 404,
// the same as naming an agent nobody has, so it cannot learn which ones exist.
import { AppError } from '../errors.ts';
import type { Identity } from '../http/types.ts';
import type { Agent, AgentRegistry, AgentSummary } from './agents.ts';

/** What a limited identity gets for any agent outside its list. */
export const NO_SUCH_AGENT = new AppError('NOT_FOUND', { detail: 'No such agent' });

/**
 * The agent an identity asked for (or its default when it named none): `unknown` for an agent
 * nobody has, `forbidden` for one this identity may not use or cannot see.
 */
export function agentFor(
  agents: AgentRegistry,
  identity: Identity,
  id: string | undefined,
): Agent | 'unknown' | 'forbidden' {
  const allowed = identity.policy?.agents;
  if (allowed === undefined) return agents.get(id ?? agents.defaultId) ?? 'unknown';
  // A limited key's default: the server's, when it may use it; else the first of its own that exists.
  const wanted = id ?? (allowed.includes(agents.defaultId) ? agents.defaultId : allowed.find((a) => agents.get(a)));
  if (wanted === undefined || !allowed.includes(wanted)) return 'forbidden';
  return agents.get(wanted) ?? 'forbidden';
}

/** Whether this identity may use the agent with this id. */
export function mayUse(identity: Identity, agentId: string): boolean {
  const allowed = identity.policy?.agents;
  return allowed === undefined || allowed.includes(agentId);
}

/** The agents this identity may use, in the registry's order. */
export function visibleAgents(agents: AgentRegistry, identity: Identity): readonly AgentSummary[] {
  const allowed = identity.policy?.agents;
  return allowed === undefined ? agents.list() : agents.list().filter((a) => allowed.includes(a.id));
}
