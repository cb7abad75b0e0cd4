import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { IsogearRpcError } from '@isogear/client';
import { expectStatus, grpc, pb, TestClient } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { scrape } from '../helpers/metrics';
import { releaseInterpreters, waitFor } from '../helpers/proto';
import { startTestServer } from '../helpers/server';

type Watch = ReturnType<TestClient['watch']>;

/** A line per event, for comparing. */
function line(e: pb.WatchEvent): string {
  if (e.interpreter) return `interpreter ${e.interpreter.id} ${pb.interpreterStateToJSON(e.interpreter.state)}`;
  if (e.registration) {
    const change = pb.registrationChangeToJSON(e.registration.change).replace(/^REGISTRATION_CHANGE_/, '').toLowerCase();
    // `released` and `change` must agree
    const agrees = e.registration.released === (e.registration.change === pb.RegistrationChange.REGISTRATION_CHANGE_RELEASED);
    return `registration ${e.registration.registration?.id} ${agrees ? change : `${change} but released=${e.registration.released}`}`;
  }
  if (e.run) return `run ${e.run.executionId} ${e.run.registrationId || '-'} ${pb.outcomeToJSON(e.run.outcome)}`;
  if (e.log) return `log ${e.log.executionId} ${e.log.entry?.level} ${e.log.entry?.message}`;
  return `dropped ${e.dropped}`;
}

/** Reads the next `n` events of a watch's (one) iterator. */
async function take(events: AsyncIterator<pb.WatchEvent>, n: number): Promise<pb.WatchEvent[]> {
  const out: pb.WatchEvent[] = [];
  while (out.length < n) {
    const next = await events.next();
    if (next.done) throw new Error(`the watch ended after ${out.length} of ${n} events`);
    out.push(next.value);
  }
  return out;
}

const iterate = (w: Watch): AsyncIterator<pb.WatchEvent> => w[Symbol.asyncIterator]();

