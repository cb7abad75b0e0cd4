import assert from 'node:assert/strict';
import { ResourceExhaustedError } from '../../src/core/errors';
import { Interpreter } from '../../src/core/Interpreter';
import { IsolateHost, type IsolateDisposeReason } from '../../src/core/IsolateHost';
import { DedicatedPlacement } from '../../src/core/placement/DedicatedPlacement';
import type { Placed, Placement } from '../../src/core/placement/Placement';
import { BUSY_MS, EXTRA_IDLE_MS, SharedPlacement } from '../../src/core/placement/SharedPlacement';
import { SandboxMaker } from '../../src/core/SandboxMaker';
import { WarmPool } from '../../src/core/WarmPool';
import { CodeCache } from '../../src/sandbox/CodeCache';

const maker = new SandboxMaker({ maxLogBytes: 1024, maxValueBytes: 1024, maxRegistrationsPerInterpreter: 10 }, new CodeCache(0));

/** A pool that keeps nothing warm: every placement makes its own context. */
const coldPool = (): WarmPool =>
  new WarmPool({
    isolates: 0,
    contextsPerShared: 0,
    memoryMb: 64,
    newIsolate: (onDeath) => IsolateHost.create('dedicated', 64, onDeath),
    newSandbox: (host, id, prefix) => maker.makeWarm(host, id, prefix),
    sharedHosts: () => [],
    idle: () => true,
    hasRoomFor: () => false,
  });

function interpreterOn(placement: Placement, placed: Placed): Interpreter {
  return new Interpreter({ ...placed, seq: 1, mode: placement.mode, name: '', tenant: 'default' }, () => undefined);
}

