import assert from 'node:assert/strict';
import { pb } from '../helpers/client';
import { useTestServer } from '../helpers/fixture';
import { MODES, modeName, succeeded } from '../helpers/proto';

describe('Execute: the hello path', () => {
  const server = useTestServer();

  for (const mode of MODES) {
    it(`runs a default-export function with args and disposes the interpreter at refcount zero (${modeName(mode)})`, async () => {
      const t = server();
      const res = await t.client.execute({
        source: 'export default (args) => { console.log("hello", args.name); return { greeting: `hello ${args.name}`, n: [1, 2] }; }',
        args: { name: 'world' },
        mode,
      });
      succeeded(res);
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