describe('Watch: live events over gRPC', () => {
  describe('events', () => {
    const server = useTestServer();

    it('streams a registration’s life and its handler’s console lines while it runs, with the responses’ ids', async () => {
      const t = server();
      const watch = t.client.watch({ includeLogs: true });
      await watch.ready;
      const w = iterate(watch);
      const res = await t.client.execute({ source: 'gears.register("wt.t", (p) => { console.log("start", p); const t = Date.now(); while (Date.now() - t < 400) {} return p; });' });
      const reg = res.registrations[0].id;
      const [made, created, ran] = await take(w, 3);
      assert.equal(line(made), `interpreter ${res.interpreterId} INTERPRETER_STATE_READY`);
      assert.equal(line(created), `registration ${reg} created`);
      assert.equal(line(ran), `run ${res.executionId} - OUTCOME_SUCCEEDED`);
      assert.ok(made.time instanceof Date);
      let ended = false;
      const fired = t.client.trigger({ trigger: 'wt.t', payload: 7 }).finally(() => (ended = true));
      const [first] = await take(w, 1);
      assert.equal(ended, false, 'the console line arrived while the handler ran');
      const result = await fired;
      assert.equal(line(first), `log ${result.results[0].executionId} log start 7`);
      assert.equal(first.log?.registrationId, reg);
      const [handled] = await take(w, 1);
      assert.equal(line(handled), `run ${result.results[0].executionId} ${reg} OUTCOME_SUCCEEDED`);
      assert.equal(handled.run?.trigger, 'wt.t');
      assert.ok((handled.run?.wallTime?.nanos ?? 0) + (handled.run?.wallTime?.seconds ?? 0) > 0);
      await releaseInterpreters(t.client, res.interpreterId);
      assert.deepEqual((await take(w, 2)).map(line), [`registration ${reg} released`, `interpreter ${res.interpreterId} INTERPRETER_STATE_DISPOSED`]);
      watch.close();
      assert.equal((await w.next()).done, true, 'closed: the loop ends');
    });

    it('bad filters: an unknown interpreter or registration is NOT_FOUND, a bad trigger INVALID_ARGUMENT', async () => {
      const t = server();
      for (const [req, code] of [
        [{ interpreterId: 'itp_00000000000000000000' }, grpc.status.NOT_FOUND],
        [{ registrationId: 'reg_nope_1' }, grpc.status.NOT_FOUND],
        [{ trigger: 'not a trigger!' }, grpc.status.INVALID_ARGUMENT],
      ] as const) {
        const w = t.client.watch(req);
        const err = await w.ready.then(
          () => undefined,
          (e: unknown) => e,
        );
        assert.ok(err instanceof IsogearRpcError, String(err));
        assert.equal(err.code, code);
      }
    });

  });

  describe('limits, tenants and shutdown', () => {
    it('a reader that falls behind loses events, learns how many, and the server does not wait for it', async () => {
      // (a run's console output is bounded, ISOGEAR_MAX_LOG_BYTES: lines past it are not written, nor watched)
      const small = await startTestServer({ ISOGEAR_WATCH_BUFFER: '5', ISOGEAR_MAX_LOG_BYTES: String(8 * 1024 * 1024) });
      let interpreterId: string | undefined;
      try {
        const res = await small.client.execute({ source: 'gears.register("wt.flood", () => { for (let i = 0; i < 3000; i++) console.log("x".repeat(1000)); return 1; });' });
        // the raw stream, paused: nothing is read while the server writes
        const md = new grpc.Metadata();
        const stream = small.client.raw.watch({ interpreterId: res.interpreterId, trigger: '', registrationId: '', includeLogs: true }, md);
        interpreterId = res.interpreterId;
        await new Promise((resolve) => stream.once('metadata', resolve));
        stream.pause();
        const since = Date.now();
        const fired = await small.client.trigger({ trigger: 'wt.flood' });
        assert.equal(fired.results[0].outcome, pb.Outcome.OUTCOME_SUCCEEDED);
        assert.ok(Date.now() - since < 5000, 'the run did not wait for the watcher');
        const seen: pb.WatchEvent[] = [];
        stream.on('data', (e: pb.WatchEvent) => seen.push(e));
        stream.on('error', () => undefined);
        stream.resume();
        // the flood's own run event may be among those dropped: once the stream is quiet, one
        // more run, which the emptied buffer lets through, marks the end
        let count = -1;
        while (count !== seen.length) {
          count = seen.length;
          await new Promise((r) => setTimeout(r, 200));
        }
        const probe = await small.client.execute({ interpreterId: res.interpreterId, source: 'export default 0' });
        await waitFor('the probe run', () => seen.some((e) => e.run?.executionId === probe.executionId), 10_000);
        const flood = seen.filter((e) => e.run?.executionId !== probe.executionId);
        const dropped = flood.filter((e) => e.dropped !== undefined).reduce((n, e) => n + (e.dropped ?? 0), 0);
        const delivered = flood.filter((e) => e.log || e.run).length;
        assert.ok(dropped > 0, 'some events were dropped');
        assert.equal(delivered + dropped, 3001, `each of the 3000 lines and the run is delivered or counted dropped (${delivered} delivered, ${dropped} dropped)`);
        stream.cancel();
        assert.ok((await scrape(small)).get('isogear_watch_events_dropped_total') === dropped, 'the metric counts them too');
      } finally {
        if (interpreterId) await releaseInterpreters(small.client, interpreterId);
        await small.close();
      }
    });

    it('a tenant’s streams are bounded (tenant_watchers) and see only its own events; shutdown ends them UNAVAILABLE', async () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'isogear-watch-'));
      const keysPath = path.join(dir, 'keys.json');
      const sha = (k: string): string => createHash('sha256').update(k).digest('hex');
      writeFileSync(keysPath, JSON.stringify({ tenants: [{ name: 'alpha', keySha256: sha('alpha-watch-key') }, { name: 'beta', keySha256: sha('beta-watch-key') }] }));
      const t = await startTestServer({ ISOGEAR_API_KEYS_FILE: keysPath, ISOGEAR_TENANT_MAX_WATCHERS: '2' });
      const alpha = new TestClient(t.server.grpcAddress, 'alpha-watch-key');
      const beta = new TestClient(t.server.grpcAddress, 'beta-watch-key');
      try {
        const a1 = alpha.watch();
        const a2 = alpha.watch();
        await Promise.all([a1.ready, a2.ready]);
        const refused = await alpha.watch().ready.then(
          () => undefined,
          (e: unknown) => e,
        );
        assert.ok(refused instanceof IsogearRpcError && refused.code === grpc.status.RESOURCE_EXHAUSTED && refused.limit === 'tenant_watchers', String(refused));
        const b = beta.watch();
        await b.ready;
        const mine = await alpha.execute({ source: 'export default 1' });
        await beta.execute({ source: 'export default 2' }).then((r) => assert.ok(r.interpreterId));
        const [first] = await take(iterate(a1), 1);
        assert.equal(line(first), `interpreter ${mine.interpreterId} INTERPRETER_STATE_READY`);
        const [theirs] = await take(iterate(b), 1);
        assert.notEqual(theirs.interpreter?.id, mine.interpreterId, 'beta does not see alpha’s interpreter');
        // another tenant's interpreter is NOT_FOUND as a filter
        await expectStatus(
          new Promise((resolve, reject) => {
            const s = beta.raw.watch({ interpreterId: mine.interpreterId, trigger: '', registrationId: '', includeLogs: false }, (() => {
              const md = new grpc.Metadata();
              md.set('authorization', 'Bearer beta-watch-key');
              return md;
            })());
            s.on('error', reject);
            s.on('end', resolve);
            s.on('data', () => undefined);
          }),
          grpc.status.NOT_FOUND,
        );
        a2.close();
        await waitFor('the server saw the close', () => t.manager.counters().watch.streams === 2);
        const again = alpha.watch();
        await again.ready;
        // shutdown ends the streams still open with UNAVAILABLE, at once
        const ending = (async () => {
          try {
            for await (const e of again) void e;
            return undefined;
          } catch (err) {
            return err;
          }
        })();
        const since = Date.now();
        await t.server.shutdown(5000);
        assert.ok(Date.now() - since < 4000, 'open streams did not hold the graceful stop');
        const err = await ending;
        assert.ok(err instanceof IsogearRpcError && err.code === grpc.status.UNAVAILABLE, String(err));
        a1.close();
        b.close();
      } finally {
        alpha.close();
        beta.close();
        await t.close();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });
});
