// Which agents an identity may use, decided without a server: a limited key sees only its own list,
// and cannot tell an agent outside it from one nobody has.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { agentFor, mayUse, NO_SUCH_AGENT, visibleAgents } from '../../lib/chat/agent-access.ts';
import { type Agent, createRegistry, withDefaults } from '../../lib/chat/agents.ts';
import { AppError } from '../../lib/errors.ts';
import type { Identity, IdentityPolicy } from '../../lib/http/types.ts';
import { testConfig } from '../support/config.ts';

const config = testConfig();

function agent(id: string): Agent {
  return withDefaults({ id, description: `The ${id} agent`, systemPrompt: `You are ${id}.` }, config);
}

/** alpha, default, beta, gamma: the server default is neither first nor last. */
const registry = createRegistry(['alpha', 'default', 'beta', 'gamma'].map(agent));
/** A registry without the server default, as a test may build one. */
const withoutDefault = createRegistry(['alpha', 'beta'].map(agent));

function open(): Identity {
  return { id: 'key:open', kind: 'key' };
}

function limited(agents: readonly string[], rest: IdentityPolicy = {}): Identity {
  return { id: 'key:limited', kind: 'key', policy: { ...rest, agents } };
}

function idOf(found: ReturnType<typeof agentFor>): string {
  return typeof found === 'string' ? found : found.id;
}

describe('agentFor() for an identity without an agent list', () => {
  it('agentFor() answers the agent named, and the server default when none is named', () => {
    assert.equal(agentFor(registry, open(), 'beta'), registry.get('beta'));
    assert.equal(agentFor(registry, open(), undefined), registry.get('default'));
  });

  it('agentFor() answers unknown for an agent nobody has', () => {
    assert.equal(agentFor(registry, open(), 'delta'), 'unknown');
    assert.equal(agentFor(registry, open(), ''), 'unknown');
  });

  it('agentFor() treats a policy without agents as no list at all', () => {
    const identity: Identity = { id: 'jwt:x', kind: 'jwt', policy: { rateLimitBurst: 2, tokensPerDay: 10 } };
    assert.equal(agentFor(registry, identity, 'gamma'), registry.get('gamma'));
    assert.equal(agentFor(registry, identity, 'delta'), 'unknown');
  });

  it('agentFor() answers unknown when none is named and the registry has no default agent', () => {
    assert.equal(agentFor(withoutDefault, open(), undefined), 'unknown');
  });
});

describe('agentFor() for an identity with an agent list', () => {
  it('agentFor() answers an agent on the list by its id', () => {
    assert.equal(agentFor(registry, limited(['beta', 'gamma']), 'gamma'), registry.get('gamma'));
  });

  it('agentFor() answers forbidden alike for an agent off the list and for one nobody has', () => {
    const identity = limited(['beta']);
    assert.equal(agentFor(registry, identity, 'alpha'), 'forbidden');
    assert.equal(agentFor(registry, identity, 'default'), 'forbidden');
    assert.equal(agentFor(registry, identity, 'delta'), 'forbidden');
  });

  it('agentFor() answers forbidden for a listed agent the registry does not have', () => {
    assert.equal(agentFor(registry, limited(['beta', 'retired']), 'retired'), 'forbidden');
  });

  it('agentFor() defaults to the server default when the list includes it, wherever it stands', () => {
    assert.equal(idOf(agentFor(registry, limited(['gamma', 'default']), undefined)), 'default');
  });

  it('agentFor() defaults to the first listed agent that exists when the list leaves out the server default', () => {
    assert.equal(idOf(agentFor(registry, limited(['retired', 'gamma', 'beta']), undefined)), 'gamma');
  });

  it('agentFor() answers forbidden with none named when no listed agent exists', () => {
    assert.equal(agentFor(registry, limited(['retired', 'gone']), undefined), 'forbidden');
  });

  it('agentFor() answers forbidden for every request of an identity whose list is empty', () => {
    const identity = limited([]);
    assert.equal(agentFor(registry, identity, undefined), 'forbidden');
    assert.equal(agentFor(registry, identity, 'default'), 'forbidden');
  });

  it('agentFor() matches agent ids exactly, not by case or prefix', () => {
    const identity = limited(['beta']);
    assert.equal(agentFor(registry, identity, 'Beta'), 'forbidden');
    assert.equal(agentFor(registry, identity, 'bet'), 'forbidden');
  });
});

describe('mayUse()', () => {
  it('mayUse() allows every agent id to an identity without a list, even one nobody has', () => {
    assert.equal(mayUse(open(), 'alpha'), true);
    assert.equal(mayUse({ id: 'jwt:x', kind: 'jwt', policy: { maxStreams: 1 } }, 'anything'), true);
  });

  it('mayUse() allows only the listed ids to an identity with a list', () => {
    const identity = limited(['alpha', 'gamma']);
    assert.deepEqual(
      ['alpha', 'beta', 'gamma', 'default'].map((id) => mayUse(identity, id)),
      [true, false, true, false],
    );
  });

  it('mayUse() allows nothing to an identity whose list is empty', () => {
    assert.equal(mayUse(limited([]), 'default'), false);
  });
});

describe('visibleAgents()', () => {
  it('visibleAgents() lists every agent, in registry order, to an identity without a list', () => {
    assert.deepEqual(
      visibleAgents(registry, open()).map((a) => a.id),
      ['alpha', 'default', 'beta', 'gamma'],
    );
  });

  it("visibleAgents() lists only a limited identity's agents, in registry order, skipping ids nobody has", () => {
    const seen = visibleAgents(registry, limited(['gamma', 'retired', 'alpha']));
    assert.deepEqual(seen, [
      { id: 'alpha', description: 'The alpha agent' },
      { id: 'gamma', description: 'The gamma agent' },
    ]);
  });

  it('visibleAgents() lists nothing to an identity whose list is empty', () => {
    assert.deepEqual(visibleAgents(registry, limited([])), []);
  });

  it('visibleAgents() never carries a system prompt or a model', () => {
    for (const summary of visibleAgents(registry, limited(['beta']))) {
      assert.deepEqual(Object.keys(summary).sort(), ['description', 'id']);
    }
  });
});

describe('NO_SUCH_AGENT', () => {
  it('NO_SUCH_AGENT is a client-facing 404 NOT_FOUND saying only that there is no such agent', () => {
    assert.ok(NO_SUCH_AGENT instanceof AppError);
    assert.deepEqual(
      [NO_SUCH_AGENT.status, NO_SUCH_AGENT.code, NO_SUCH_AGENT.expose, NO_SUCH_AGENT.detail],
      [404, 'NOT_FOUND', true, 'No such agent'],
    );
  });
});
