/**
 * The Redis adapter of stream consumers (src/store/RedisStreams.ts) against a real redis-server:
 * what each call does to the group, as the consumers rely on it.
 */
import assert from 'node:assert/strict';
import { Redis } from 'ioredis';
import { StreamRefusedError } from '../../src/core/sources/ports';
import { RedisStreams } from '../../src/store/RedisStreams';
import { requireRedis, startRedis, type TestRedis } from '../helpers/redis';

describe('RedisStreams: consumer groups on a real Redis', function () {
  this.timeout(20_000);
  let redis: TestRedis;
  let r: Redis;
  let streams: RedisStreams;
  before(async function () {
    requireRedis(this);
    redis = await startRedis();
    r = new Redis(redis.url);
    streams = new RedisStreams(redis.url);
  });
  after(async () => {
    await streams?.close();
    r?.disconnect();
    await redis?.stop();
  });

  it('reads new entries once, claims them again with their delivery counts, acknowledges, and reports pending and lag', async () => {
    await streams.ensureGroup('s1', 'g');
    await streams.ensureGroup('s1', 'g'); // (again: nothing changes)
    await r.xadd('s1', '*', 'a', '1', 'a', '2', 'b', 'x');
    const second = (await r.xadd('s1', '*', 'n', '2')) as string;
    const reader = streams.reader('s1', 'g', 'c1');
    try {
      const got = await reader.readNew(1, 100);
      assert.equal(got.length, 1);
      assert.deepEqual(got[0].fields, { a: '2', b: 'x' }, 'a repeated field: the last value');
      assert.equal(got[0].deliveries, 1);
      assert.deepEqual(await streams.groupInfo('s1', 'g'), { pending: 1, lag: 1 });
      const again = await streams.claim('s1', 'g', 'c1', [got[0].id]);
      assert.deepEqual(again.map((e) => [e.id, e.deliveries]), [[got[0].id, 2]]);
      await new Promise((resolve) => setTimeout(resolve, 30));
      const idle = await streams.claimIdle('s1', 'g', 'c2', 20, 10);
      assert.deepEqual(idle.map((e) => [e.id, e.deliveries]), [[got[0].id, 3]], 'claimed by another consumer once idle');
      await streams.ack('s1', 'g', [got[0].id]);
      const rest = await reader.readNew(10, 100);
      assert.deepEqual(rest.map((e) => e.id), [second]);
      await streams.ack('s1', 'g', [second]);
      assert.deepEqual(await streams.groupInfo('s1', 'g'), { pending: 0, lag: 0 });
      assert.deepEqual(await reader.readNew(10, 50), [], 'nothing new: the wait runs out');
      // an entry deleted from the stream while pending is left out of a claim
      const gone = (await r.xadd('s1', '*', 'n', '3')) as string;
      await reader.readNew(10, 50);
      await r.xdel('s1', gone);
      assert.deepEqual(await streams.claim('s1', 'g', 'c1', [gone]), []);
    } finally {
      reader.close();
    }
  });

  it('a waiting read is ended by interrupt() without taking anything', async () => {
    await streams.ensureGroup('s2', 'g');
    const reader = streams.reader('s2', 'g', 'c1');
    try {
      await reader.readNew(1, 10); // (connects)
      const started = Date.now();
      const read = reader.readNew(1, 5000);
      await new Promise((resolve) => setTimeout(resolve, 100));
      reader.interrupt();
      assert.deepEqual(await read, []);
      assert.ok(Date.now() - started < 2000, 'it ended at once');
      await r.xadd('s2', '*', 'n', '1');
      assert.deepEqual(await streams.groupInfo('s2', 'g'), { pending: 0, lag: 1 }, 'the entry waits in the stream');
    } finally {
      reader.close();
    }
  });

  it('prunes consumers with nothing pending that have not read for a while, never one holding entries', async () => {
    await streams.ensureGroup('s3', 'g');
    await r.xadd('s3', '*', 'n', '1');
    await r.xadd('s3', '*', 'n', '2');
    const holder = streams.reader('s3', 'g', 'holder');
    const idle = streams.reader('s3', 'g', 'idle');
    try {
      assert.equal((await holder.readNew(1, 10)).length, 1);
      const done = await idle.readNew(1, 10);
      assert.equal(done.length, 1);
      await streams.ack('s3', 'g', [done[0].id]);
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(await streams.pruneConsumers('s3', 'g', 60_000), 0, 'not idle long enough');
      assert.equal(await streams.pruneConsumers('s3', 'g', 20), 1);
      const left = (await r.call('XINFO', 'CONSUMERS', 's3', 'g')) as unknown[][];
      assert.deepEqual(left.map((c) => c[c.indexOf('name') + 1]), ['holder']);
    } finally {
      holder.close();
      idle.close();
    }
  });

  it('a key of another type is refused by Redis (StreamRefusedError), not taken for Redis being down', async () => {
    await r.set('plain', 'x');
    await assert.rejects(streams.ensureGroup('plain', 'g'), (err: unknown) => err instanceof StreamRefusedError && /WRONGTYPE|key/i.test(err.message));
  });
});
