import assert from 'node:assert/strict';
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { scrape, value } from '../helpers/metrics';
import { ISOLATE, limits, outcomeName, runsInFlight, SHARED, stateName, succeeded, waitFor } from '../helpers/proto';
import { type TestServer } from '../helpers/server';

/** A run that holds its slot until its own timeout ends it (no CPU burnt while it waits). */
const HANG = 'export default () => new Promise(() => {});';

/** Decodes google.rpc.Status { code, message, details: [Any] } and the RetryInfo among its details. */
function decodeRichStatus(bytes: Buffer): { code: number; message: string; types: string[]; retryDelayMs?: number } {
  const out: { code: number; message: string; types: string[]; retryDelayMs?: number } = { code: 0, message: '', types: [] };
  const status = new BinaryReader(bytes);
  while (status.pos < status.len) {
    const [field] = status.tag();
    if (field === 1) out.code = status.int32();
    else if (field === 2) out.message = status.string();
    else if (field === 3) {
      const any = new BinaryReader(status.bytes());
      let type = '';
      let inner: Uint8Array | undefined;
      while (any.pos < any.len) {
        const [f] = any.tag();
        if (f === 1) type = any.string();
        else inner = any.bytes();
      }
      out.types.push(type);
      if (type === 'type.googleapis.com/google.rpc.RetryInfo' && inner) {
        const retry = new BinaryReader(inner);
        retry.tag();
        const duration = new BinaryReader(retry.bytes());
        let seconds = 0;
        let nanos = 0;
        while (duration.pos < duration.len) {
          const [f] = duration.tag();
          if (f === 1) seconds = Number(duration.int64());
          else nanos = duration.int32();
        }
        out.retryDelayMs = seconds * 1000 + nanos / 1e6;
      }
    }
  }
  return out;
}

const waiting = (t: TestServer): number => t.manager.counters().runsWaiting;

