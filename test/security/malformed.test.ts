import assert from 'node:assert/strict';
import { expectStatus, grpc, pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { limits, MODES, modeName, releaseInterpreters, succeeded } from '../helpers/proto';
import type { TestServer } from '../helpers/server';
import { assertRun, assertServing } from './harness';

/**
 * Malformed requests: field values no client library would send (wrong enums, ids of the wrong
 * shape, empty and oversized strings, limits out of range, NaN), and raw bytes that are not a
 * protobuf message at all, sent to every method path. Each must get a clear status, and the
 * server must keep serving.
 */

const SERVICE = '/isogear.v1.GearsService';
const METHODS = ['Execute', 'Register', 'Release', 'Trigger', 'GetInterpreter', 'ListInterpreters', 'ListRegistrations'] as const;

// ---------------------------------------------------------------- protobuf by hand

function varint(n: bigint): number[] {
  const out: number[] = [];
  let v = BigInt.asUintN(64, n);
  while (v > 127n) {
    out.push(Number(v & 127n) | 128);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}
const tag = (field: number, wire: number): number[] => varint(BigInt((field << 3) | wire));
const varintField = (field: number, n: bigint): number[] => [...tag(field, 0), ...varint(n)];
const bytesField = (field: number, payload: readonly number[] | Buffer): number[] => [...tag(field, 2), ...varint(BigInt(payload.length)), ...payload];
const stringField = (field: number, s: string): number[] => bytesField(field, Buffer.from(s, 'utf8'));

/** google.protobuf.Value{null_value} wrapped in `depth` ListValues, built inside out. */
function nestedListValue(depth: number): Buffer {
  let inner = Buffer.from(varintField(1, 0n));
  for (let i = 0; i < depth; i++) inner = Buffer.from(bytesField(6, bytesField(1, inner)));
  return inner;
}

/** Sends raw bytes to a method path and resolves with the raw response (or rejects with the status). */
function rawCall(t: TestServer, method: string, body: Buffer | number[]): Promise<Buffer> {
  const client = new grpc.Client(t.server.grpcAddress, grpc.credentials.createInsecure());
  return new Promise<Buffer>((resolve, reject) => {
    client.makeUnaryRequest(
      `${SERVICE}/${method}`,
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.from(body),
      { deadline: new Date(Date.now() + 10_000) },
      (err, res) => (err ? reject(err) : resolve(res as Buffer)),
    );
  }).finally(() => client.close());
}

const GARBAGE = Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02, 0x03]);
/** Field 1, length 16, but only one byte follows. */
const TRUNCATED = Buffer.from([0x0a, 0x10, 0x41]);
/** Wire type 3 (start group), which proto3 messages never use. */
const BAD_WIRE_TYPE = Buffer.from([0x0b, 0x00]);
const UNDECODABLE = /^Error deserializing request$/;

/** What an empty message (all fields default) gets from each method. */
const EMPTY_BODY: Record<(typeof METHODS)[number], { code: grpc.status; message?: RegExp }> = {
  Execute: { code: grpc.status.INVALID_ARGUMENT, message: /^source must not be empty$/ },
  Register: { code: grpc.status.INVALID_ARGUMENT, message: /^trigger must not be empty$/ },
  Release: { code: grpc.status.INVALID_ARGUMENT, message: /^set exactly one of registration_id or interpreter_id$/ },
  Trigger: { code: grpc.status.INVALID_ARGUMENT, message: /^trigger must not be empty$/ },
  GetInterpreter: { code: grpc.status.INVALID_ARGUMENT, message: /^interpreter_id must not be empty$/ },
  ListInterpreters: { code: grpc.status.OK },
  ListRegistrations: { code: grpc.status.OK },
};