describe('placement: one implementation per isolation mode behind one interface', () => {
  describe('DedicatedPlacement (isolate mode)', () => {
    it('gives each interpreter an isolate of its own with the asked heap limit, charged to the tenant, disposed with it', async () => {
      const deaths: [IsolateHost, IsolateDisposeReason][] = [];
      const placement = new DedicatedPlacement(coldPool(), maker, (h, r) => deaths.push([h, r]));
      assert.equal(placement.chargeMb(48), 48);
      const a = await placement.place(48);
      const b = await placement.place(32, { id: 'itp_fixed', prefix: 'fx_' });
      assert.notEqual(a.host, b.host);
      assert.equal(a.host.kind, 'dedicated');
      assert.equal(a.host.memoryLimitMb, 48);
      assert.deepEqual([...a.host.interpreterIds], [a.id]);
      assert.equal(a.dedicatedMemoryMb, 48);
      assert.deepEqual([b.id, b.registrationPrefix], ['itp_fixed', 'fx_'], 'a rebuilt interpreter keeps its ids');
      assert.equal(placement.size, 2);
      const interp = interpreterOn(placement, a);
      interp.markDisposed();
      placement.vacate(interp);
      assert.equal(a.host.disposed, true);
      assert.deepEqual(deaths, [[a.host, 'released']]);
      // an isolate that dies on its own is reported with its reason and leaves the placement
      b.host.noteDeath('memory_limit');
      assert.deepEqual(deaths[1], [b.host, 'memory_limit']);
      b.sandbox.release();
      assert.equal(placement.size, 0);
      assert.deepEqual({ created: placement.tally.created, disposed: placement.tally.disposed }, { created: 2, disposed: 2 });
      assert.deepEqual([...placement.tally.disposedByReason], [['released', 1], ['memory_limit', 1]]);
    });

    it('a placement abandoned before its interpreter was made disposes its isolate as failed', async () => {
      const placement = new DedicatedPlacement(coldPool(), maker, () => undefined);
      const placed = await placement.place(32);
      placement.abandon(placed);
      assert.equal(placed.host.disposed, true);
      assert.equal(placed.host.reason, 'failed');
      assert.equal(placement.size, 0);
    });
  });

  describe('SharedPlacement (shared mode)', () => {
    let closed = false;
    let placement: SharedPlacement;
    const deaths: IsolateDisposeReason[] = [];
    beforeEach(() => {
      closed = false;
      deaths.length = 0;
      placement = new SharedPlacement({ isolates: 2, memoryMb: 8, closed: () => closed, maxExtra: 0 }, coldPool(), maker, (_h, r) => deaths.push(r));
    });
    afterEach(() => {
      closed = true;
      placement.destroy();
    });

    it('places contexts on the least loaded shared isolate, charging no dedicated memory', async () => {
      assert.equal(placement.chargeMb(), 0);
      const placed: Placed[] = [];
      for (let i = 0; i < 4; i++) placed.push(await placement.place(64));
      const [h1, h2] = placement.hosts();
      assert.deepEqual([h1.interpreterIds.size, h2.interpreterIds.size], [2, 2]);
      assert.ok(placed.every((p) => p.dedicatedMemoryMb === 0 && p.host.kind === 'shared'));
      for (const p of placed.slice(0, 2)) placement.abandon(p);
      assert.equal(h1.interpreterIds.size + h2.interpreterIds.size, 2);
      for (const p of placed.slice(2)) placement.abandon(p);
    });

    it('refuses past the heap budget of its isolates with RESOURCE_EXHAUSTED shared_isolate_memory', async () => {
      // 8 MB each: 75 % of it at 256 KiB per context is 24 interpreters per isolate
      assert.equal(placement.capacity, 24);
      const placed: Placed[] = [];
      for (let i = 0; i < 48; i++) placed.push(await placement.place(64));
      await assert.rejects(placement.place(64), (err: unknown) => err instanceof ResourceExhaustedError && err.limit === 'shared_isolate_memory');
      placement.abandon(placed.pop() as Placed);
      placed.push(await placement.place(64));
      for (const p of placed) placement.abandon(p);
    });

    it('passes over isolates held by a long call; when all are, adds at most maxExtra, retired once empty and a regular one is free', async function () {
      this.timeout(10_000);
      closed = true;
      placement.destroy();
      closed = false;
      placement = new SharedPlacement({ isolates: 2, memoryMb: 8, closed: () => closed, maxExtra: 1 }, coldPool(), maker, (_h, r) => deaths.push(r));
      const [h1, h2] = placement.hosts();
      // a call that never settles holds h1, as a cancelled runaway holds its isolate until its timeout
      let settle1!: () => void;
      h1.track(new Promise<void>((r) => (settle1 = r)), 60_000);
      await new Promise((r) => setTimeout(r, BUSY_MS + 30));
      const a = await placement.place(64);
      const b = await placement.place(64);
      assert.deepEqual([a.host, b.host], [h2, h2], 'the held isolate takes no new interpreter, though it holds none');
      let settle2!: () => void;
      h2.track(new Promise<void>((r) => (settle2 = r)), 60_000);
      await new Promise((r) => setTimeout(r, BUSY_MS + 30));
      const c = await placement.place(64);
      assert.ok(c.host !== h1 && c.host !== h2, 'every regular isolate is held: an added one');
      assert.equal(placement.extra, 1);
      assert.equal(placement.size, 3);
      const d = await placement.place(64);
      assert.equal(d.host, c.host, 'the added one takes the next too');
      // at the bound, and the added one held as well: the least loaded isolate, held or not
      c.host.track(new Promise<void>(() => undefined), 60_000);
      await new Promise((r) => setTimeout(r, BUSY_MS + 30));
      const e = await placement.place(64);
      assert.equal(e.host, h1, 'no more than maxExtra: the least loaded, held or not');
      assert.equal(placement.extra, 1);
      for (const p of [a, b, e]) placement.abandon(p);
      // emptied while every regular isolate is still held: it stays
      for (const p of [c, d]) placement.vacate(interpreterOn(placement, p));
      await new Promise((r) => setTimeout(r, EXTRA_IDLE_MS + 100));
      assert.equal(placement.extra, 1, 'kept while the regular isolates are held');
      assert.equal(c.host.disposed, false);
      settle1();
      settle2();
      await new Promise((r) => setTimeout(r, EXTRA_IDLE_MS + 100));
      // its own outstanding call keeps it too; a shared isolate's death is never "released" otherwise
      assert.equal(placement.extra, 1, 'its own call is still outstanding');
      for (const p of [c, d]) p.sandbox.release();
    });

    it('an added isolate with nothing on it is retired once a regular one is free again', async function () {
      this.timeout(10_000);
      closed = true;
      placement.destroy();
      closed = false;
      placement = new SharedPlacement({ isolates: 1, memoryMb: 8, closed: () => closed, maxExtra: 2 }, coldPool(), maker, (_h, r) => deaths.push(r));
      const [h1] = placement.hosts();
      let settle!: () => void;
      h1.track(new Promise<void>((r) => (settle = r)), 60_000);
      await new Promise((r) => setTimeout(r, BUSY_MS + 30));
      const a = await placement.place(64);
      assert.notEqual(a.host, h1);
      assert.equal(placement.extra, 1);
      settle();
      const interp = interpreterOn(placement, a);
      interp.sandbox.release();
      placement.vacate(interp);
      await new Promise((r) => setTimeout(r, EXTRA_IDLE_MS + 100));
      assert.equal(placement.extra, 0);
      assert.equal(a.host.disposed, true);
      assert.equal(a.host.reason, 'released');
      assert.equal(placement.size, 1);
      assert.equal(placement.tally.created, 2);
    });

    it('an added isolate whose only interpreter was abandoned (a cancel while it was made) is retired too', async function () {
      this.timeout(10_000);
      closed = true;
      placement.destroy();
      closed = false;
      placement = new SharedPlacement({ isolates: 1, memoryMb: 8, closed: () => closed, maxExtra: 2 }, coldPool(), maker, (_h, r) => deaths.push(r));
      const [h1] = placement.hosts();
      let settle!: () => void;
      h1.track(new Promise<void>((r) => (settle = r)), 60_000);
      await new Promise((r) => setTimeout(r, BUSY_MS + 30));
      const a = await placement.place(64);
      assert.notEqual(a.host, h1);
      assert.equal(placement.extra, 1);
      settle();
      placement.abandon(a);
      await new Promise((r) => setTimeout(r, EXTRA_IDLE_MS + 100));
      assert.equal(placement.extra, 0, 'abandoned, as vacated, it goes once a regular isolate is free');
      assert.equal(a.host.reason, 'released');
      assert.equal(placement.size, 1);
    });

    it('a shared isolate that dies is reported and replaced at once; after shutdown it is not', async () => {
      const [first] = placement.hosts();
      first.noteDeath('memory_limit');
      assert.deepEqual(deaths, ['memory_limit']);
      assert.equal(placement.size, 2);
      assert.notEqual(placement.hosts()[0], first);
      assert.equal(placement.tally.created, 3);
      closed = true;
      placement.hosts()[1].noteDeath('failed');
      assert.equal(placement.size, 1);
    });
  });
});
