import assert from 'node:assert/strict';
import os from 'node:os';
import { ConfigError, loadConfig } from '../../src/config';
import { redactStoreUrl } from '../../src/store/open';

/** Asserts that loading fails with a ConfigError whose message matches every pattern. */
function expectConfigError(env: Record<string, string>, argv: string[], ...patterns: RegExp[]): ConfigError {
  let caught: unknown;
  try {
    loadConfig(env, argv);
  } catch (err) {
    caught = err;
  }
  assert.ok(caught, `expected a ConfigError for ${JSON.stringify({ env, argv })}, but loading succeeded`);
  assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
  assert.equal(caught.name, 'ConfigError');
  for (const p of patterns) assert.match(caught.message, p);
  return caught;
}

describe('config: loadConfig', () => {
  it('applies the defaults of the DESIGN.md configuration table', () => {
    const c = loadConfig({});
    assert.equal(c.grpcAddress, '0.0.0.0:50051');
    assert.equal(c.metricsAddress, '0.0.0.0:9464');
    assert.equal(c.defaultMode, 'isolate');
    assert.equal(c.defaultTimeoutMs, 5000);
    assert.equal(c.maxTimeoutMs, 60_000);
    assert.equal(c.defaultMemoryMb, 64);
    assert.equal(c.maxMemoryMb, 512);
    assert.equal(c.sharedIsolates, os.availableParallelism());
    assert.equal(c.maxInterpreters, 10_000);
    assert.equal(c.maxSourceBytes, 1024 * 1024);
    assert.equal(c.maxLogBytes, 64 * 1024);
    assert.equal(c.maxValueBytes, 1024 * 1024);
    assert.equal(c.logLevel, 'info');
  });

  it('ignores variables that are not ISOGEAR_* settings', () => {
    const c = loadConfig({ PATH: '/usr/bin', HOME: '/root', NODE_ENV: 'production', ISOGEARS: 'x', MY_ISOGEAR_THING: 'y' });
    assert.equal(c.defaultMode, 'isolate');
  });

  it('reads every variable', () => {
    const c = loadConfig({
      ISOGEAR_GRPC_ADDRESS: '127.0.0.1:6000',
      ISOGEAR_METRICS_ADDRESS: '[::1]:9000',
      ISOGEAR_DEFAULT_MODE: 'shared',
      ISOGEAR_DEFAULT_TIMEOUT_MS: '250',
      ISOGEAR_MAX_TIMEOUT_MS: '1000',
      ISOGEAR_DEFAULT_MEMORY_MB: '32',
      ISOGEAR_MAX_MEMORY_MB: '128',
      ISOGEAR_SHARED_ISOLATES: '3',
      ISOGEAR_MAX_INTERPRETERS: '7',
      ISOGEAR_MAX_SOURCE_BYTES: '4096',
      ISOGEAR_MAX_LOG_BYTES: '2048',
      ISOGEAR_LOG_LEVEL: 'debug',
    });
    assert.deepEqual(
      {
        grpcAddress: c.grpcAddress,
        metricsAddress: c.metricsAddress,
        defaultMode: c.defaultMode,
        defaultTimeoutMs: c.defaultTimeoutMs,
        maxTimeoutMs: c.maxTimeoutMs,
        defaultMemoryMb: c.defaultMemoryMb,
        maxMemoryMb: c.maxMemoryMb,
        sharedIsolates: c.sharedIsolates,
        maxInterpreters: c.maxInterpreters,
        maxSourceBytes: c.maxSourceBytes,
        maxLogBytes: c.maxLogBytes,
        logLevel: c.logLevel,
      },
      {
        grpcAddress: '127.0.0.1:6000',
        metricsAddress: '[::1]:9000',
        defaultMode: 'shared',
        defaultTimeoutMs: 250,
        maxTimeoutMs: 1000,
        defaultMemoryMb: 32,
        maxMemoryMb: 128,
        sharedIsolates: 3,
        maxInterpreters: 7,
        maxSourceBytes: 4096,
        maxLogBytes: 2048,
        logLevel: 'debug',
      },
    );
  });

  const BAD: [variable: string, value: string][] = [
    ['ISOGEAR_GRPC_ADDRESS', 'localhost'],
    ['ISOGEAR_GRPC_ADDRESS', '0.0.0.0:99999'],
    ['ISOGEAR_GRPC_ADDRESS', ':50051x'],
    ['ISOGEAR_METRICS_ADDRESS', 'http://0.0.0.0:9464/metrics'],
    ['ISOGEAR_DEFAULT_MODE', 'sandbox'],
    ['ISOGEAR_DEFAULT_MODE', '1'],
    ['ISOGEAR_DEFAULT_TIMEOUT_MS', 'soon'],
    ['ISOGEAR_DEFAULT_TIMEOUT_MS', '-5'],
    ['ISOGEAR_DEFAULT_TIMEOUT_MS', '0'],
    ['ISOGEAR_DEFAULT_TIMEOUT_MS', '1.5'],
    ['ISOGEAR_MAX_TIMEOUT_MS', '60s'],
    ['ISOGEAR_DEFAULT_MEMORY_MB', 'lots'],
    ['ISOGEAR_DEFAULT_MEMORY_MB', '0'],
    ['ISOGEAR_MAX_MEMORY_MB', '-1'],
    ['ISOGEAR_MAX_MEMORY_MB', '1e3'],
    ['ISOGEAR_SHARED_ISOLATES', '0'],
    ['ISOGEAR_SHARED_ISOLATES', 'all'],
    ['ISOGEAR_MAX_INTERPRETERS', '0'],
    ['ISOGEAR_MAX_INTERPRETERS', 'ten'],
    ['ISOGEAR_MAX_SOURCE_BYTES', '1MiB'],
    ['ISOGEAR_MAX_SOURCE_BYTES', '0'],
    ['ISOGEAR_MAX_LOG_BYTES', '64k'],
    ['ISOGEAR_LOG_LEVEL', 'loud'],
  ];
  for (const [variable, value] of BAD) {
    it(`${variable}=${JSON.stringify(value)} stops with a ConfigError naming the variable`, () => {
      expectConfigError({ [variable]: value }, [], new RegExp(variable));
    });
  }

  it('rejects an unknown ISOGEAR_* variable (a typo must not fall back to a default)', () => {
    expectConfigError({ ISOGEAR_TIMEOUT_MS: '100' }, [], /ISOGEAR_TIMEOUT_MS/);
    expectConfigError({ ISOGEAR_DEFAULT_MODEL: 'shared' }, [], /ISOGEAR_DEFAULT_MODEL/);
  });

  it('rejects a default above its maximum, naming both variables', () => {
    expectConfigError({ ISOGEAR_DEFAULT_TIMEOUT_MS: '2000', ISOGEAR_MAX_TIMEOUT_MS: '1000' }, [], /ISOGEAR_DEFAULT_TIMEOUT_MS/, /ISOGEAR_MAX_TIMEOUT_MS/);
    expectConfigError({ ISOGEAR_DEFAULT_TIMEOUT_MS: '70000' }, [], /ISOGEAR_DEFAULT_TIMEOUT_MS/, /ISOGEAR_MAX_TIMEOUT_MS/);
    expectConfigError({ ISOGEAR_DEFAULT_MEMORY_MB: '1024' }, [], /ISOGEAR_DEFAULT_MEMORY_MB/, /ISOGEAR_MAX_MEMORY_MB/);
    expectConfigError({ ISOGEAR_MAX_MEMORY_MB: '32' }, [], /ISOGEAR_DEFAULT_MEMORY_MB/, /ISOGEAR_MAX_MEMORY_MB/);
    const equal = loadConfig({ ISOGEAR_DEFAULT_TIMEOUT_MS: '1000', ISOGEAR_MAX_TIMEOUT_MS: '1000' });
    assert.equal(equal.defaultTimeoutMs, equal.maxTimeoutMs, 'a default equal to its maximum is fine');
  });

  describe('flags mirror the variables', () => {
    it('--name=value and --name value', () => {
      const c = loadConfig({}, ['--default-mode=shared', '--max-interpreters', '5', '--grpc-address=127.0.0.1:7000']);
      assert.equal(c.defaultMode, 'shared');
      assert.equal(c.maxInterpreters, 5);
      assert.equal(c.grpcAddress, '127.0.0.1:7000');
    });

    it('flags override variables', () => {
      const c = loadConfig({ ISOGEAR_DEFAULT_MODE: 'isolate', ISOGEAR_MAX_INTERPRETERS: '9' }, ['--default-mode', 'shared']);
      assert.equal(c.defaultMode, 'shared');
      assert.equal(c.maxInterpreters, 9);
    });

    it('a bad flag value is a ConfigError naming the setting', () => {
      expectConfigError({}, ['--max-interpreters=many'], /ISOGEAR_MAX_INTERPRETERS|--max-interpreters/);
      expectConfigError({}, ['--default-mode=strong'], /ISOGEAR_DEFAULT_MODE|--default-mode/);
      expectConfigError({}, ['--default-timeout-ms=9000', '--max-timeout-ms=100'], /ISOGEAR_DEFAULT_TIMEOUT_MS/);
    });

    it('an unknown flag, a flag without a value, or a stray argument is a ConfigError', () => {
      expectConfigError({}, ['--max-interpreter=5'], /max-interpreter/);
      expectConfigError({}, ['--max-interpreters'], /max-interpreters/);
      expectConfigError({}, ['serve'], /serve/);
    });
  });

  describe('the store settings', () => {
    it('defaults to the embedded store in ./data, restoring 4 at once', () => {
      const c = loadConfig({});
      assert.deepEqual([c.store, c.dataDir, c.restoreConcurrency], ['sqlite', './data', 4]);
    });

    it('takes sqlite, memory and Redis URLs, and never echoes a rejected value (it may hold a password)', () => {
      assert.equal(loadConfig({ ISOGEAR_STORE: 'memory' }).store, 'memory');
      assert.equal(loadConfig({ ISOGEAR_STORE: 'rediss://:pw@redis.example:6380/2' }).store, 'rediss://:pw@redis.example:6380/2');
      const err = expectConfigError({ ISOGEAR_STORE: 'postgres://:hunter2@db/x' }, [], /ISOGEAR_STORE must be sqlite, memory, or a redis:\/\/ or rediss:\/\/ URL/);
      assert.doesNotMatch(err.message, /hunter2/);
      expectConfigError({ ISOGEAR_STORE: 'redis://:pw@h:6379/abc' }, [], /database number/);
      expectConfigError({ ISOGEAR_RESTORE_CONCURRENCY: '0' }, [], /ISOGEAR_RESTORE_CONCURRENCY must be between 1 and 256/);
      assert.equal(loadConfig({}).maxVersions, 20);
      assert.equal(loadConfig({ ISOGEAR_MAX_VERSIONS: '3' }).maxVersions, 3);
      expectConfigError({ ISOGEAR_MAX_VERSIONS: '0' }, [], /ISOGEAR_MAX_VERSIONS must be between 1 and 10000/);
    });

    it('logs a Redis URL without its password', () => {
      assert.equal(redactStoreUrl('redis://:s3cret@redis.example:6379/0'), 'redis://:***@redis.example:6379/0');
      assert.equal(redactStoreUrl('rediss://user:s3cret@r:6380'), 'rediss://user:***@r:6380');
      assert.equal(redactStoreUrl('sqlite'), 'sqlite');
    });
  });
});
