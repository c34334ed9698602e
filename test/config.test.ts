import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { describe, it } from 'node:test';
import { inspect } from 'node:util';
import { type Config, ENV_SCHEMA, parseConfig, SECRET_VARIABLES } from '../lib/config.ts';

/** A value that must never appear in a problem, a log line or a serialised config. */
const CANARY = 'canary-3b9d6f1a8c2e4d7f90a1b3c5d7e9f1a2';

function valid(env: Record<string, string | undefined>): Config {
  const result = parseConfig(env);
  if (!result.ok) assert.fail(`expected a valid config, got: ${result.problems.join('; ')}`);
  return result.config;
}

function problems(env: Record<string, string | undefined>): string[] {
  const result = parseConfig(env);
  if (result.ok) assert.fail('expected the configuration to be refused');
  return result.problems;
}

/** Asserts that the configuration is refused with a problem naming `variable`. */
function refused(env: Record<string, string | undefined>, variable: string): string[] {
  const list = problems(env);
  assert.ok(
    list.some((p) => p.startsWith(`${variable}: `)),
    `expected a problem naming ${variable}, got: ${list.join('; ')}`,
  );
  return list;
}

describe('parseConfig() defaults', () => {
  it('parseConfig() applies the secure defaults to an empty environment', () => {
    const config = valid({});
    assert.equal(config.host, '127.0.0.1');
    assert.equal(config.port, 8000);
    assert.equal(config.logLevel, 'info');
    assert.equal(config.dataDir, './data');
    assert.equal(config.database.external, false);
    assert.equal(config.healthDbTimeoutMs, 5000);
    assert.equal(config.upstream.timeoutMs, 30_000);
    assert.deepEqual(config.upstream.breaker, {
      failures: 5,
      cooldownMs: 30_000,
      failurePercent: 50,
      windowMs: 60_000,
      minCalls: 20,
    });
    assert.equal(config.maxBodyBytes, 10_240);
    assert.equal(config.rateLimit.store, 'memory');
    assert.equal(config.authFailuresPerMinute, 10);
    assert.equal(config.maxConcurrentStreamsPerKey, 4);
    assert.equal(config.hsts, true);
    assert.deepEqual(config.corsOrigins, []);
    assert.deepEqual(config.trustProxy, []);
    assert.equal(config.jwt.enabled, false);
    assert.ok(config.http.headersTimeoutMs <= 15_000);
    assert.ok(config.http.requestTimeoutMs <= 60_000);
  });

  it('parseConfig() treats an empty string as unset', () => {
    const config = valid({ PORT: '', LOG_LEVEL: '', HSTS: '', OPENAI_API_KEY: '', DATABASE_URL: '', TRUST_PROXY: '' });
    assert.equal(config.port, 8000);
    assert.equal(config.logLevel, 'info');
    assert.equal(config.hsts, true);
    assert.equal(config.secrets.openaiApiKey, undefined);
    assert.equal(config.database.external, false);
    assert.deepEqual(config.trustProxy, []);
  });

  it('parseConfig() reads a valid PORT and LOG_LEVEL', () => {
    const config = valid({ PORT: '9001', LOG_LEVEL: 'debug' });
    assert.equal(config.port, 9001);
    assert.equal(config.logLevel, 'debug');
  });
});

describe('parseConfig() HSTS', () => {
  for (const word of ['false', 'off', '0', 'no', 'FALSE', 'disabled']) {
    it(`parseConfig() reads HSTS=${word} as off`, () => {
      assert.equal(valid({ HSTS: word }).hsts, false);
    });
  }

  for (const word of ['true', 'on', '1', 'yes', 'Enabled']) {
    it(`parseConfig() reads HSTS=${word} as on`, () => {
      assert.equal(valid({ HSTS: word }).hsts, true);
    });
  }

  it('parseConfig() refuses an HSTS value that is not a boolean word', () => {
    // z.coerce.boolean() would read any non-empty string, 'false' included, as true.
    refused({ HSTS: 'maybe' }, 'HSTS');
  });
});

describe('parseConfig() PORT', () => {
  for (const port of ['abc', '70000', '-1', '80.5', ' ', '0x1F90', '1e3']) {
    it(`parseConfig() refuses PORT=${JSON.stringify(port)} naming the variable`, () => {
      refused({ PORT: port }, 'PORT');
    });
  }
});