describe('capacity: concurrent runs and a bounded wait queue', function () {
  this.timeout(20_000);

  describe('ISOGEAR_MAX_CONCURRENT_RUNS=2, ISOGEAR_MAX_QUEUED_RUNS=1', () => {
    const server = useTestServer({ ISOGEAR_MAX_CONCURRENT_RUNS: '2', ISOGEAR_MAX_QUEUED_RUNS: '1', ISOGEAR_MAX_QUEUE_WAIT_MS: '10000' });

    it('a third request waits its turn; a fourth is refused with RESOURCE_EXHAUSTED naming the limit and a RetryInfo hint', async () => {
      const t = server();
      const created = t.manager.counters().isolatesCreated.dedicated;
      const first = t.client.execute({ source: HANG, mode: SHARED, limits: limits(800) });
      const second = t.client.execute({ source: HANG, mode: ISOLATE, limits: limits(800) });
      await runsInFlight(t, 2);
      const third = t.client.execute({ source: 'export default (a) => a + 1', args: 41, mode: ISOLATE });
      await waitFor('the third request to queue', () => waiting(t) === 1);
      assert.equal(t.manager.counters().executionsInFlight, 2, 'the queued request does not run');
      assert.equal(t.manager.counters().isolatesCreated.dedicated, created + 1, 'nor does it create its interpreter yet');
      assert.equal(value(await scrape(t), 'isogear_runs_waiting'), 1);

      for (const call of [
        () => t.client.execute({ source: 'export default 1' }),
        () => t.client.register({ trigger: 'cap.full', source: 'export default () => 1' }),
      ]) {
        const err = await expectStatus(call(), grpc.status.RESOURCE_EXHAUSTED, /ISOGEAR_MAX_CONCURRENT_RUNS.*ISOGEAR_MAX_QUEUED_RUNS/);
        assert.match(err.details, /\b2 runs are executing and 1 more are waiting/);
        assert.deepEqual(err.metadata.get('isogear-limit'), ['max_concurrent_runs']);
        const retryAfter = Number(err.metadata.get('retry-after-ms')[0]);
        assert.ok(retryAfter > 0 && retryAfter <= 5000, `retry-after-ms ${retryAfter}`);
        const rich = decodeRichStatus(err.metadata.get('grpc-status-details-bin')[0] as Buffer);
        assert.equal(rich.code, grpc.status.RESOURCE_EXHAUSTED);
        assert.equal(rich.message, err.details);
        assert.deepEqual(rich.types, ['type.googleapis.com/google.rpc.RetryInfo']);
        assert.equal(rich.retryDelayMs, retryAfter);
      }

      for (const res of await Promise.all([first, second])) assert.equal(outcomeName(res.outcome), 'OUTCOME_TIMED_OUT');
      const done = await third;
      succeeded(done);
      assert.equal(done.result, 42);
      assert.equal(waiting(t), 0);
      assert.equal(value(await scrape(t), 'isogear_runs_waiting'), 0);
    });

    it('a Trigger fanning out to more handlers than slots runs them all, never more than 2 at once, without using the queue', async () => {
      const t = server();
      const regs: pb.RegisterResponse[] = [];
      for (let i = 0; i < 6; i++) {
        const mode = i % 2 === 0 ? SHARED : ISOLATE;
        // each handler spins 40 ms, so overlapping runs are visible to the sampler below
        regs.push(await t.client.register({ trigger: 'fan.out', source: `export default (p) => { const end = Date.now() + 40; while (Date.now() < end); return p + ${i}; }`, mode }));
      }
      let peak = 0;
      const sampler = setInterval(() => (peak = Math.max(peak, t.manager.counters().executionsInFlight)), 2);
      const blocker = t.client.execute({ source: HANG, limits: limits(300) }); // one slot busy; the queue holds 1
      await runsInFlight(t, 1);
      const res = await t.client.trigger({ trigger: 'fan.out', payload: 100 });
      clearInterval(sampler);
      assert.equal(outcomeName((await blocker).outcome), 'OUTCOME_TIMED_OUT');
      assert.deepEqual(
        res.results.map((r) => [outcomeName(r.outcome), r.result]),
        regs.map((_, i) => ['OUTCOME_SUCCEEDED', 100 + i]),
      );
      assert.ok(peak <= 2, `at most 2 runs at once, saw ${peak}`);
      for (const r of regs) await t.client.release({ registrationId: r.registration?.id });
    });
  });

  describe('ISOGEAR_MAX_CONCURRENT_RUNS=1', () => {
    const server = useTestServer({ ISOGEAR_MAX_CONCURRENT_RUNS: '1', ISOGEAR_MAX_QUEUED_RUNS: '4', ISOGEAR_MAX_QUEUE_WAIT_MS: '250' });

    it('a request that waits longer than ISOGEAR_MAX_QUEUE_WAIT_MS is refused, having created nothing', async () => {
      const t = server();
      const before = t.manager.counters();
      const busy = t.client.execute({ source: HANG, mode: SHARED, limits: limits(1500) });
      await runsInFlight(t, 1);
      const err = await expectStatus(t.client.execute({ source: 'export default 1', mode: ISOLATE }), grpc.status.RESOURCE_EXHAUSTED, /within 250 ms.*ISOGEAR_MAX_QUEUE_WAIT_MS/);
      assert.deepEqual(err.metadata.get('isogear-limit'), ['run_queue_wait']);
      assert.ok(Number(err.metadata.get('retry-after-ms')[0]) > 0);
      assert.equal(t.manager.counters().isolatesCreated.dedicated, before.isolatesCreated.dedicated, 'no isolate for the refused request');
      assert.equal(waiting(t), 0);
      assert.equal(outcomeName((await busy).outcome), 'OUTCOME_TIMED_OUT');
    });

    it('a client deadline that passes in the queue gets DEADLINE_EXCEEDED and leaves the queue empty', async () => {
      const t = server();
      const before = t.manager.counters();
      const busy = t.client.execute({ source: HANG, mode: SHARED, limits: limits(1000) });
      await runsInFlight(t, 1);
      await expectStatus(t.client.execute({ source: 'export default 1', mode: ISOLATE }, { deadlineMs: 100 }), grpc.status.DEADLINE_EXCEEDED);
      await waitFor('the server to see the deadline and leave the queue', () => waiting(t) === 0);
      assert.equal(t.manager.counters().isolatesCreated.dedicated, before.isolatesCreated.dedicated);
      await busy;
      const after = await t.client.execute({ source: 'export default "served"' });
      assert.equal(after.result, 'served', 'the slot the cancelled request never took is free');
    });

    it('a cancelled run stops at once in its fresh dedicated isolate (disposed); in a shared isolate it keeps its slot until its own timeout', async () => {
      const t = server();
      await expectStatus(t.client.execute({ source: 'for (;;) {}', mode: ISOLATE, limits: limits(10_000) }, { deadlineMs: 150 }), grpc.status.DEADLINE_EXCEEDED);
      await waitFor('the dedicated isolate to be disposed and the slot freed', () => t.manager.counters().runSlotsInUse === 0 && t.manager.counters().dedicatedIsolates === 0, 3000);
      assert.equal(t.manager.counters().interpreters, 0);

      await expectStatus(t.client.execute({ source: 'for (;;) {}', mode: SHARED, limits: limits(1500) }, { deadlineMs: 150 }), grpc.status.DEADLINE_EXCEEDED);
      await waitFor('the reference to drop', () => t.manager.counters().executionsInFlight === 0 && t.manager.counters().interpreters === 0);
      assert.equal(t.manager.counters().runSlotsInUse, 1, 'the loop still occupies the shared isolate, so it still counts against ISOGEAR_MAX_CONCURRENT_RUNS');
      await waitFor('the run to reach its own timeout and free the slot', () => t.manager.counters().runSlotsInUse === 0, 5000);
      const after = await t.client.execute({ source: 'export default "next"', mode: SHARED });
      assert.equal(after.result, 'next');
    });

    it('a registration released while its Trigger run waits for a slot is not run (OUTCOME_ABORTED, named), and its interpreter goes', async () => {
      const t = server();
      const slow = await t.client.register({ trigger: 'q.t', source: 'export default () => new Promise(() => {});', mode: SHARED });
      const later = await t.client.register({ trigger: 'q.t', source: 'export default (p) => p * 2;', mode: ISOLATE });
      const trig = t.client.trigger({ trigger: 'q.t', payload: 21, limits: limits(300) });
      await runsInFlight(t, 1);
      await t.client.release({ registrationId: later.registration?.id });
      const held = await t.client.getInterpreter({ interpreterId: later.interpreter?.id });
      assert.equal(stateName(held.interpreter?.state), 'INTERPRETER_STATE_DRAINING', 'the waiting Trigger holds its interpreter');
      const res = await trig;
      assert.deepEqual(
        res.results.map((r) => [outcomeName(r.outcome), r.error?.name ?? '']),
        [
          ['OUTCOME_TIMED_OUT', 'TimeoutError'],
          ['OUTCOME_ABORTED', 'RegistrationReleasedError'],
        ],
      );
      assert.match(res.results[1].error?.message ?? '', new RegExp(`registration ${later.registration?.id} was released before its run started`));
      await waitFor('the released interpreter to go', () => t.manager.counters().interpreters === 1);
      const gone = await t.client.getInterpreter({ interpreterId: later.interpreter?.id });
      assert.equal(stateName(gone.interpreter?.state), 'INTERPRETER_STATE_DISPOSED');
      await t.client.release({ registrationId: slow.registration?.id });
    });
  });
});

