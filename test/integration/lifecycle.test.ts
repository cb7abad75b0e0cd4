import assert from 'node:assert/strict';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { ISOLATE, MODES, modeName, releaseInterpreters, runsInFlight, SHARED, succeeded } from '../helpers/proto';

const { OUTCOME_SUCCEEDED, OUTCOME_FAILED } = pb.Outcome;
const { INTERPRETER_STATE_READY, INTERPRETER_STATE_DRAINING, INTERPRETER_STATE_DISPOSED } = pb.InterpreterState;

/** A handler body that keeps its isolate busy for `ms` of wall time, then returns `value`. */
const spin = (ms: number, value: string): string =>
  `export default () => { const t = Date.now(); while (Date.now() - t < ${ms}) {} return ${JSON.stringify(value)}; }`;

describe('Interpreter lifecycle: references, release and introspection', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    it(`keeps an interpreter alive per registration and disposes it when the last one is released (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        mode,
        source: `
          let count = 0;
          gears.register('lc.count', (p) => { count += p.by; return { handler: 'a', count }; }, { description: 'first' });
          gears.register('lc.count', (p) => { count += p.by; return { handler: 'b', count }; });
          export default 'registered';
        `,
      });
      succeeded(res);
      assert.equal(res.result, 'registered');
      assert.equal(res.registrations.length, 2);
      const [a, b] = res.registrations;
      for (const r of res.registrations) {
        assert.match(r.id, /^reg_/);
        assert.equal(r.trigger, 'lc.count');
        assert.equal(r.interpreterId, res.interpreterId);
        assert.equal(r.broken, false);
      }
      assert.notEqual(a.id, b.id);
      assert.equal(a.description, 'first');
      assert.equal(b.description, '');
      assert.equal(res.interpreter?.id, res.interpreterId);
      assert.equal(res.interpreter?.mode, mode);
      assert.equal(res.interpreter?.state, INTERPRETER_STATE_READY);
      assert.equal(res.interpreter?.references, 2);
      assert.equal(res.interpreter?.registrationReferences, 2);
      assert.equal(res.interpreter?.executionReferences, 0);

      // Both handlers share the interpreter's `count`; they run concurrently, so only the set of
      // values each trigger produces is fixed, not which handler saw which.
      const first = await t.client.trigger({ trigger: 'lc.count', payload: { by: 1 } });
      assert.deepEqual(
        first.results.map((r) => r.registrationId),
        [a.id, b.id],
        'one result per registration, in registration order',
      );
      for (const r of first.results) succeeded(r);
      assert.deepEqual(first.results.map((r) => (r.result as { handler: string }).handler), ['a', 'b']);
      assert.deepEqual(first.results.map((r) => (r.result as { count: number }).count).sort((x, y) => x - y), [1, 2]);
      const second = await t.client.trigger({ trigger: 'lc.count', payload: { by: 1 } });
      assert.deepEqual(second.results.map((r) => (r.result as { count: number }).count).sort((x, y) => x - y), [3, 4], 'state persists across triggers');

      const relA = await t.client.release({ registrationId: a.id });
      assert.deepEqual(relA.releasedRegistrationIds, [a.id]);
      assert.equal(relA.interpreter?.id, res.interpreterId);
      assert.equal(relA.interpreter?.state, INTERPRETER_STATE_READY);
      assert.equal(relA.interpreter?.references, 1);
      assert.equal(relA.interpreter?.registrationReferences, 1);

      const third = await t.client.trigger({ trigger: 'lc.count', payload: { by: 10 } });
      assert.deepEqual(third.results.map((r) => r.registrationId), [b.id], 'the released handler no longer runs');
      assert.deepEqual(third.results[0].result, { handler: 'b', count: 14 });

      const relB = await t.client.release({ registrationId: b.id });
      assert.deepEqual(relB.releasedRegistrationIds, [b.id]);
      assert.equal(relB.interpreter?.state, INTERPRETER_STATE_DISPOSED);
      assert.equal(relB.interpreter?.references, 0);
      assert.equal(relB.interpreter?.registrationReferences, 0);
      assert.equal(relB.interpreter?.executionReferences, 0);

      await expectStatus(t.client.trigger({ trigger: 'lc.count' }), grpc.status.NOT_FOUND, /lc\.count/);
      const gone = await t.client.getInterpreter({ interpreterId: res.interpreterId });
      assert.equal(gone.interpreter?.state, INTERPRETER_STATE_DISPOSED);
      assert.deepEqual(gone.registrations, []);
    });

    it(`Register creates an interpreter, and attaching by interpreter_id adds owners that share its globals (${modeName(mode)})`, async () => {
      const t = server();
      const reg = await t.client.register({
        trigger: 'lc.hit',
        mode,
        description: 'counts hits',
        source: 'globalThis.hits = 0; export default () => { globalThis.hits += 1; return globalThis.hits; };',
      });
      const itp = reg.interpreter?.id ?? '';
      assert.match(itp, /^itp_/);
      assert.match(reg.registration?.id ?? '', /^reg_/);
      assert.equal(reg.registration?.trigger, 'lc.hit');
      assert.equal(reg.registration?.interpreterId, itp);
      assert.equal(reg.registration?.description, 'counts hits');
      assert.equal(reg.interpreter?.mode, mode);
      assert.equal(reg.interpreter?.state, INTERPRETER_STATE_READY);
      assert.equal(reg.interpreter?.references, 1);
      assert.equal(reg.interpreter?.registrationReferences, 1);

      const attached = await t.client.register({ trigger: 'lc.read', interpreterId: itp, source: 'export default () => globalThis.hits;' });
      assert.equal(attached.registration?.interpreterId, itp);
      assert.equal(attached.interpreter?.id, itp);
      assert.equal(attached.interpreter?.mode, mode, 'an attached registration keeps the interpreter mode');
      assert.equal(attached.interpreter?.references, 2);
      assert.equal(attached.interpreter?.registrationReferences, 2);

      const exec = await t.client.execute({
        interpreterId: itp,
        source: `
          gears.register('lc.scaled', () => globalThis.hits * 10);
          export default () => ({ hits: globalThis.hits, itp: gears.interpreterId });
        `,
      });
      succeeded(exec);
      assert.equal(exec.interpreterId, itp);
      assert.deepEqual(exec.result, { hits: 0, itp });
      assert.equal(exec.registrations.length, 1);
      assert.equal(exec.registrations[0].interpreterId, itp);
      assert.equal(exec.interpreter?.state, INTERPRETER_STATE_READY);
      assert.equal(exec.interpreter?.references, 3);
      assert.equal(exec.interpreter?.registrationReferences, 3);
      assert.equal(exec.interpreter?.executionReferences, 0);

      const plain = await t.client.execute({ interpreterId: itp, source: 'globalThis.hits += 100; export default globalThis.hits;' });
      succeeded(plain);
      assert.equal(plain.result, 100);
      assert.equal(plain.interpreter?.state, INTERPRETER_STATE_READY, 'an Execute that registers nothing leaves an attached interpreter alive');
      assert.equal(plain.interpreter?.references, 3);

      assert.equal((await t.client.trigger({ trigger: 'lc.hit' })).results[0].result, 101);
      assert.equal((await t.client.trigger({ trigger: 'lc.read' })).results[0].result, 101);
      assert.equal((await t.client.trigger({ trigger: 'lc.scaled' })).results[0].result, 1010);

      const rel = await t.client.release({ interpreterId: itp });
      assert.deepEqual(
        rel.releasedRegistrationIds,
        [reg.registration?.id, attached.registration?.id, exec.registrations[0].id],
        'releasing by interpreter releases every registration, in creation order',
      );
      assert.equal(rel.interpreter?.state, INTERPRETER_STATE_DISPOSED);
      assert.equal(rel.interpreter?.references, 0);
      const listed = await t.client.listRegistrations({ interpreterId: itp });
      assert.deepEqual(listed.registrations, []);

      await expectStatus(t.client.execute({ interpreterId: itp, source: 'export default 1;' }), grpc.status.FAILED_PRECONDITION, /DISPOSED/);
      await expectStatus(
        t.client.register({ trigger: 'lc.late', interpreterId: itp, source: 'export default () => 1;' }),
        grpc.status.FAILED_PRECONDITION,
        /DISPOSED/,
      );
    });

    it(`Release while a handler runs drains the interpreter and disposes it when the run ends (${modeName(mode)})`, async () => {
      const t = server();
      const reg = await t.client.register({ trigger: 'lc.slow', mode, source: spin(400, 'finished') });
      const itp = reg.interpreter?.id ?? '';
      const running = t.client.trigger({ trigger: 'lc.slow' });
      await runsInFlight(t);

      const rel = await t.client.release({ registrationId: reg.registration?.id });
      assert.deepEqual(rel.releasedRegistrationIds, [reg.registration?.id]);
      assert.equal(rel.interpreter?.state, INTERPRETER_STATE_DRAINING);
      assert.equal(rel.interpreter?.references, 1);
      assert.equal(rel.interpreter?.registrationReferences, 0);
      assert.equal(rel.interpreter?.executionReferences, 1);
      await expectStatus(t.client.release({ registrationId: reg.registration?.id }), grpc.status.NOT_FOUND);
      await expectStatus(t.client.trigger({ trigger: 'lc.slow' }), grpc.status.NOT_FOUND, /lc\.slow/);

      const done = await running;
      assert.equal(done.results.length, 1);
      succeeded(done.results[0]);
      assert.equal(done.results[0].result, 'finished', 'a release never disturbs a run in progress');

      const after = await t.client.getInterpreter({ interpreterId: itp });
      assert.equal(after.interpreter?.state, INTERPRETER_STATE_DISPOSED);
      assert.equal(after.interpreter?.references, 0);
      assert.equal(after.interpreter?.executionReferences, 0);
    });
  }

  it('Release by interpreter_id during an attached Execute drains, and the Execute then reports it DISPOSED', async () => {
    const t = server();
    const reg = await t.client.register({ trigger: 'lc.host', source: 'export default () => 0;' });
    const itp = reg.interpreter?.id ?? '';
    const running = t.client.execute({ interpreterId: itp, source: spin(400, 'attached run finished') });
    await runsInFlight(t);
    const rel = await t.client.release({ interpreterId: itp });
    assert.deepEqual(rel.releasedRegistrationIds, [reg.registration?.id]);
    assert.equal(rel.interpreter?.state, INTERPRETER_STATE_DRAINING);
    assert.equal(rel.interpreter?.references, 1);
    assert.equal(rel.interpreter?.executionReferences, 1);
    assert.equal(rel.interpreter?.registrationReferences, 0);
    await expectStatus(t.client.release({ interpreterId: itp }), grpc.status.NOT_FOUND);

    const res = await running;
    succeeded(res);
    assert.equal(res.result, 'attached run finished');
    assert.equal(res.interpreter?.state, INTERPRETER_STATE_DISPOSED, 'the response shows the interpreter after its last reference went');
    assert.equal(res.interpreter?.references, 0);
  });

  it('an attached Execute that fails keeps none of its registrations and leaves the count alone', async () => {
    const t = server();
    const reg = await t.client.register({ trigger: 'lc.base', source: 'export default () => "base";' });
    const itp = reg.interpreter?.id ?? '';
    const res = await t.client.execute({
      interpreterId: itp,
      source: "gears.register('lc.doomed', () => 'doomed'); throw new Error('fails after registering');",
    });
    assert.equal(res.outcome, OUTCOME_FAILED);
    assert.equal(res.error?.message, 'fails after registering');
    assert.deepEqual(res.registrations, []);
    assert.equal(res.interpreter?.state, INTERPRETER_STATE_READY);
    assert.equal(res.interpreter?.references, 1);
    await expectStatus(t.client.trigger({ trigger: 'lc.doomed' }), grpc.status.NOT_FOUND);
    assert.deepEqual((await t.client.listRegistrations({ interpreterId: itp })).registrations.map((r) => r.id), [reg.registration?.id]);
    assert.deepEqual(await releaseInterpreters(t.client, itp), [reg.registration?.id], 'only the base registration was ever held');
  });

  it('a double release is NOT_FOUND, by registration and by interpreter', async () => {
    const t = server();
    const res = await t.client.execute({
      source: "gears.register('lc.x', () => 1); gears.register('lc.y', () => 2); export default null;",
    });
    succeeded(res);
    const [x, y] = res.registrations;
    await t.client.release({ registrationId: x.id });
    await expectStatus(t.client.release({ registrationId: x.id }), grpc.status.NOT_FOUND, /already released|not found/);

    const again = await t.client.getInterpreter({ interpreterId: res.interpreterId });
    assert.equal(again.interpreter?.references, 1, 'a refused release does not touch the count');
    assert.deepEqual(again.registrations.map((r) => r.id), [y.id]);

    const rel = await t.client.release({ interpreterId: res.interpreterId });
    assert.deepEqual(rel.releasedRegistrationIds, [y.id]);
    assert.equal(rel.interpreter?.state, INTERPRETER_STATE_DISPOSED);
    await expectStatus(t.client.release({ interpreterId: res.interpreterId }), grpc.status.NOT_FOUND);
    await expectStatus(t.client.release({ registrationId: y.id }), grpc.status.NOT_FOUND);
    await expectStatus(t.client.release({ registrationId: 'reg_doesnotexist' }), grpc.status.NOT_FOUND);
    await expectStatus(t.client.release({ interpreterId: 'itp_doesnotexist' }), grpc.status.NOT_FOUND);
    await expectStatus(t.client.release({}), grpc.status.INVALID_ARGUMENT);
  });

  it('Register whose module yields no handler is INVALID_ARGUMENT and creates nothing', async () => {
    const t = server();
    await expectStatus(t.client.register({ trigger: 'lc.bad', source: 'export default 42;' }), grpc.status.INVALID_ARGUMENT, /default export/);
    await expectStatus(t.client.register({ trigger: 'lc.bad', source: 'throw new Error("nope");' }), grpc.status.INVALID_ARGUMENT, /nope/);
    assert.deepEqual((await t.client.listInterpreters({})).interpreters, []);
    assert.deepEqual((await t.client.listRegistrations({})).registrations, []);
  });

  it('Trigger runs the registrations of several interpreters and answers in registration order, not completion order', async () => {
    const t = server();
    const mode = ISOLATE;
    const slow = await t.client.register({ trigger: 'lc.order', mode, source: spin(200, 'first') });
    const mid = await t.client.register({ trigger: 'lc.order', mode, source: 'export default () => "second";' });
    const fast = await t.client.register({ trigger: 'lc.order', mode, source: 'export default () => "third";' });
    const res = await t.client.trigger({ trigger: 'lc.order' });
    assert.deepEqual(
      res.results.map((r) => [r.registrationId, r.interpreterId, r.outcome, r.result]),
      [
        [slow.registration?.id, slow.interpreter?.id, OUTCOME_SUCCEEDED, 'first'],
        [mid.registration?.id, mid.interpreter?.id, OUTCOME_SUCCEEDED, 'second'],
        [fast.registration?.id, fast.interpreter?.id, OUTCOME_SUCCEEDED, 'third'],
      ],
    );
    assert.equal(new Set(res.results.map((r) => r.executionId)).size, 3, 'each handler run is its own execution');
    await releaseInterpreters(t.client, slow.interpreter?.id, mid.interpreter?.id, fast.interpreter?.id);
  });

  it('GetInterpreter describes live and disposed interpreters', async () => {
    const t = server();
    const res = await t.client.execute({
      mode: SHARED,
      source: "gears.register('lc.g1', () => 1, { description: 'one' }); gears.register('lc.g2', () => 2); export default null;",
    });
    succeeded(res);
    const live = await t.client.getInterpreter({ interpreterId: res.interpreterId });
    assert.equal(live.interpreter?.id, res.interpreterId);
    assert.equal(live.interpreter?.mode, SHARED);
    assert.equal(live.interpreter?.state, INTERPRETER_STATE_READY);
    assert.equal(live.interpreter?.references, 2);
    assert.equal(live.interpreter?.registrationReferences, 2);
    assert.equal(live.interpreter?.executionReferences, 0);
    assert.ok(live.interpreter?.createdAt instanceof Date);
    assert.ok((live.interpreter?.heapUsedBytes ?? 0) > 0, 'a live interpreter reports heap in use');
    assert.deepEqual(
      live.registrations.map((r) => [r.id, r.trigger, r.description]),
      res.registrations.map((r) => [r.id, r.trigger, r.description]),
    );

    const once = await t.client.execute({ source: 'export default 1;' });
    succeeded(once);
    const disposedRun = await t.client.getInterpreter({ interpreterId: once.interpreterId });
    assert.equal(disposedRun.interpreter?.state, INTERPRETER_STATE_DISPOSED);
    assert.equal(disposedRun.interpreter?.references, 0);
    assert.equal(disposedRun.interpreter?.heapUsedBytes, 0);
    assert.deepEqual(disposedRun.registrations, []);

    await t.client.release({ interpreterId: res.interpreterId });
    const released = await t.client.getInterpreter({ interpreterId: res.interpreterId });
    assert.equal(released.interpreter?.state, INTERPRETER_STATE_DISPOSED);
    assert.equal(released.interpreter?.references, 0);
    assert.deepEqual(released.registrations, []);

    await expectStatus(t.client.getInterpreter({ interpreterId: 'itp_doesnotexist' }), grpc.status.NOT_FOUND);
    await expectStatus(t.client.getInterpreter({ interpreterId: '' }), grpc.status.INVALID_ARGUMENT);
  });

  it('ListInterpreters pages in creation order and filters by mode and name', async () => {
    const t = server();
    const modes = [SHARED, ISOLATE, SHARED, ISOLATE, SHARED];
    const ids: string[] = [];
    for (const [i, mode] of modes.entries()) {
      const r = await t.client.register({ trigger: `lc.list${i}`, mode, source: 'export default () => 0;' });
      ids.push(r.interpreter?.id ?? '');
    }
    const named = await t.client.execute({ name: 'lc-named', source: "gears.register('lc.named', () => 0); export default null;" });
    succeeded(named);
    ids.push(named.interpreterId);
    const once = await t.client.execute({ source: 'export default 1;' });
    succeeded(once);

    const all = await t.client.listInterpreters({});
    assert.deepEqual(all.interpreters.map((i) => i.id), ids, 'disposed interpreters are not listed');
    assert.equal(all.nextPageToken, '');

    const seen: string[] = [];
    let token = '';
    let pages = 0;
    do {
      const page = await t.client.listInterpreters({ pageSize: 2, pageToken: token });
      assert.ok(page.interpreters.length <= 2);
      seen.push(...page.interpreters.map((i) => i.id));
      token = page.nextPageToken;
      pages += 1;
      assert.ok(pages <= 10, 'paging terminates');
    } while (token !== '');
    assert.deepEqual(seen, ids);
    const first = await t.client.listInterpreters({ pageSize: 2 });
    assert.deepEqual(first.interpreters.map((i) => i.id), ids.slice(0, 2));
    assert.notEqual(first.nextPageToken, '');
    const second = await t.client.listInterpreters({ pageSize: 2, pageToken: first.nextPageToken });
    assert.deepEqual(second.interpreters.map((i) => i.id), ids.slice(2, 4));

    const shared = await t.client.listInterpreters({ mode: SHARED });
    assert.deepEqual(shared.interpreters.map((i) => i.id), [ids[0], ids[2], ids[4]]);
    assert.ok(shared.interpreters.every((i) => i.mode === SHARED));
    const isolate = await t.client.listInterpreters({ mode: ISOLATE });
    assert.deepEqual(isolate.interpreters.map((i) => i.id), [ids[1], ids[3], named.interpreterId], 'the server default mode is isolate');
    const sharedPage1 = await t.client.listInterpreters({ mode: SHARED, pageSize: 2 });
    assert.deepEqual(sharedPage1.interpreters.map((i) => i.id), [ids[0], ids[2]]);
    const sharedPage2 = await t.client.listInterpreters({ mode: SHARED, pageSize: 2, pageToken: sharedPage1.nextPageToken });
    assert.deepEqual(sharedPage2.interpreters.map((i) => i.id), [ids[4]]);
    assert.equal(sharedPage2.nextPageToken, '');

    const byName = await t.client.listInterpreters({ name: 'lc-named' });
    assert.deepEqual(byName.interpreters.map((i) => [i.id, i.name]), [[named.interpreterId, 'lc-named']]);
    assert.deepEqual((await t.client.listInterpreters({ name: 'lc-nobody' })).interpreters, []);
    assert.deepEqual((await t.client.listInterpreters({ name: 'lc-named', mode: SHARED })).interpreters, []);

    await expectStatus(t.client.listInterpreters({ pageToken: 'not-a-token' }), grpc.status.INVALID_ARGUMENT, /page_token/);
    await expectStatus(t.client.listInterpreters({ pageSize: -1 }), grpc.status.INVALID_ARGUMENT, /page_size/);
    await expectStatus(t.client.listInterpreters({ pageSize: 1001 }), grpc.status.INVALID_ARGUMENT, /page_size/);
    await expectStatus(t.client.listInterpreters({ mode: 99 as pb.IsolationMode }), grpc.status.INVALID_ARGUMENT);

    await releaseInterpreters(t.client, ...ids);
    assert.deepEqual((await t.client.listInterpreters({})).interpreters, [], 'released interpreters are not listed');
  });

  it('ListRegistrations pages in creation order and filters by trigger and interpreter', async () => {
    const t = server();
    const a = await t.client.execute({
      source: "gears.register('lc.a', () => 1); gears.register('lc.b', () => 2); gears.register('lc.a', () => 3); export default null;",
    });
    succeeded(a);
    const b = await t.client.register({ trigger: 'lc.a', source: 'export default () => 4;' });
    const ids = [...a.registrations.map((r) => r.id), b.registration?.id ?? ''];

    const all = await t.client.listRegistrations({});
    assert.deepEqual(all.registrations.map((r) => r.id), ids);
    assert.equal(all.nextPageToken, '');

    const p1 = await t.client.listRegistrations({ pageSize: 3 });
    assert.deepEqual(p1.registrations.map((r) => r.id), ids.slice(0, 3));
    assert.notEqual(p1.nextPageToken, '');
    const p2 = await t.client.listRegistrations({ pageSize: 3, pageToken: p1.nextPageToken });
    assert.deepEqual(p2.registrations.map((r) => r.id), ids.slice(3));
    assert.equal(p2.nextPageToken, '');

    const onA = await t.client.listRegistrations({ trigger: 'lc.a' });
    assert.deepEqual(onA.registrations.map((r) => r.id), [ids[0], ids[2], ids[3]]);
    assert.ok(onA.registrations.every((r) => r.trigger === 'lc.a'));
    const onAPaged: string[] = [];
    let token = '';
    do {
      const page = await t.client.listRegistrations({ trigger: 'lc.a', pageSize: 1, pageToken: token });
      onAPaged.push(...page.registrations.map((r) => r.id));
      token = page.nextPageToken;
    } while (token !== '' && onAPaged.length < 10);
    assert.deepEqual(onAPaged, [ids[0], ids[2], ids[3]]);

    const inA = await t.client.listRegistrations({ interpreterId: a.interpreterId });
    assert.deepEqual(inA.registrations.map((r) => r.id), ids.slice(0, 3));
    const both = await t.client.listRegistrations({ interpreterId: a.interpreterId, trigger: 'lc.b' });
    assert.deepEqual(both.registrations.map((r) => r.id), [ids[1]]);

    assert.deepEqual((await t.client.listRegistrations({ trigger: 'lc.nothing' })).registrations, []);
    assert.deepEqual((await t.client.listRegistrations({ interpreterId: 'itp_doesnotexist' })).registrations, []);
    await expectStatus(t.client.listRegistrations({ pageToken: 'not-a-token' }), grpc.status.INVALID_ARGUMENT, /page_token/);
    await expectStatus(t.client.listRegistrations({ pageSize: -5 }), grpc.status.INVALID_ARGUMENT, /page_size/);

    await t.client.release({ registrationId: ids[2] });
    const afterRelease = await t.client.listRegistrations({});
    assert.deepEqual(afterRelease.registrations.map((r) => r.id), [ids[0], ids[1], ids[3]], 'released registrations are not listed');

    assert.deepEqual(await releaseInterpreters(t.client, a.interpreterId, b.interpreter?.id), [ids[0], ids[1], ids[3]]);
    assert.deepEqual((await t.client.listRegistrations({})).registrations, []);
  });

  it('keeps run statistics per registration: runs, failures and the last error', async () => {
    const t = server();
    const reg = await t.client.register({
      trigger: 'lc.stats',
      source: 'export default (p) => { if (p.fail) throw new TypeError(`bad ${p.n}`); return p.n; };',
    });
    const id = reg.registration?.id ?? '';
    assert.deepEqual(
      { runs: reg.registration?.stats?.runs, failures: reg.registration?.stats?.failures, lastError: reg.registration?.stats?.lastError },
      { runs: 0, failures: 0, lastError: undefined },
    );

    const ok = await t.client.trigger({ trigger: 'lc.stats', payload: { n: 1 } });
    succeeded(ok.results[0]);
    assert.equal(ok.results[0].result, 1);
    for (const n of [2, 3]) {
      const bad = await t.client.trigger({ trigger: 'lc.stats', payload: { n, fail: true } });
      assert.equal(bad.results[0].outcome, OUTCOME_FAILED);
      assert.equal(bad.results[0].error?.name, 'TypeError');
      assert.equal(bad.results[0].error?.message, `bad ${n}`);
      assert.equal(bad.results[0].result, undefined, 'a failed run has no result');
    }

    const [listed] = (await t.client.listRegistrations({ trigger: 'lc.stats' })).registrations;
    assert.equal(listed.id, id);
    assert.equal(listed.stats?.runs, 3);
    assert.equal(listed.stats?.failures, 2);
    assert.equal(listed.stats?.lastError?.name, 'TypeError');
    assert.equal(listed.stats?.lastError?.message, 'bad 3');
    assert.ok(listed.stats?.totalTime, 'total time is reported');
    assert.ok(listed.stats?.lastRunAt instanceof Date, 'the last run time is reported');

    const viaGet = await t.client.getInterpreter({ interpreterId: reg.interpreter?.id });
    assert.equal(viaGet.registrations[0].stats?.runs, 3);
    assert.equal(viaGet.registrations[0].stats?.failures, 2);
    assert.equal(viaGet.registrations[0].stats?.lastError?.message, 'bad 3');
    assert.deepEqual(await releaseInterpreters(t.client, reg.interpreter?.id), [id]);
  });

  it('a handler that registers during a Trigger run adds registrations to its own interpreter', async () => {
    const t = server();
    const res = await t.client.execute({
      source: `
        gears.register('lc.spawn', (p) => gears.register('lc.child', (x) => 'child of ' + p.tag + ' got ' + x));
        gears.register('lc.spawn-fail', () => { gears.register('lc.ghost', () => 'ghost'); throw new Error('after registering'); });
        export default null;
      `,
    });
    succeeded(res);
    const spawned = await t.client.trigger({ trigger: 'lc.spawn', payload: { tag: 'one' } });
    succeeded(spawned.results[0]);
    const childId = spawned.results[0].result as string;
    assert.match(childId, /^reg_/);

    const after = await t.client.getInterpreter({ interpreterId: res.interpreterId });
    assert.equal(after.interpreter?.references, 3);
    assert.equal(after.interpreter?.registrationReferences, 3);
    assert.deepEqual(
      after.registrations.map((r) => [r.id, r.trigger, r.interpreterId]),
      [
        [res.registrations[0].id, 'lc.spawn', res.interpreterId],
        [res.registrations[1].id, 'lc.spawn-fail', res.interpreterId],
        [childId, 'lc.child', res.interpreterId],
      ],
    );
    const child = await t.client.trigger({ trigger: 'lc.child', payload: 'x' });
    assert.deepEqual(child.results.map((r) => [r.registrationId, r.interpreterId, r.result]), [[childId, res.interpreterId, 'child of one got x']]);

    const failed = await t.client.trigger({ trigger: 'lc.spawn-fail' });
    assert.equal(failed.results[0].outcome, OUTCOME_FAILED);
    assert.equal(failed.results[0].error?.message, 'after registering');
    assert.deepEqual((await t.client.listRegistrations({ trigger: 'lc.ghost' })).registrations, [], 'a failed run registers nothing');
    await expectStatus(t.client.trigger({ trigger: 'lc.ghost' }), grpc.status.NOT_FOUND);
    assert.equal((await t.client.getInterpreter({ interpreterId: res.interpreterId })).interpreter?.references, 3);

    const rel = await t.client.release({ interpreterId: res.interpreterId });
    assert.deepEqual(rel.releasedRegistrationIds, [res.registrations[0].id, res.registrations[1].id, childId]);
    assert.equal(rel.interpreter?.state, INTERPRETER_STATE_DISPOSED);
  });

  it('exposes gears.interpreterId and gears.executionId matching the response ids', async () => {
    const t = server();
    const res = await t.client.execute({
      source: `
        const atTop = gears.executionId;
        export default () => ({ itp: gears.interpreterId, exe: gears.executionId, atTop });
      `,
    });
    succeeded(res);
    assert.deepEqual(res.result, { itp: res.interpreterId, exe: res.executionId, atTop: res.executionId });
    assert.match(res.executionId, /^exe_/);
  });

  it('calls a handler with (payload, event) where event is {trigger, registrationId, executionId}', async () => {
    const t = server();
    const reg = await t.client.register({
      trigger: 'lc.event',
      source: `export default function (payload, event) {
        return { payload, event, argc: arguments.length, itp: gears.interpreterId, exe: gears.executionId };
      }`,
    });
    const payload = { a: [1, 2, { b: 'c' }], n: null, s: 'text' };
    const one = await t.client.trigger({ trigger: 'lc.event', payload });
    const two = await t.client.trigger({ trigger: 'lc.event', payload: 'second' });
    for (const [res, sent] of [
      [one, payload],
      [two, 'second'],
    ] as const) {
      const [r] = res.results;
      succeeded(r);
      assert.match(r.executionId, /^exe_/);
      assert.equal(r.registrationId, reg.registration?.id);
      assert.equal(r.interpreterId, reg.interpreter?.id);
      assert.deepEqual(r.result, {
        payload: sent,
        event: { trigger: 'lc.event', registrationId: r.registrationId, executionId: r.executionId },
        argc: 2,
        itp: r.interpreterId,
        exe: r.executionId,
      });
    }
    assert.notEqual(one.results[0].executionId, two.results[0].executionId, 'every handler run is a new execution');
    await releaseInterpreters(t.client, reg.interpreter?.id);
  });
});
