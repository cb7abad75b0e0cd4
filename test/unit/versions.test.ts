import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { FailedPreconditionError, InvalidArgumentError, NotFoundError } from '../../src/core/errors';
import { InterpreterManager } from '../../src/core/InterpreterManager';
import type { VersionInfo } from '../../src/core/types';
import { MANAGER_OPTIONS } from '../helpers/managerOptions';
import { MemoryStore } from '../helpers/memoryStore';
import { assertNoLeaks } from '../helpers/server';

/** Awaits a promise that must reject with an instance of `type`; returns the error. */
async function rejectsWith<E extends Error>(promise: Promise<unknown>, type: new (...args: never[]) => E, message?: RegExp): Promise<E> {
  const caught = await promise.then(
    () => undefined,
    (err: unknown) => err,
  );
  assert.ok(caught instanceof type, `expected ${type.name}, got ${String(caught)}`);
  if (message) assert.match(caught.message, message);
  return caught;
}

const sha = (s: string): string => createHash('sha256').update(s).digest('hex');
const shape = (vs: VersionInfo[]): string[] => vs.map((v) => `${v.version}${v.current ? '*' : ''}${v.rolledBackFrom ? `<${v.rolledBackFrom}` : ''}`);

/** A script that registers handler `t` answering `answer`. */
const answering = (answer: string): string => `gears.register('t', () => ${JSON.stringify(answer)});`;