describe('capacity: a Trigger response stays within ISOGEAR_MAX_RESPONSE_BYTES', function () {
  this.timeout(20_000);
  const server = useTestServer({ ISOGEAR_MAX_RESPONSE_BYTES: '4096' });

  it('results and logs past the budget are withheld with ResponseTooLargeError; every handler still ran and reports its outcome', async () => {
    const t = server();
    const regs: pb.RegisterResponse[] = [];
    for (let i = 0; i < 5; i++) {
      regs.push(await t.client.register({ trigger: 'big.t', source: `export default () => { console.log("handler ${i}"); return "${i}".repeat(1500); }`, mode: i % 2 ? ISOLATE : SHARED }));
    }
    const res = await t.client.trigger({ trigger: 'big.t' });
    assert.equal(res.results.length, 5);
    assert.ok(res.results.every((r) => outcomeName(r.outcome) === 'OUTCOME_SUCCEEDED'), 'the outcome is what each handler did');
    const kept = res.results.filter((r) => r.error === undefined);
    const withheld = res.results.filter((r) => r.error !== undefined);
    assert.equal(kept.length, 2, '2 × (1502 bytes of JSON + logs + 256 overhead) fit in 4096; a third does not');
    for (const r of kept) {
      const i = regs.findIndex((g) => g.registration?.id === r.registrationId);
      assert.equal(r.result, String(i).repeat(1500));
      assert.deepEqual(r.logs.map((l) => l.message), [`handler ${i}`]);
    }
    for (const r of withheld) {
      assert.equal(r.error?.name, 'ResponseTooLargeError');
      assert.match(r.error?.message ?? '', /ISOGEAR_MAX_RESPONSE_BYTES/);
      assert.equal(r.result, null);
      assert.deepEqual(r.logs, []);
      assert.equal(r.logsTruncated, true);
    }
    for (const r of regs) await t.client.release({ registrationId: r.registration?.id });
  });
});
