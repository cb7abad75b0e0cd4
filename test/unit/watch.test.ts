import assert from 'node:assert/strict';
import { InvalidArgumentError, NotFoundError, UnavailableError } from '../../src/core/errors';
import { InterpreterManager } from '../../src/core/InterpreterManager';
import type { IsolationMode, WatchEvent, WatchStream } from '../../src/core/types';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';
import { assertNoLeaks } from '../helpers/server';

const MODES: IsolationMode[] = ['shared', 'isolate'];

/** A compact line per event: what a test compares. */
function line(e: WatchEvent): string {
  const b = e.body;
  switch (b.kind) {
    case 'interpreter':
      return `interpreter ${b.interpreter.id} ${b.interpreter.state}`;
    case 'registration':
      return `registration ${b.registration.id} ${b.registration.trigger} ${b.released ? 'released' : 'created'}`;
    case 'run':
      return `run ${b.run.executionId} ${b.run.interpreterId} ${b.run.registrationId || '-'} ${b.run.trigger || '-'} ${b.run.outcome}`;
    case 'log':
      return `log ${b.log.executionId} ${b.log.entry.level} ${b.log.entry.message}`;
    case 'dropped':
      return `dropped ${b.count}`;
  }
}

/** Every event the watch holds now (it reads until nothing arrives for a moment). */
async function drain(w: WatchStream): Promise<string[]> {
  const out: string[] = [];
  for (;;) {
    const next = await Promise.race([w.next(), new Promise<'idle'>((r) => setTimeout(() => r('idle'), 50))]);
    if (next === 'idle' || next === undefined) return out;
    out.push(line(next));
  }
}