describe('security: malformed requests', () => {
  const server = useTestServer();

  describe('raw bytes that are not the method’s message', () => {
    for (const method of METHODS) {
      it(`${method}: garbage, truncated and wrong-wire-type bodies are INTERNAL "Error deserializing request"; an empty body is validated like any request`, async () => {
        const t = server();
        for (const body of [GARBAGE, TRUNCATED, BAD_WIRE_TYPE]) {
          await expectStatus(rawCall(t, method, body), grpc.status.INTERNAL, UNDECODABLE);
        }
        const empty = EMPTY_BODY[method];
        if (empty.code === grpc.status.OK) {
          const res = await rawCall(t, method, Buffer.alloc(0));
          assert.equal(res.length, 0, 'an empty page encodes to no bytes');
        } else {
          await expectStatus(rawCall(t, method, Buffer.alloc(0)), empty.code, empty.message);
        }
        await assertServing(t, `garbage sent to ${method}`);
      });
    }

    it('an unknown method path is UNIMPLEMENTED naming it', async () => {
      const t = server();
      await expectStatus(rawCall(t, 'Nope', Buffer.alloc(0)), grpc.status.UNIMPLEMENTED, /\/isogear\.v1\.GearsService\/Nope/);
      await assertServing(t);
    });

    it('args nested deeper than the decoder’s recursion limit are INTERNAL "Error deserializing request"; 49 levels decode and reach the script whole', async () => {
      const t = server();
      const source = stringField(1, 'export default (a) => a;');
      await expectStatus(rawCall(t, 'Execute', [...source, ...bytesField(2, nestedListValue(1000))]), grpc.status.INTERNAL, UNDECODABLE);
      await expectStatus(rawCall(t, 'Execute', [...source, ...bytesField(2, nestedListValue(150))]), grpc.status.INTERNAL, UNDECODABLE);
      const echoed = pb.ExecuteResponse.decode(await rawCall(t, 'Execute', [...source, ...bytesField(2, nestedListValue(45))]));
      succeeded(echoed);
      const deepest = pb.ExecuteResponse.decode(await rawCall(t, 'Execute', [...stringField(1, 'export default (a) => { let d = 0; while (Array.isArray(a)) { a = a[0]; d++; } return d; };'), ...bytesField(2, nestedListValue(49))]));
      succeeded(deepest);
      assert.equal(deepest.result, 49, 'the script received every level');
      await assertServing(t);
    });

    it('a "__proto__" key in args, sent on the wire, neither pollutes the host nor reaches the script as a prototype', async () => {
      const t = server();
      // Struct{fields: {"__proto__": Value{struct_value: Struct{fields: {"polluted": Value{bool_value: true}}}}, "a": Value{number_value: 1}}}
      const polluted = bytesField(1, [...stringField(1, 'polluted'), ...bytesField(2, varintField(4, 1n))]);
      const protoEntry = bytesField(1, [...stringField(1, '__proto__'), ...bytesField(2, bytesField(5, polluted))]);
      const aEntry = bytesField(1, [...stringField(1, 'a'), ...bytesField(2, [0x11, ...Buffer.from(new Float64Array([1]).buffer)])]);
      const args = bytesField(5, [...protoEntry, ...aEntry]);
      const body = [
        ...stringField(1, 'export default (a) => [Object.keys(a), ({}).polluted === undefined, Object.getPrototypeOf(a) === Object.prototype, a.polluted === undefined];'),
        ...bytesField(2, args),
      ];
      const res = pb.ExecuteResponse.decode(await rawCall(t, 'Execute', body));
      succeeded(res);
      assert.deepEqual(res.result, [['a'], true, true, true]);
      assert.equal((({}) as Record<string, unknown>).polluted, undefined, 'the host’s Object.prototype is clean');
      await assertServing(t);
    });

    it('invalid UTF-8 in the source is decoded with replacement characters: a SyntaxError outcome, not a crash', async () => {
      const t = server();
      const body = bytesField(1, Buffer.concat([Buffer.from('export default 1; '), Buffer.from([0xff, 0xfe, 0xc3])]));
      const res = pb.ExecuteResponse.decode(await rawCall(t, 'Execute', body));
      assertRun(res, { outcome: 'OUTCOME_FAILED', name: 'SyntaxError', message: 'Invalid or unexpected token [main.js:1:19]' });
      await assertServing(t);
    });

    it('limits of 2^64-1 (a negative number on the wire) are INVALID_ARGUMENT naming the field and the maximum', async () => {
      const t = server();
      const source = stringField(1, 'export default 1;');
      await expectStatus(
        rawCall(t, 'Execute', [...source, ...bytesField(4, varintField(1, -1n))]),
        grpc.status.INVALID_ARGUMENT,
        /^limits\.timeout_ms 4294967295 is over the server maximum of 60000$/,
      );
      await expectStatus(
        rawCall(t, 'Execute', [...source, ...bytesField(4, varintField(2, -1n))]),
        grpc.status.INVALID_ARGUMENT,
        /^limits\.memory_limit_mb 4294967295 is over the server maximum of 512$/,
      );
      await expectStatus(
        rawCall(t, 'Trigger', [...stringField(1, 'some.trigger'), ...bytesField(3, varintField(1, -5n))]),
        grpc.status.INVALID_ARGUMENT,
        /^limits\.timeout_ms 4294967291 is over the server maximum of 60000$/,
      );
      await assertServing(t);
    });
  });

  describe('field values out of range', () => {
    it('unknown IsolationMode numbers (99, -1, 2^31-1) are INVALID_ARGUMENT on every RPC that takes a mode', async () => {
      const t = server();
      for (const n of [99, -1, 2 ** 31 - 1]) {
        const mode = n as pb.IsolationMode;
        const message = new RegExp(`^mode ${n} is not a known IsolationMode$`);
        await expectStatus(t.client.execute({ source: 'export default 1;', mode }), grpc.status.INVALID_ARGUMENT, message);
        await expectStatus(t.client.register({ trigger: 'm.t', source: 'export default () => 1;', mode }), grpc.status.INVALID_ARGUMENT, message);
        await expectStatus(t.client.listInterpreters({ mode }), grpc.status.INVALID_ARGUMENT, message);
      }
      assert.equal(t.manager.counters().interpreters, 0, 'nothing was created');
      await assertServing(t);
    });

    it('limits below the minimum or over the maximum, and page sizes out of range, say which field and why', async () => {
      const t = server();
      await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(0, 1) }), grpc.status.INVALID_ARGUMENT, /^limits\.memory_limit_mb must be at least 8$/);
      await expectStatus(t.client.execute({ source: 'export default 1;', limits: limits(4294967295) }), grpc.status.INVALID_ARGUMENT, /^limits\.timeout_ms 4294967295 is over/);
      await expectStatus(t.client.register({ trigger: 'l.t', source: 'export default () => 1;', limits: limits(0, 100000) }), grpc.status.INVALID_ARGUMENT, /^limits\.memory_limit_mb 100000 is over/);
      await expectStatus(t.client.listInterpreters({ pageSize: -1 }), grpc.status.INVALID_ARGUMENT, /^page_size must not be negative$/);
      await expectStatus(t.client.listRegistrations({ pageSize: 2 ** 31 - 1 }), grpc.status.INVALID_ARGUMENT, /^page_size must be at most 1000$/);
      await expectStatus(t.client.listRegistrations({ pageToken: 'x'.repeat(100_000) }), grpc.status.INVALID_ARGUMENT, /^page_token is not a token this server issued$/);
      await assertServing(t);
    });

    it('empty, blank and malformed trigger names are INVALID_ARGUMENT for Register and Trigger', async () => {
      const t = server();
      const pattern = /^trigger must match \/\^\[A-Za-z0-9_\]\[A-Za-z0-9_\.:\/@-\]\{0,255\}\$\/$/;
      await expectStatus(t.client.register({ trigger: '', source: 'export default () => 1;' }), grpc.status.INVALID_ARGUMENT, /^trigger must not be empty$/);
      await expectStatus(t.client.trigger({ trigger: '' }), grpc.status.INVALID_ARGUMENT, /^trigger must not be empty$/);
      for (const trigger of [' ', 'a b', 'nul\u0000byte', '.leading', '-dash', 'é', 'x'.repeat(257), 'new\nline', 't'.repeat(1_000_000)]) {
        await expectStatus(t.client.register({ trigger, source: 'export default () => 1;' }), grpc.status.INVALID_ARGUMENT, pattern);
        await expectStatus(t.client.trigger({ trigger }), grpc.status.INVALID_ARGUMENT, pattern);
      }
      assert.equal(t.manager.counters().interpreters, 0);
      await assertServing(t);
    });

    it('ids of the wrong shape are NOT_FOUND naming the id, for every RPC that takes one', async () => {
      const t = server();
      const live = await t.client.execute({ source: "export default gears.register('shape.t', () => 1);" });
      succeeded(live);
      const regId = live.result as string;
      const wrong = [regId, 'itp_', 'itp_zz', '../../etc/passwd', 'itp_\u0000', 'ITP_' + live.interpreterId.slice(4), ' ' + live.interpreterId, '😀'];
      for (const id of wrong) {
        const notFound = new RegExp(`^interpreter ${id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} not found`);
        await expectStatus(t.client.getInterpreter({ interpreterId: id }), grpc.status.NOT_FOUND, notFound);
        await expectStatus(t.client.release({ interpreterId: id }), grpc.status.NOT_FOUND, notFound);
        await expectStatus(t.client.execute({ source: 'export default 1;', interpreterId: id }), grpc.status.NOT_FOUND, notFound);
        await expectStatus(t.client.register({ trigger: 'x.t', source: 'export default () => 1;', interpreterId: id }), grpc.status.NOT_FOUND, notFound);
      }
      for (const id of [live.interpreterId, 'reg_', 'reg_' + regId, regId.toUpperCase()]) {
        await expectStatus(t.client.release({ registrationId: id }), grpc.status.NOT_FOUND, /^registration .* not found \(unknown or already released\)$/);
      }
      const info = await t.client.getInterpreter({ interpreterId: live.interpreterId });
      assert.equal(info.interpreter?.registrationReferences, 1, 'nothing touched the live interpreter');
      await t.client.release({ interpreterId: live.interpreterId });
      await assertServing(t);
    });

    it('oversized strings: source, args, trigger, name, description and module specifiers are INVALID_ARGUMENT; a message over the transport maximum is RESOURCE_EXHAUSTED', async () => {
      const t = server();
      await expectStatus(
        t.client.execute({ source: 'x'.repeat(3_000_000) }),
        grpc.status.INVALID_ARGUMENT,
        /^source plus modules is 3000000 bytes, over the limit of 1048576 bytes \(ISOGEAR_MAX_SOURCE_BYTES\)$/,
      );
      await expectStatus(t.client.execute({ source: 'x'.repeat(5_000_000) }), grpc.status.RESOURCE_EXHAUSTED, /^Received message larger than max \(\d+ vs 4194304\)$/);
      await expectStatus(t.client.execute({ source: 'export default 1;', args: 'a'.repeat(2_000_000) }), grpc.status.INVALID_ARGUMENT, /^args is larger than 1048576 bytes of JSON$/);
      await expectStatus(t.client.execute({ source: 'export default 1;', name: 'n'.repeat(1_000_000) }), grpc.status.INVALID_ARGUMENT, /^name must be 1-128 characters/);
      await expectStatus(
        t.client.register({ trigger: 'd.t', source: 'export default () => 1;', description: 'd'.repeat(1_000_000) }),
        grpc.status.INVALID_ARGUMENT,
        /^description must be at most 1024 characters$/,
      );
      await expectStatus(
        t.client.execute({ source: 'export default 1;', modules: { ['s'.repeat(100_000)]: 'export default 1;' } }),
        grpc.status.INVALID_ARGUMENT,
        /^module specifier "s{64}" must be 1-256 characters without control characters$/,
      );
      await expectStatus(
        t.client.execute({ source: 'export default 1;', modules: { 'isogear:main': 'export default 2;' } }),
        grpc.status.INVALID_ARGUMENT,
        /^module specifier "isogear:main" is reserved$/,
      );
      assert.equal(t.manager.counters().interpreters, 0);
      await assertServing(t);
    });

    it('an unknown id of up to 128 characters is NOT_FOUND naming it; a longer one is INVALID_ARGUMENT giving its length', async () => {
      const t = server();
      const id = `itp_${'i'.repeat(124)}`;
      const err = await expectStatus(t.client.getInterpreter({ interpreterId: id }), grpc.status.NOT_FOUND);
      assert.ok(err.details.includes(id));
      await expectStatus(t.client.getInterpreter({ interpreterId: `${id}x` }), grpc.status.INVALID_ARGUMENT, /^interpreter_id is 129 characters long; isogear ids are at most 128$/);
      await expectStatus(t.client.release({ registrationId: 'r'.repeat(60_000) }), grpc.status.INVALID_ARGUMENT, /^registration_id is 60000 characters long/);
      await expectStatus(t.client.listRegistrations({ interpreterId: 'i'.repeat(200) }), grpc.status.INVALID_ARGUMENT, /^interpreter_id is 200/);
      await assertServing(t);
    });

    /**
     * NOT_FOUND messages echo the requested id. An id whose HPACK-encoded status message exceeds
     * the client's 64 KiB header-list limit made the trailers undeliverable: the call never
     * completed and the client's channel stayed wedged. Ids longer than 128 characters are now
     * INVALID_ARGUMENT without being echoed.
     */
    it('an id of 100 000 characters gets a clear status instead of a call that never completes', async () => {
      const t = server();
      const id = 'r'.repeat(100_000);
      for (const call of [
        () => t.client.getInterpreter({ interpreterId: id }, { deadlineMs: 5000 }),
        () => t.client.release({ registrationId: id }, { deadlineMs: 5000 }),
        () => t.client.execute({ source: 'export default 1;', interpreterId: id }, { deadlineMs: 5000 }),
      ]) {
        let err: grpc.ServiceError | undefined;
        await call().catch((e: grpc.ServiceError) => (err = e));
        assert.ok(err);
        assert.ok([grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND].includes(err.code), `${grpc.status[err.code]}: ${err.details.slice(0, 200)}`);
        assert.ok(err.details.length < 1024, 'the status message is bounded');
      }
      await assertServing(t);
    });

    it('NaN and ±Infinity in args and payloads are INVALID_ARGUMENT naming where', async () => {
      const t = server();
      const target = await t.client.execute({ source: "gears.register('nan.t', (p) => p);" });
      succeeded(target);
      await expectStatus(t.client.execute({ source: 'export default 1;', args: Number.NaN }), grpc.status.INVALID_ARGUMENT, /^args is NaN; only finite numbers are JSON values$/);
      await expectStatus(
        t.client.execute({ source: 'export default 1;', args: { a: [1, Number.POSITIVE_INFINITY] } }),
        grpc.status.INVALID_ARGUMENT,
        /^args\.a\[1\] is Infinity; only finite numbers are JSON values$/,
      );
      await expectStatus(t.client.trigger({ trigger: 'nan.t', payload: { deep: { x: Number.NEGATIVE_INFINITY } } }), grpc.status.INVALID_ARGUMENT, /^payload\.deep\.x is -Infinity/);
      await assertServing(t);
      await releaseInterpreters(t.client, target.interpreterId);
    });
  });

  for (const mode of MODES) {
    it(`a burst of every malformed request at once leaves the server serving (${modeName(mode)})`, async () => {
      const t = server();
      const bad: Promise<unknown>[] = [];
      for (let i = 0; i < 20; i++) {
        bad.push(t.client.execute({ source: '', mode }));
        bad.push(t.client.execute({ source: 'export default 1;', mode: 42 as pb.IsolationMode }));
        bad.push(t.client.trigger({ trigger: `bad trigger ${i}` }));
        bad.push(t.client.getInterpreter({ interpreterId: `itp_${i}` }));
        bad.push(rawCall(t, METHODS[i % METHODS.length], GARBAGE));
        bad.push(t.client.execute({ source: 'export default (', mode }).then((r) => assertRun(r, { outcome: 'OUTCOME_FAILED', name: 'SyntaxError' })));
      }
      const settled = await Promise.allSettled(bad);
      const codes = new Set(settled.filter((s) => s.status === 'rejected').map((s) => ((s as PromiseRejectedResult).reason as grpc.ServiceError).code));
      assert.deepEqual([...codes].sort(), [grpc.status.INTERNAL, grpc.status.INVALID_ARGUMENT, grpc.status.NOT_FOUND].sort());
      assert.equal(settled.filter((s) => s.status === 'fulfilled').length, 20, 'the syntax errors are outcomes, not statuses');
      await assertServing(t);
    });
  }
});