describe('parseConfig() CORS_ORIGINS', () => {
  it('parseConfig() accepts exact origins and trims the list', () => {
    const config = valid({ CORS_ORIGINS: ' https://app.example.com , http://localhost:5173,' });
    assert.deepEqual(config.corsOrigins, ['https://app.example.com', 'http://localhost:5173']);
  });

  it('parseConfig() refuses CORS_ORIGINS="*"', () => {
    const list = refused({ CORS_ORIGINS: '*' }, 'CORS_ORIGINS');
    assert.match(list.join('\n'), /"\*" is refused/);
  });

  it('parseConfig() refuses "*" among exact origins', () => {
    refused({ CORS_ORIGINS: 'https://app.example.com,*' }, 'CORS_ORIGINS');
  });

  for (const origin of [
    'https://app.example.com/',
    'https://app.example.com/path',
    'ftp://files.example.com',
    'app.example.com',
    'null',
    'https://user@app.example.com',
  ]) {
    it(`parseConfig() refuses the CORS origin ${origin}`, () => {
      refused({ CORS_ORIGINS: origin }, 'CORS_ORIGINS');
    });
  }
});

describe('parseConfig() timeouts', () => {
  it('parseConfig() refuses REQUEST_TIMEOUT_MS below HEADERS_TIMEOUT_MS', () => {
    refused({ HEADERS_TIMEOUT_MS: '10000', REQUEST_TIMEOUT_MS: '9999' }, 'REQUEST_TIMEOUT_MS');
  });

  it('parseConfig() accepts REQUEST_TIMEOUT_MS equal to HEADERS_TIMEOUT_MS', () => {
    const config = valid({ HEADERS_TIMEOUT_MS: '12000', REQUEST_TIMEOUT_MS: '12000' });
    assert.equal(config.http.requestTimeoutMs, 12_000);
    assert.equal(config.http.headersTimeoutMs, 12_000);
  });

  it('parseConfig() refuses a HEADERS_TIMEOUT_MS above 15 s', () => {
    refused({ HEADERS_TIMEOUT_MS: '15001' }, 'HEADERS_TIMEOUT_MS');
  });
});

describe('parseConfig() upstream breaker', () => {
  it('parseConfig() refuses a breaker that could never open or a percentage over 100', () => {
    refused({ UPSTREAM_BREAKER_FAILURES: '0' }, 'UPSTREAM_BREAKER_FAILURES');
    refused({ UPSTREAM_BREAKER_FAILURE_PERCENT: '101' }, 'UPSTREAM_BREAKER_FAILURE_PERCENT');
    refused({ UPSTREAM_BREAKER_COOLDOWN_MS: '10' }, 'UPSTREAM_BREAKER_COOLDOWN_MS');
  });

  it('parseConfig() reads UPSTREAM_BREAKER_FAILURE_PERCENT=0 as the ratio rule turned off', () => {
    assert.equal(valid({ UPSTREAM_BREAKER_FAILURE_PERCENT: '0' }).upstream.breaker.failurePercent, 0);
  });
});

