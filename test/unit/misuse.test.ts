import assert from 'node:assert/strict';
import { IllegalStateError } from '../../src/core/errors';
import { Interpreter } from '../../src/core/Interpreter';
import { IsolateHost } from '../../src/core/IsolateHost';
import { SandboxMaker } from '../../src/core/SandboxMaker';
import { BootstrapCompiler } from '../../src/sandbox/bootstrapScript';
import { CodeCache } from '../../src/sandbox/CodeCache';
import { SandboxReleasedError } from '../../src/sandbox/Sandbox';

const maker = new SandboxMaker({ maxLogBytes: 1024, maxValueBytes: 1024, maxRegistrationsPerInterpreter: 10 }, new CodeCache(0));
const noDeath = (): void => undefined;

describe('misuse is loud: handles used after release or dispose throw, naming what was misused', () => {
  it('a sandbox called after release throws SandboxReleasedError naming the call and the interpreter; a second release throws too', async () => {
    const host = IsolateHost.create('dedicated', 32, noDeath);
    host.admit('itp_misuse1');
    const sandbox = await maker.make(host, 'itp_misuse1', 'p1_');
    sandbox.release();
    await assert.rejects(sandbox.invoke('exe_1', 'reg_p1_1', '', 't', 100), (err: unknown) => err instanceof SandboxReleasedError && /itp_misuse1 used after it was released: invoke/.test(err.message));
    await assert.rejects(sandbox.prepare('export default 1', {}, 'tok'), /used after it was released: prepare/);
    assert.throws(() => sandbox.commit('exe_1'), /used after it was released: commit/);
    assert.throws(() => sandbox.abandon('exe_1'), /used after it was released: abandon/);
    assert.throws(() => sandbox.unregister(['reg_p1_1']), /used after it was released: unregister/);
    assert.throws(() => sandbox.release(), /used after it was released: release/);
    host.vacate('itp_misuse1');
    host.dispose('released');
  });

  it('a host its owner let go refuses new interpreters, new owners and new calls', () => {
    const host = IsolateHost.create('dedicated', 32, noDeath);
    host.dispose('released');
    assert.throws(() => host.admit('itp_x'), (err: unknown) => err instanceof IllegalStateError && err.message === 'dedicated isolate used after it was disposed (released): placing interpreter itp_x');
    assert.throws(() => host.adopt(noDeath), /disposed \(released\): handing it to a new owner/);
    assert.throws(() => host.track(Promise.resolve(1), 100), /disposed \(released\): a call into it/);
    const shared = IsolateHost.create('shared', 32, noDeath);
    shared.dispose('shutdown');
    assert.throws(() => shared.bootstrapScript(new BootstrapCompiler().compile), /shared isolate used after it was disposed \(shutdown\): compiling the bootstrap/);
    assert.throws(() => shared.admit('itp_y'), IllegalStateError);
  });

  it('an interpreter\'s context asked for after it FAILED throws; tidy-up calls on it are skipped, not errors', async () => {
    const host = IsolateHost.create('dedicated', 32, noDeath);
    host.admit('itp_misuse2');
    const sandbox = await maker.make(host, 'itp_misuse2', 'p2_');
    const interp = new Interpreter(
      { id: 'itp_misuse2', seq: 1, mode: 'isolate', name: '', host, sandbox, registrationPrefix: 'p2_', tenant: 'default', dedicatedMemoryMb: 32 },
      (i) => i.markDisposed(),
    );
    interp.fail('its isolate exceeded its memory limit');
    assert.throws(() => interp.sandbox, (err: unknown) => err instanceof IllegalStateError && /sandbox of interpreter itp_misuse2 was used after it was released \(failed\)/.test(err.message));
    interp.abandonRun('exe_1');
    interp.unregister(['reg_p2_1']);
    interp.markDisposed(); // its context was released once, by fail
    host.vacate(interp.id);
    host.dispose('released');
  });
});