describe('Versions and rollback of named interpreters (the manager as a library)', () => {
  for (const withStore of [false, true]) {
    describe(withStore ? 'with a store' : 'without a store (kept in the process)', () => {
      let manager: InterpreterManager;
      let store: MemoryStore | undefined;
      beforeEach(async () => {
        store = withStore ? new MemoryStore(4) : undefined;
        manager = await InterpreterManager.create({ ...MANAGER_OPTIONS, store, maxVersions: 4 });
      });
      afterEach(async () => {
        try {
          await assertNoLeaks(manager);
        } finally {
          await manager.destroy();
        }
      });

      const answers = async (): Promise<unknown[]> => (await manager.trigger({ trigger: 't' })).map((r) => r.result);

      it('lists each version; a rollback re-creates one in a new interpreter and becomes the next version', async () => {
        const v1 = await manager.execute({ source: answering('one'), name: 'svc' });
        assert.equal(v1.outcome, 'succeeded');
        const v2 = await manager.execute({ source: answering('two'), name: 'svc', replace: true, mode: 'shared' });
        assert.deepEqual(await answers(), ['two']);
        let versions = await manager.listVersions('svc');
        assert.deepEqual(shape(versions), ['1', '2*']);
        assert.equal(versions[0].interpreterId, v1.interpreterId);
        assert.equal(versions[1].interpreterId, v2.interpreterId);
        assert.equal(versions[0].sourceSha256, sha(answering('one')));
        assert.equal(versions[0].sourceBytes, answering('one').length);

        const back = await manager.rollback({ name: 'svc', version: 1 });
        assert.equal(back.outcome, 'succeeded', back.error?.message);
        assert.deepEqual(back.result, { version: 3, rolledBackFrom: 1 });
        assert.notEqual(back.interpreterId, v1.interpreterId);
        assert.equal(back.interpreter?.name, 'svc');
        assert.equal(back.interpreter?.mode, 'isolate', "the version's mode, not the one it replaced");
        assert.equal(back.registrations.length, 1);
        assert.notEqual(back.registrations[0].id, v1.registrations[0].id, 'new ids');
        assert.deepEqual(await answers(), ['one']);
        versions = await manager.listVersions('svc');
        assert.deepEqual(shape(versions), ['1', '2', '3*<1']);
        assert.equal(versions[2].sourceSha256, versions[0].sourceSha256);
        assert.equal(versions[2].interpreterId, back.interpreterId);

        // back to the current one: a fresh interpreter from the same recipe
        const again = await manager.rollback({ name: 'svc', version: 3 });
        assert.equal(again.outcome, 'succeeded');
        assert.notEqual(again.interpreterId, back.interpreterId);
        assert.deepEqual(await answers(), ['one']);
        // the newest 4 are kept (the current one counts)
        assert.deepEqual(shape(await manager.listVersions('svc')), ['1', '2', '3<1', '4*<3']);
        const fifth = await manager.rollback({ name: 'svc', version: 2 });
        assert.deepEqual(fifth.result, { version: 5, rolledBackFrom: 2 });
        assert.deepEqual(await answers(), ['two']);
        assert.deepEqual(shape(await manager.listVersions('svc')), ['2', '3<1', '4<3', '5*<2']);
        await rejectsWith(manager.rollback({ name: 'svc', version: 1 }), NotFoundError, /"svc" has no version 1: it keeps versions 2 to 5/);

        assert.equal(manager.counters().interpreters, 1, 'every replaced interpreter went');
        await manager.release({ interpreterId: fifth.interpreterId });
        // released: kept, no current version, and it can come back
        assert.deepEqual(shape(await manager.listVersions('svc')), ['2', '3<1', '4<3', '5<2']);
        const revived = await manager.rollback({ name: 'svc', version: 5 });
        assert.equal(revived.outcome, 'succeeded');
        assert.deepEqual(await answers(), ['two']);
        await manager.release({ interpreterId: revived.interpreterId });
      });

      it('replays every step of a version (attached Executes, registering handlers), keeping released and paused ones as they were', async () => {
        const first = await manager.execute({
          source: `gears.register('t', () => 'base'); gears.register('grow', (p) => { gears.register('late', () => 'late:' + p.n); return 'grown'; });`,
          name: 'svc',
          mode: 'shared',
        });
        const [base, grow] = first.registrations.map((r) => r.id);
        const attached = await manager.execute({ source: `gears.register('other', () => 'other'); gears.register('gone', () => 'gone');`, interpreterId: first.interpreterId, args: { x: 1 } });
        const gone = attached.registrations[1].id;
        const grown = await manager.trigger({ trigger: 'grow', payload: { n: 7 } });
        assert.equal(grown[0].result, 'grown');
        await manager.release({ registrationId: gone });
        await manager.setPaused({ registrationId: base }, true);
        const before = (await manager.getInterpreter(first.interpreterId)).registrations;
        assert.equal(before.length, 4);

        const back = await manager.rollback({ name: 'svc', version: 1 });
        assert.equal(back.outcome, 'succeeded', back.error?.message);
        const after = (await manager.getInterpreter(back.interpreterId)).registrations;
        const describe = (rs: typeof after): string[] => rs.map((r) => `${r.trigger}${r.paused ? ' (paused)' : ''}`).sort();
        assert.deepEqual(describe(after), describe(before), 'the same registrations, released and paused as they were');
        assert.ok(after.every((r) => !before.some((b) => b.id === r.id)));
        assert.deepEqual((await manager.trigger({ trigger: 'late' })).map((r) => r.result), ['late:7'], "the trigger step's payload replayed");
        assert.deepEqual((await manager.trigger({ trigger: 'other' })).map((r) => r.result), ['other']);
        await rejectsWith(manager.trigger({ trigger: 'gone' }), NotFoundError);
        const old = await manager.getInterpreter(first.interpreterId).catch((err: unknown) => (err instanceof NotFoundError ? undefined : Promise.reject(err)));
        assert.equal(old?.registrations.length ?? 0, 0, 'the old interpreter holds nothing');
        assert.ok(grow);
        await manager.release({ interpreterId: back.interpreterId });
      });

      it('a rollback whose replay fails changes nothing, and says which step and why', async () => {
        // the script refuses to run once its moment has passed: its replay fails
        const until = Date.now() + 1000;
        const v1 = await manager.execute({ source: `if (Date.now() > ${until}) throw new Error('too late'); ${answering('one')}`, name: 'svc' });
        const v2 = await manager.execute({ source: answering('two'), name: 'svc', replace: true });
        await new Promise((resolve) => setTimeout(resolve, Math.max(0, until + 20 - Date.now())));
        const failed = await manager.rollback({ name: 'svc', version: 1 });
        assert.equal(failed.outcome, 'failed');
        assert.equal(failed.error?.name, 'Error');
        assert.match(failed.error?.message ?? '', /^version 1 of "svc" could not be re-created, so nothing changed: step 1 of 1 \(execute\) failed: Error: too late/);
        assert.deepEqual(await answers(), ['two']);
        assert.deepEqual(shape(await manager.listVersions('svc')), ['1', '2*']);
        assert.equal(manager.counters().interpreters, 1, 'the interpreter the replay ran in went');
        assert.ok(v1.interpreterId);
        await manager.release({ interpreterId: v2.interpreterId });
      });

      it('a replay that registers something else fails the rollback (OUTCOME_FAILED), changing nothing', async () => {
        // the trigger's name depends on the interpreter's id: another interpreter registers another trigger
        const v1 = await manager.execute({ source: "gears.register('t.' + gears.interpreterId, () => 1); gears.register('t', () => 'one');", name: 'svc' });
        const v2 = await manager.execute({ source: answering('two'), name: 'svc', replace: true });
        const failed = await manager.rollback({ name: 'svc', version: 1 });
        assert.equal(failed.outcome, 'failed');
        assert.equal(failed.result, null);
        assert.equal(failed.error?.name, 'Error');
        assert.match(
          failed.error?.message ?? '',
          new RegExp(`^version 1 of "svc" could not be re-created, so nothing changed: step 1 of 1 \\(execute\\) registered \\[trigger t\\.itp_\\w+, trigger t\\] where it first registered \\[trigger t\\.${v1.interpreterId}, trigger t\\]$`),
        );
        assert.deepEqual(failed.registrations, []);
        assert.deepEqual(await answers(), ['two']);
        assert.deepEqual(shape(await manager.listVersions('svc')), ['1', '2*']);
        await manager.release({ interpreterId: v2.interpreterId });
      });

      it('refuses bad input with the right error, changing nothing', async () => {
        const v1 = await manager.execute({ source: answering('one'), name: 'svc' });
        await rejectsWith(manager.listVersions(''), InvalidArgumentError, /name is required/);
        await rejectsWith(manager.rollback({ name: '', version: 1 }), InvalidArgumentError, /name is required/);
        await rejectsWith(manager.rollback({ name: 'svc', version: 0 }), InvalidArgumentError, /version must be 1 or more/);
        await rejectsWith(manager.listVersions('bad name!'), InvalidArgumentError, /name must be/);
        await rejectsWith(manager.listVersions('nope'), NotFoundError, /no interpreter named "nope"/);
        await rejectsWith(manager.rollback({ name: 'nope', version: 1 }), NotFoundError, /no interpreter named "nope"/);
        await rejectsWith(manager.rollback({ name: 'svc', version: 2 }), NotFoundError, /"svc" has no version 2: it keeps version 1/);
        // another tenant's name is not there
        await rejectsWith(manager.listVersions('svc', 'beta'), NotFoundError);
        await rejectsWith(manager.rollback({ name: 'svc', version: 1, tenant: 'beta' }), NotFoundError);
        assert.deepEqual(shape(await manager.listVersions('svc')), ['1*']);
        assert.deepEqual(await answers(), ['one']);
        await manager.release({ interpreterId: v1.interpreterId });
      });

      it('an upgrade that registers nothing keeps the old version, and the name has no current one', async () => {
        const v1 = await manager.execute({ source: answering('one'), name: 'svc' });
        await manager.execute({ source: '1 + 1', name: 'svc', replace: true });
        await rejectsWith(manager.trigger({ trigger: 't' }), NotFoundError);
        assert.deepEqual(shape(await manager.listVersions('svc')), ['1']);
        const back = await manager.rollback({ name: 'svc', version: 1 });
        assert.deepEqual(back.result, { version: 2, rolledBackFrom: 1 });
        assert.deepEqual(await answers(), ['one']);
        assert.ok(v1.interpreterId);
        await manager.release({ interpreterId: back.interpreterId });
      });

      // (with a store of its own the test can hand-make a recipe; without one, the server's is out of reach)
      if (withStore) it('a version whose registrations were all released cannot be re-created (FAILED_PRECONDITION)', async () => {
        if (!store) throw new Error('this test needs the store');
        const v1 = await manager.execute({ source: `${answering('one')} gears.register('u', () => 0);`, name: 'svc' });
        // released one by one, the last release removes the recipe with one registration still marked live
        await manager.release({ registrationId: v1.registrations[0].id });
        await manager.release({ registrationId: v1.registrations[1].id });
        const kept = await store.loadVersion('default', 'svc', 1);
        assert.deepEqual(kept?.released, [v1.registrations[0].id], 'the last release removed the recipe as it stood');
        const back = await manager.rollback({ name: 'svc', version: 1 });
        assert.equal(back.registrations.length, 1, 'the one live before the last release came back');
        await manager.release({ interpreterId: back.interpreterId });
        // a hand-made recipe whose every registration is released
        store.put({ ...kept!, interpreterId: 'itp_handmade', name: 'dead', released: [v1.registrations[0].id, v1.registrations[1].id] });
        await store.remove('itp_handmade');
        await rejectsWith(manager.rollback({ name: 'dead', version: 1 }), FailedPreconditionError, /holds no registrations to re-create/);
      });
    });
  }
});
