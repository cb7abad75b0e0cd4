import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ApiKeys, KeysFileError, OPEN_ACCESS, parseKeysFile } from '../../src/auth/ApiKeys';
import { UnauthenticatedError } from '../../src/core/errors';

const sha = (key: string): string => createHash('sha256').update(key).digest('hex');
const file = (tenants: unknown[]): string => JSON.stringify({ tenants });

interface Logged {
  level: 'info' | 'error';
  obj: Record<string, unknown>;
  msg?: string;
}

function recorder(): { logger: { info(o: object, m?: string): void; error(o: object, m?: string): void }; lines: Logged[] } {
  const lines: Logged[] = [];
  return {
    lines,
    logger: {
      info: (obj, msg) => lines.push({ level: 'info', obj: obj as Record<string, unknown>, msg }),
      error: (obj, msg) => lines.push({ level: 'error', obj: obj as Record<string, unknown>, msg }),
    },
  };
}

async function until(cond: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe('API keys file', () => {
  let dir: string;
  let keysPath: string;
  beforeEach(() => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-keys-'));
    keysPath = path.join(dir, 'keys.json');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  describe('parsing', () => {
    it('accepts the documented format, with and without quotas, and upper-case hex', () => {
      const entries = parseKeysFile(
        file([
          { name: 'alpha', keySha256: sha('a-key'), quotas: { interpreters: 10, registrations: 100, concurrentRuns: 4, dedicatedMemoryMb: 256 } },
          { name: 'beta', keySha256: sha('b-key').toUpperCase() },
        ]),
      );
      assert.equal(entries.length, 2);
      assert.deepEqual(entries[0].tenant, { name: 'alpha', quotas: { interpreters: 10, registrations: 100, concurrentRuns: 4, dedicatedMemoryMb: 256 } });
      assert.deepEqual(entries[1].tenant, { name: 'beta', quotas: {} });
    });

    it('accepts a tenant listed twice (key rotation) when its entries agree on quotas', () => {
      const entries = parseKeysFile(
        file([
          { name: 'alpha', keySha256: sha('old'), quotas: { interpreters: 3 } },
          { name: 'alpha', keySha256: sha('new'), quotas: { interpreters: 3 } },
        ]),
      );
      assert.equal(entries.length, 2);
    });

    const bad: [string, string, RegExp][] = [
      ['not JSON', '{tenants:', /not valid JSON/],
      ['an array at the top', '[]', /top level must be an object/],
      ['an unknown top-level field', JSON.stringify({ tenants: [], extra: 1 }), /unknown top-level field "extra"/],
      ['tenants not an array', JSON.stringify({ tenants: {} }), /"tenants" must be an array/],
      ['a tenant that is not an object', file(['alpha']), /tenants\[0\] must be an object/],
      ['a missing name', file([{ keySha256: sha('k') }]), /tenants\[0\]\.name must be/],
      ['a name with a space', file([{ name: 'a b', keySha256: sha('k') }]), /tenants\[0\]\.name must be/],
      ['a plaintext key', file([{ name: 'alpha', keySha256: 'my-secret-key' }]), /tenants\[0\]\.keySha256 must be 64 hex digits/],
      ['a misspelt field', file([{ name: 'alpha', keysha256: sha('k') }]), /unknown field "keysha256"/],
      ['an unknown quota', file([{ name: 'alpha', keySha256: sha('k'), quotas: { interpreter: 1 } }]), /unknown quota "interpreter"/],
      ['a negative quota', file([{ name: 'alpha', keySha256: sha('k'), quotas: { registrations: -1 } }]), /quotas\.registrations must be a whole number/],
      ['a fractional quota', file([{ name: 'alpha', keySha256: sha('k'), quotas: { concurrentRuns: 1.5 } }]), /quotas\.concurrentRuns must be a whole number/],
      ['one key for two tenants', file([{ name: 'alpha', keySha256: sha('k') }, { name: 'beta', keySha256: sha('k').toUpperCase() }]), /tenants\[1\]\.keySha256 is already used/],
      [
        'a tenant listed twice with different quotas',
        file([
          { name: 'alpha', keySha256: sha('1'), quotas: { interpreters: 1 } },
          { name: 'alpha', keySha256: sha('2'), quotas: { interpreters: 2 } },
        ]),
        /tenant "alpha" is listed again with different quotas/,
      ],
    ];
    for (const [what, text, pattern] of bad) {
      it(`refuses ${what}, saying where`, () => {
        assert.throws(() => parseKeysFile(text), (err: unknown) => err instanceof KeysFileError && pattern.test(err.message));
      });
    }

    it('never repeats a key or digest in its messages', () => {
      const digest = sha('k');
      for (const text of [file([{ name: 'alpha', keySha256: 'plain-secret' }]), file([{ name: 'a', keySha256: digest }, { name: 'b', keySha256: digest }])]) {
        assert.throws(() => parseKeysFile(text), (err: Error) => !err.message.includes('plain-secret') && !err.message.includes(digest));
      }
    });
  });

  describe('authentication', () => {
    it('maps a valid bearer key to its tenant (case-insensitive scheme) and refuses everything else', () => {
      writeFileSync(keysPath, file([{ name: 'alpha', keySha256: sha('alpha-key'), quotas: { interpreters: 2 } }, { name: 'beta', keySha256: sha('beta-key') }]));
      const keys = ApiKeys.load(keysPath);
      assert.deepEqual(keys.authenticate(['Bearer alpha-key']), { name: 'alpha', quotas: { interpreters: 2 } });
      assert.equal(keys.authenticate(['bearer beta-key']).name, 'beta');
      const refused: [unknown[], RegExp][] = [
        [[], /missing credentials/],
        [['Bearer wrong-key'], /the API key is not valid/],
        [['alpha-key'], /malformed "authorization" metadata/],
        [['Basic YWxwaGE6a2V5'], /malformed/],
        [['Bearer alpha-key extra'], /malformed/],
        [['Bearer alpha-key', 'Bearer beta-key'], /exactly one/],
        [[Buffer.from('Bearer alpha-key')], /malformed/],
        [[`Bearer ${'x'.repeat(5000)}`], /not valid/],
      ];
      for (const [md, pattern] of refused) {
        assert.throws(() => keys.authenticate(md), (err: unknown) => err instanceof UnauthenticatedError && pattern.test(err.message), String(md[0]).slice(0, 40));
      }
    });

    it('treats every caller as the default tenant without a keys file', () => {
      assert.equal(OPEN_ACCESS.open, true);
      assert.equal(OPEN_ACCESS.authenticate([]).name, 'default');
      assert.equal(OPEN_ACCESS.authenticate(['Bearer anything']).name, 'default');
    });

    it('refuses to start on a missing or malformed file, naming the file', () => {
      assert.throws(() => ApiKeys.load(path.join(dir, 'absent.json')), /cannot read .*absent\.json: ENOENT/);
      writeFileSync(keysPath, file([{ name: 'alpha', keySha256: 'nope' }]));
      assert.throws(() => ApiKeys.load(keysPath), (err: Error) => err instanceof KeysFileError && err.message.startsWith(keysPath) && /keySha256/.test(err.message));
    });
  });

  describe('reloading', () => {
    it('puts a new file in force on reload, and keeps the previous keys when the new file is bad', async () => {
      writeFileSync(keysPath, file([{ name: 'alpha', keySha256: sha('k1') }]));
      const { logger, lines } = recorder();
      const keys = ApiKeys.load(keysPath, logger);
      writeFileSync(keysPath, file([{ name: 'alpha', keySha256: sha('k2') }, { name: 'beta', keySha256: sha('beta-secret-3') }]));
      assert.equal(await keys.reload(), true);
      assert.throws(() => keys.authenticate(['Bearer k1']), UnauthenticatedError);
      assert.equal(keys.authenticate(['Bearer k2']).name, 'alpha');
      assert.deepEqual(keys.tenantNames, ['alpha', 'beta']);
      assert.equal(lines.at(-1)?.msg, 'API keys reloaded');

      // Values long enough that a random temporary directory name in the logged path cannot
      // contain them by chance (it once held "k3").
      writeFileSync(keysPath, '{"tenants": [{"name": "alpha", "keySha256": "not-a-digest-4"}]}');
      assert.equal(await keys.reload(), false);
      assert.equal(keys.authenticate(['Bearer beta-secret-3']).name, 'beta', 'the previous keys stay in force');
      const rejected = lines.at(-1);
      assert.equal(rejected?.level, 'error');
      assert.match(String(rejected?.obj.reason), /tenants\[0\]\.keySha256/);
      assert.doesNotMatch(JSON.stringify(rejected), /not-a-digest-4|beta-secret-3/);

      rmSync(keysPath);
      assert.equal(await keys.reload(), false);
      assert.match(String(lines.at(-1)?.obj.reason), /ENOENT/);
      assert.equal(keys.authenticate(['Bearer k2']).name, 'alpha');
    });

    it('notices a changed file by itself, including a Kubernetes-style symlink swap', async () => {
      // A Secret volume: keys.json -> ..data/keys.json, ..data -> a timestamped directory that
      // the kubelet replaces by swapping the ..data link.
      const { symlinkSync, mkdirSync, renameSync } = await import('node:fs');
      mkdirSync(path.join(dir, 'v1'));
      writeFileSync(path.join(dir, 'v1', 'keys.json'), file([{ name: 'alpha', keySha256: sha('one') }]));
      symlinkSync('v1', path.join(dir, '..data'));
      symlinkSync(path.join('..data', 'keys.json'), keysPath);
      const keys = ApiKeys.load(keysPath);
      keys.watch(50);
      try {
        mkdirSync(path.join(dir, 'v2'));
        writeFileSync(path.join(dir, 'v2', 'keys.json'), file([{ name: 'alpha', keySha256: sha('one') }, { name: 'gamma', keySha256: sha('two') }]));
        symlinkSync('v2', path.join(dir, '..data_tmp'));
        renameSync(path.join(dir, '..data_tmp'), path.join(dir, '..data'));
        await until(() => keys.tenantNames.includes('gamma'));
        assert.equal(keys.authenticate(['Bearer two']).name, 'gamma');
      } finally {
        keys.close();
      }
    });
  });
});
