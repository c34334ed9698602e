// deploy/chat-server.service: its contract lines, systemd's own parser, and its sandbox score.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { ENV_SCHEMA } from '../../lib/config.ts';

const unitPath = fileURLToPath(new URL('../../deploy/chat-server.service', import.meta.url));
const unitText = readFileSync(unitPath, 'utf8');
const MAX_EXPOSURE = 2.0;

// CI installs systemd (.ci/run); only a machine without it may skip the systemd-analyze tests.
const analyzeMissing = spawnSync('systemd-analyze', ['--version'], { encoding: 'utf8' }).error !== undefined;
const skipWithoutAnalyze = analyzeMissing ? 'systemd-analyze is not installed' : false;

/** Every `Key=value` of the [Service] section, in order, repeated keys kept. */
function serviceSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    if (line.startsWith('[')) section = line;
    else if (section === '[Service]') {
      const eq = line.indexOf('=');
      const key = line.slice(0, eq);
      settings.set(key, [...(settings.get(key) ?? []), line.slice(eq + 1)]);
    }
  }
  return settings;
}

/** systemd time span (`20s`, `1min 30s`, `500ms`, bare seconds) in milliseconds. */
function timeSpanMs(span: string): number {
  const units: Record<string, number> = { ms: 1, s: 1000, sec: 1000, m: 60_000, min: 60_000, h: 3_600_000 };
  let total = 0;
  for (const m of span.matchAll(/(\d+(?:\.\d+)?)\s*([a-z]*)/g))
    total += Number(m[1]) * (units[m[2] || 's'] ?? Number.NaN);
  return total;
}

const settings = serviceSettings(unitText);
const one = (key: string) => settings.get(key)?.at(-1);

describe('deploy/chat-server.service', () => {
  it('runs Node with --env-file on /opt/chat-server/server.ts', () => {
    assert.equal(one('ExecStart'), '/usr/bin/node --env-file=/etc/chat-server/env /opt/chat-server/server.ts');
    assert.equal(one('WorkingDirectory'), '/opt/chat-server');
  });

  it('bounds the young generation and malloc arenas as npm start and the benchmark do', () => {
    const flag = '--max-semi-space-size=4';
    assert.ok(settings.get('Environment')?.includes(`NODE_OPTIONS=${flag}`), 'Environment=NODE_OPTIONS in the unit');
    assert.ok(settings.get('Environment')?.includes('MALLOC_ARENA_MAX=2'), 'Environment=MALLOC_ARENA_MAX in the unit');
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
      scripts: Record<string, string>;
    };
    const start = pkg.scripts['start']?.split(' ') ?? [];
    assert.ok(start.includes(flag), 'npm start passes the flag');
    assert.equal(start[0], 'MALLOC_ARENA_MAX=2', 'npm start sets the arena count');
    const bench = readFileSync(new URL('../../bench/support/ours.ts', import.meta.url), 'utf8');
    assert.match(
      bench,
      /PRODUCTION_NODE_FLAGS: readonly string\[\] = \['--max-semi-space-size=4'\]/,
      'bench/support/ours.ts flags',
    );
    assert.match(
      bench,
      /PRODUCTION_ENV: Readonly<Record<string, string>> = \{ MALLOC_ARENA_MAX: '2' \}/,
      'bench/support/ours.ts environment',
    );
  });

  it('TimeoutStopSec outlasts the default SHUTDOWN_GRACE_MS drain, and SIGTERM starts it', () => {
    const graceMs = ENV_SCHEMA.SHUTDOWN_GRACE_MS.parse(undefined);
    const stopMs = timeSpanMs(one('TimeoutStopSec') ?? '');
    assert.ok(stopMs > graceMs, `TimeoutStopSec ${stopMs} ms must exceed SHUTDOWN_GRACE_MS ${graceMs} ms`);
    assert.equal(one('KillSignal'), 'SIGTERM');
  });

  it('runs as a dynamic user with its state in /var/lib/chat-server and a fixed fd budget', () => {
    assert.equal(one('DynamicUser'), 'yes');
    assert.equal(one('StateDirectory'), 'chat-server');
    assert.ok(settings.get('Environment')?.includes('DATA_DIR=/var/lib/chat-server'));
    assert.equal(one('LimitNOFILE'), '65536');
    assert.equal(one('Restart'), 'on-failure');
  });

  it('leaves MemoryDenyWriteExecute off, because V8 maps its JIT code writable and executable', () => {
    assert.equal(settings.has('MemoryDenyWriteExecute'), false);
  });

  it('systemd-analyze verify accepts every setting', { skip: skipWithoutAnalyze }, (t) => {
    // verify also checks that ExecStart's binary exists; point it at this Node so the check is portable.
    const dir = mkdtempSync(join(tmpdir(), 'unit-'));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const copy = join(dir, 'chat-server.service');
    writeFileSync(copy, unitText.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `));
    const run = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8' });
    const complaints = `${run.stdout}${run.stderr}`.split('\n').filter((l) => l.includes('chat-server.service'));
    assert.deepEqual(complaints, []);
    assert.equal(run.status, 0);
  });

  it(`systemd-analyze security rates the sandbox at or below ${MAX_EXPOSURE}`, { skip: skipWithoutAnalyze }, () => {
    const run = spawnSync('systemd-analyze', ['security', '--offline=true', '--no-pager', unitPath], {
      encoding: 'utf8',
    });
    assert.equal(run.status, 0, run.stderr);
    const m = /Overall exposure level for chat-server\.service: (\d+(?:\.\d+)?)/.exec(run.stdout);
    assert.ok(m, `no overall exposure line in:\n${run.stdout}${run.stderr}`);
    const exposure = Number(m[1]);
    assert.ok(exposure <= MAX_EXPOSURE, `exposure ${exposure} > ${MAX_EXPOSURE}:\n${run.stdout}`);
  });
});