describe('parseConfig() JWT', () => {
  it('parseConfig() refuses a JWT_SECRET of 31 bytes', () => {
    refused({ JWT_SECRET: 'x'.repeat(31) }, 'JWT_SECRET');
  });

  it('parseConfig() accepts a JWT_SECRET of 32 bytes with JWT_AUDIENCE and enables JWT', () => {
    const config = valid({ JWT_SECRET: 'x'.repeat(32), JWT_AUDIENCE: 'chat-api' });
    assert.equal(config.jwt.enabled, true);
    assert.equal(config.secrets.jwtSecret, 'x'.repeat(32));
  });

  it('parseConfig() counts JWT_SECRET in bytes, not characters', () => {
    assert.equal(valid({ JWT_SECRET: 'é'.repeat(16), JWT_AUDIENCE: 'chat-api' }).jwt.enabled, true); // 32 bytes
    refused({ JWT_SECRET: 'é'.repeat(15) }, 'JWT_SECRET'); // 30 bytes
  });

  it('parseConfig() refuses JWT_SECRET together with JWT_PUBLIC_KEY_FILE', () => {
    refused({ JWT_SECRET: 'x'.repeat(40), JWT_PUBLIC_KEY_FILE: '/etc/chat/jwt.pem' }, 'JWT_SECRET');
  });

  it('parseConfig() enables JWT with JWT_PUBLIC_KEY_FILE, JWT_ISSUER and JWT_AUDIENCE', () => {
    const config = valid({ JWT_PUBLIC_KEY_FILE: '/etc/chat/jwt.pem', JWT_ISSUER: 'https://idp', JWT_AUDIENCE: 'chat' });
    assert.equal(config.jwt.enabled, true);
    assert.equal(config.jwt.publicKeyFile, '/etc/chat/jwt.pem');
    assert.deepEqual([config.jwt.issuer, config.jwt.audience], ['https://idp', 'chat']);
  });

  it('parseConfig() refuses JWT_SECRET without JWT_AUDIENCE (RFC 8725 §3.9)', () => {
    refused({ JWT_SECRET: 'x'.repeat(32) }, 'JWT_AUDIENCE');
    refused({ JWT_SECRET: 'x'.repeat(32), JWT_AUDIENCE: '' }, 'JWT_AUDIENCE');
  });

  it('parseConfig() refuses JWT_PUBLIC_KEY_FILE without JWT_AUDIENCE or without JWT_ISSUER', () => {
    refused({ JWT_PUBLIC_KEY_FILE: '/etc/chat/jwt.pem', JWT_ISSUER: 'https://idp' }, 'JWT_AUDIENCE');
    refused({ JWT_PUBLIC_KEY_FILE: '/etc/chat/jwt.pem', JWT_AUDIENCE: 'chat' }, 'JWT_ISSUER');
  });

  it('parseConfig() accepts JWT_SECRET without JWT_ISSUER', () => {
    assert.equal(valid({ JWT_SECRET: 'x'.repeat(32), JWT_AUDIENCE: 'chat' }).jwt.issuer, undefined);
  });

  it('parseConfig() asks for JWT_AUDIENCE also when JWT_SECRET is set but invalid, listing both problems', () => {
    const list = problems({ JWT_SECRET: 'x'.repeat(31) });
    assert.deepEqual(list.map((p) => p.slice(0, p.indexOf(':'))).sort(), ['JWT_AUDIENCE', 'JWT_SECRET']);
  });
});

describe('parseConfig() scaling out', () => {
  const url = 'postgres://chat:pw@pooler.example:6432/chat';

  it('parseConfig() defaults to one instance: memory limits, lease fraction 0.1, no pooler', () => {
    const config = valid({});
    assert.equal(config.rateLimit.leaseFraction, 0.1);
    assert.equal(config.streamLeaseTtlMs, 30_000);
    assert.equal(config.database.pooler, 'none');
    assert.equal(config.secrets.databaseSessionUrl, undefined);
  });

  it('parseConfig() accepts RATE_LIMIT_STORE=postgres-leased with a lease fraction in (0, 1]', () => {
    for (const [text, value] of [
      ['0.25', 0.25],
      ['1', 1],
      ['0.001', 0.001],
    ] as const) {
      const config = valid({ RATE_LIMIT_STORE: 'postgres-leased', RATE_LIMIT_LEASE_FRACTION: text });
      assert.equal(config.rateLimit.store, 'postgres-leased');
      assert.equal(config.rateLimit.leaseFraction, value);
    }
  });

  for (const text of ['0', '0.0', '1.5', '2', '-0.1', '.5', '1e-1', '0,5']) {
    it(`parseConfig() refuses RATE_LIMIT_LEASE_FRACTION=${text}`, () => {
      refused({ RATE_LIMIT_LEASE_FRACTION: text }, 'RATE_LIMIT_LEASE_FRACTION');
    });
  }

  it('parseConfig() reads DB_POOLER=transaction and DATABASE_SESSION_URL as a secret', () => {
    const session = `postgres://chat:${CANARY}@db.example:5432/chat`;
    const config = valid({ DATABASE_URL: url, DB_POOLER: 'transaction', DATABASE_SESSION_URL: session });
    assert.equal(config.database.pooler, 'transaction');
    assert.equal(config.secrets.databaseSessionUrl, session);
    assert.ok(config.secrets.values.includes(session));
    assert.ok(config.secrets.values.includes(CANARY), 'its password is redacted on its own too');
    assert.ok(!JSON.stringify(config).includes(CANARY));
  });

  it('parseConfig() refuses DB_POOLER=transaction without DATABASE_SESSION_URL: LISTEN needs a direct URL', () => {
    refused({ DATABASE_URL: url, DB_POOLER: 'transaction' }, 'DATABASE_SESSION_URL');
  });

  it('parseConfig() refuses DATABASE_SESSION_URL and DB_POOLER=transaction without DATABASE_URL', () => {
    refused({ DATABASE_SESSION_URL: url }, 'DATABASE_SESSION_URL');
    refused({ DB_POOLER: 'transaction' }, 'DB_POOLER');
  });
});