describe('watching the core: interpreters, registrations and runs as they happen', () => {
  let manager: InterpreterManager;
  beforeEach(async () => {
    manager = await InterpreterManager.create({ ...MANAGER_OPTIONS, tenantMaxWatchers: 4 });
  });
  afterEach(async () => {
    await assertNoLeaks(manager);
    await manager.destroy();
  });

  for (const mode of MODES) {
    it(`a registration's life, in order, with the responses' ids (${mode})`, async () => {
      const w = manager.watch({});
      const res = await manager.execute({ mode, source: 'gears.register("w.t", (p) => p + 1); export default 1;' });
      const itp = res.interpreterId;
      const reg = res.registrations[0].id;
      const fired = await manager.trigger({ trigger: 'w.t', payload: 1 });
      await manager.release({ interpreterId: itp });
      const plain = await manager.execute({ mode, source: 'export default 2' });
      assert.deepEqual(await drain(w), [
        `interpreter ${itp} ready`,
        `registration ${reg} w.t created`,
        `run ${res.executionId} ${itp} - - succeeded`,
        `run ${fired[0].executionId} ${itp} ${reg} w.t succeeded`,
        `registration ${reg} w.t released`,
        `interpreter ${itp} disposed`,
        `interpreter ${plain.interpreterId} ready`,
        `run ${plain.executionId} ${plain.interpreterId} - - succeeded`,
        `interpreter ${plain.interpreterId} disposed`,
      ]);
      w.close();
    });
  }

  it('filters combine: by interpreter, by trigger, by registration; another tenant sees nothing', async () => {
    const a = await manager.execute({ source: 'gears.register("w.a", () => 1); gears.register("w.b", () => 2);' });
    const [ra, rb] = a.registrations.map((r) => r.id);
    const byInterp = manager.watch({ interpreterId: a.interpreterId });
    const byTrigger = manager.watch({ trigger: 'w.b' });
    const byReg = manager.watch({ registrationId: ra, trigger: 'w.a' });
    const other = manager.watch({ tenant: 'beta' });
    const fa = await manager.trigger({ trigger: 'w.a' });
    const fb = await manager.trigger({ trigger: 'w.b' });
    const elsewhere = await manager.execute({ source: 'export default 3' });
    await manager.release({ interpreterId: a.interpreterId });
    assert.deepEqual(await drain(byInterp), [
      `run ${fa[0].executionId} ${a.interpreterId} ${ra} w.a succeeded`,
      `run ${fb[0].executionId} ${a.interpreterId} ${rb} w.b succeeded`,
      `registration ${ra} w.a released`,
      `registration ${rb} w.b released`,
      `interpreter ${a.interpreterId} disposed`,
    ]);
    assert.deepEqual(await drain(byTrigger), [`run ${fb[0].executionId} ${a.interpreterId} ${rb} w.b succeeded`, `registration ${rb} w.b released`]);
    assert.deepEqual(await drain(byReg), [`run ${fa[0].executionId} ${a.interpreterId} ${ra} w.a succeeded`, `registration ${ra} w.a released`]);
    assert.deepEqual(await drain(other), []);
    assert.ok(elsewhere.interpreterId);
    for (const w of [byInterp, byTrigger, byReg, other]) w.close();
  });

  for (const mode of MODES) {
    it(`console lines arrive as they are written, while the run still goes, and only where logs were asked for (${mode})`, async () => {
      const res = await manager.execute({
        mode,
        source: 'gears.register("w.log", () => { console.log("first", 1); const t = Date.now(); while (Date.now() - t < 500) {} console.warn("last"); return 1; });',
      });
      const logs = manager.watch({ includeLogs: true, trigger: 'w.log' });
      const quiet = manager.watch({ trigger: 'w.log' });
      let ended = false;
      const call = manager.trigger({ trigger: 'w.log' }).finally(() => (ended = true));
      const first = await logs.next();
      assert.equal(ended, false, 'the first line arrived while the handler still ran');
      assert.match(first ? line(first) : '', /^log exe_[0-9a-f]+ log first 1$/);
      const fired = await call;
      const rest = await drain(logs);
      assert.deepEqual(rest.sort(), [`log ${fired[0].executionId} warn last`, `run ${fired[0].executionId} ${res.interpreterId} ${res.registrations[0].id} w.log succeeded`].sort());
      assert.equal(first ? line(first) : '', `log ${fired[0].executionId} log first 1`, 'the response’s execution id');
      assert.deepEqual(await drain(quiet), [`run ${fired[0].executionId} ${res.interpreterId} ${res.registrations[0].id} w.log succeeded`], 'no logs unasked');
      // an Execute's lines too, for a watcher of every run
      const all = manager.watch({ includeLogs: true, interpreterId: res.interpreterId });
      const more = await manager.execute({ interpreterId: res.interpreterId, source: 'console.info("again"); export default 0;' });
      // (the tap is never waited for: a line written as its run ends may come just after the run's event)
      assert.deepEqual((await drain(all)).sort(), [`log ${more.executionId} info again`, `run ${more.executionId} ${res.interpreterId} - - succeeded`].sort());
      for (const w of [logs, quiet, all]) w.close();
      await manager.release({ interpreterId: res.interpreterId });
    });
  }

  it('refuses filters naming what the tenant does not have, and bad trigger names', async () => {
    const a = await manager.execute({ source: 'gears.register("w.mine", () => 1);' });
    assert.throws(() => manager.watch({ interpreterId: 'itp_00000000000000000000' }), NotFoundError);
    assert.throws(() => manager.watch({ tenant: 'beta', interpreterId: a.interpreterId }), NotFoundError, 'another tenant’s interpreter');
    assert.throws(() => manager.watch({ tenant: 'beta', registrationId: a.registrations[0].id }), NotFoundError);
    assert.throws(() => manager.watch({ trigger: 'not a trigger!' }), InvalidArgumentError);
    await manager.release({ interpreterId: a.interpreterId });
  });

  it('shutdown ends every watch: a waiting read ends, and the watch says why', async () => {
    const w = manager.watch({});
    const pending = w.next();
    await manager.destroy();
    assert.equal(await pending, undefined);
    assert.ok(w.closeReason instanceof UnavailableError);
    assert.throws(() => manager.watch({}), UnavailableError);
  });
});
