import assert from 'node:assert/strict';
import { pb } from '../helpers/client';
import { startTestServer, type TestServer } from '../helpers/server';

describe('Execute: the hello path', () => {
  let t: TestServer;
  beforeEach(async () => {
    t = await startTestServer();
  });
  afterEach(async () => {
    await t.close();
  });

  for (const mode of [pb.IsolationMode.ISOLATION_MODE_SHARED, pb.IsolationMode.ISOLATION_MODE_ISOLATE]) {
    it(`runs a default-export function with args and disposes the interpreter at refcount zero (${pb.isolationModeToJSON(mode)})`, async () => {
      const res = await t.client.execute({
        source: 'export default (args) => { console.log("hello", args.name); return { greeting: `hello ${args.name}`, n: [1, 2] }; }',
        args: { name: 'world' },
        mode,
      });
      assert.equal(res.outcome, pb.Outcome.OUTCOME_SUCCEEDED, JSON.stringify(res.error));
      assert.deepEqual(res.result, { greeting: 'hello world', n: [1, 2] });
      assert.deepEqual(res.logs, [{ level: 'log', message: 'hello world' }]);
      assert.match(res.executionId, /^exe_/);
      assert.match(res.interpreterId, /^itp_/);
      assert.equal(res.interpreter?.state, pb.InterpreterState.INTERPRETER_STATE_DISPOSED);
      assert.equal(res.interpreter?.references, 0);
      assert.equal(res.interpreter?.mode, mode);
      assert.ok(res.wallTime, 'wall time is reported');
    });
  }
});