describe('parseConfig() TRUST_PROXY', () => {
  it('parseConfig() reads TRUST_PROXY=off as trusting nobody', () => {
    assert.deepEqual(valid({ TRUST_PROXY: 'off' }).trustProxy, []);
  });

  it('parseConfig() accepts addresses and CIDRs of both families', () => {
    const config = valid({ TRUST_PROXY: '10.0.0.1, 10.0.0.0/8,::1,fd00::/8', METRICS_TOKEN: 'm'.repeat(16) });
    assert.deepEqual(config.trustProxy, ['10.0.0.1', '10.0.0.0/8', '::1', 'fd00::/8']);
  });

  for (const entry of ['proxy.internal', '10.0.0.0/33', 'fd00::/129', '10.0.0.1/8/1', '10.0.0.0/x', 'off,10.0.0.1']) {
    it(`parseConfig() refuses TRUST_PROXY=${entry}`, () => {
      refused({ TRUST_PROXY: entry }, 'TRUST_PROXY');
    });
  }
});

describe('parseConfig() METRICS_TOKEN', () => {
  it('parseConfig() refuses TRUST_PROXY without METRICS_TOKEN: a proxy would make outside requests loopback', () => {
    refused({ TRUST_PROXY: '127.0.0.1' }, 'METRICS_TOKEN');
  });

  for (const host of ['0.0.0.0', '::', '192.0.2.10', 'chat.internal']) {
    it(`parseConfig() refuses HOST=${host} without METRICS_TOKEN`, () => {
      refused({ HOST: host }, 'METRICS_TOKEN');
    });
  }

  for (const host of ['127.0.0.1', '127.0.0.2', '::1', 'localhost']) {
    it(`parseConfig() accepts the loopback HOST=${host} without METRICS_TOKEN`, () => {
      assert.equal(valid({ HOST: host }).metricsTokenSet, false);
    });
  }

  it('parseConfig() accepts TRUST_PROXY and a public HOST with METRICS_TOKEN', () => {
    assert.equal(
      valid({ HOST: '0.0.0.0', TRUST_PROXY: '10.0.0.1', METRICS_TOKEN: 'm'.repeat(16) }).metricsTokenSet,
      true,
    );
  });
});

describe('parseConfig() problems', () => {
  it('parseConfig() lists every problem at once', () => {
    const list = problems({
      PORT: 'eighty',
      CORS_ORIGINS: '*',
      HEADERS_TIMEOUT_MS: '10000',
      REQUEST_TIMEOUT_MS: '5000',
      JWT_SECRET: 'x'.repeat(40),
      JWT_PUBLIC_KEY_FILE: '/k.pem',
    });
    const named = list.map((p) => p.slice(0, p.indexOf(':')));
    assert.deepEqual([...new Set(named)].sort(), [
      'CORS_ORIGINS',
      'JWT_AUDIENCE',
      'JWT_ISSUER',
      'JWT_SECRET',
      'PORT',
      'REQUEST_TIMEOUT_MS',
    ]);
  });

  it('parseConfig() refuses a DATABASE_URL that is not postgres:// or postgresql://', () => {
    refused({ DATABASE_URL: 'mysql://db.example.com/chat' }, 'DATABASE_URL');
  });

  // Variables that take any non-empty string (paths, names, opaque secrets long enough).
  const FREE_TEXT = new Set([
    'DATA_DIR',
    'DATABASE_CA_FILE',
    'DATABASE_PASSWORD_FILE',
    'OPENAI_API_KEY',
    'OPENAI_MODEL',
    'AGENTS_FILE',
    'JWT_SECRET',
    'JWT_PUBLIC_KEY_FILE',
    'JWT_ISSUER',
    'JWT_AUDIENCE',
    'METRICS_TOKEN',
  ]);
  for (const name of Object.keys(ENV_SCHEMA).filter((n) => !FREE_TEXT.has(n))) {
    it(`parseConfig() names ${name} and never echoes its invalid value`, () => {
      const list = refused({ [name]: `${CANARY}\u0000 /*` }, name);
      assert.ok(!list.join('\n').includes(CANARY));
    });
  }

  it('parseConfig() never echoes a short secret in its problems', () => {
    const list = problems({
      JWT_SECRET: CANARY.slice(0, 20),
      JWT_AUDIENCE: 'chat-api',
      METRICS_TOKEN: CANARY.slice(0, 10),
      DATABASE_URL: `postgres//${CANARY}@db`,
    });
    assert.equal(list.length, 3);
    for (const fragment of [CANARY.slice(0, 20), CANARY.slice(0, 10), CANARY])
      assert.ok(!list.join('\n').includes(fragment));
  });
});

describe('parseConfig() secrets', () => {
  const env = {
    OPENAI_API_KEY: `${CANARY}-openai`,
    JWT_SECRET: `${CANARY}-jwt`,
    JWT_AUDIENCE: 'chat-api',
    METRICS_TOKEN: `${CANARY}-metrics`,
    DATABASE_URL: `postgres://chat:${CANARY}%2Fdb@db.example.com:5432/chat`,
  };

  it('JSON.stringify(config) contains no secret value', () => {
    assert.ok(!JSON.stringify(valid(env)).includes(CANARY));
  });

  it('util.inspect(config) contains no secret value', () => {
    assert.ok(!inspect(valid(env), { depth: null }).includes(CANARY));
  });

  it('config.secrets holds every secret value', () => {
    const { secrets } = valid(env);
    assert.equal(secrets.openaiApiKey, `${CANARY}-openai`);
    assert.equal(secrets.jwtSecret, `${CANARY}-jwt`);
    assert.equal(secrets.metricsToken, `${CANARY}-metrics`);
    assert.equal(secrets.databaseUrl, env.DATABASE_URL);
  });

  it('config.secrets.values lists the decoded database password for redaction', () => {
    const { secrets } = valid(env);
    assert.ok(secrets.values.includes(`${CANARY}/db`));
    assert.ok(secrets.values.includes(`${CANARY}-openai`));
  });

  it('config.secrets.variable() reads a variable the agents file names, never an empty or malformed name', () => {
    const { secrets } = valid({ ...env, BACKUP_PROVIDER_KEY: `${CANARY}-backup`, EMPTY_KEY: '' });
    assert.equal(secrets.variable('BACKUP_PROVIDER_KEY'), `${CANARY}-backup`);
    assert.equal(secrets.variable('EMPTY_KEY'), undefined);
    assert.equal(secrets.variable('UNSET_KEY'), undefined);
    assert.equal(secrets.variable('__proto__'), undefined);
    assert.ok(!inspect(valid({ BACKUP_PROVIDER_KEY: CANARY }), { depth: null }).includes(CANARY));
  });

  it('SECRET_VARIABLES names the variables whose values are secrets', () => {
    assert.deepEqual([...SECRET_VARIABLES].sort(), [
      'DATABASE_SESSION_URL',
      'DATABASE_URL',
      'JWT_SECRET',
      'METRICS_TOKEN',
      'OPENAI_API_KEY',
    ]);
  });

  it('parseConfig() returns a frozen config with frozen parts', () => {
    const config = valid(env);
    assert.ok(Object.isFrozen(config));
    for (const part of [
      config.database,
      config.upstream,
      config.http,
      config.jwt,
      config.rateLimit,
      config.corsOrigins,
      config.trustProxy,
      config.secrets,
    ]) {
      assert.ok(Object.isFrozen(part));
    }
    assert.throws(() => {
      (config as { port: number }).port = 1;
    }, TypeError);
  });
});

describe('loadConfig()', () => {
  it('loadConfig() stops the process with every problem named and no secret printed', async () => {
    const script =
      `import('${new URL('../lib/config.ts', import.meta.url).href}')` +
      ".then((m) => { m.loadConfig(); process.stdout.write('started'); });";
    const { code, stdout, stderr } = await new Promise<{ code: number | null; stdout: string; stderr: string }>(
      (resolve) => {
        const child = execFile(
          process.execPath,
          ['--input-type=module', '-e', script],
          {
            env: {
              PATH: process.env['PATH'],
              CORS_ORIGINS: '*',
              PORT: `${CANARY}`,
              JWT_SECRET: CANARY.slice(0, 12),
              OPENAI_API_KEY: CANARY,
            },
          },
          (_err, out, err) => resolve({ code: child.exitCode, stdout: out, stderr: err }),
        );
      },
    );
    assert.equal(code, 1);
    assert.equal(stdout, '');
    for (const name of ['CORS_ORIGINS', 'PORT', 'JWT_SECRET']) assert.match(stderr, new RegExp(`- ${name}: `));
    assert.ok(!stderr.includes(CANARY.slice(0, 12)));
  });
});
