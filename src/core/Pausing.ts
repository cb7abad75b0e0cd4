import type { Recorder } from './durability/Recorder';
import { NotFoundError } from './errors';
import type { Interpreter } from './Interpreter';
import type { Interpreters } from './Interpreters';
import type { Registration } from './Registration';
import type { RegistrationIndex } from './RegistrationIndex';
import { DEFAULT_TENANT } from './tenants';
import type { PauseTarget } from './types';
import { checkIdLength, requireTrigger } from './validation';

export interface PausingDeps {
  index: RegistrationIndex;
  interpreters: Interpreters;
  recorder: Recorder;
}

/**
 * Pausing and resuming registrations (PauseRegistrations, ResumeRegistrations): which ones a
 * target names, for its tenant only, and the change itself, made per interpreter through the
 * Recorder (stored first, then here in one synchronous step). A paused registration stays
 * indexed and holds its reference; the Trigger fan-out skips it.
 */
export class Pausing {
  constructor(private readonly deps: PausingDeps) {}

  /** Pauses (`paused` true) or resumes what `target` names; resolves with the ids it changed, in creation order. */
  async set(target: PauseTarget, paused: boolean): Promise<string[]> {
    const byInterpreter = new Map<Interpreter, Registration[]>();
    for (const reg of this.select(target)) {
      const interp = this.deps.interpreters.get(reg.interpreterId);
      if (!interp) continue;
      const regs = byInterpreter.get(interp);
      if (regs) regs.push(reg);
      else byInterpreter.set(interp, [reg]);
    }
    const changed = await Promise.all([...byInterpreter].map(([interp, regs]) => this.deps.recorder.setPaused(interp, regs, paused)));
    return changed
      .flat()
      .sort((a, b) => a.seq - b.seq)
      .map((r) => r.id);
  }

  /** The live registrations `target` names; NOT_FOUND when it names none of the tenant's, INVALID_ARGUMENT for a bad trigger name. */
  private select(target: PauseTarget): Registration[] {
    const tenant = target.tenant || DEFAULT_TENANT;
    const { index, interpreters } = this.deps;
    if ('registrationId' in target) {
      checkIdLength(target.registrationId, 'registration_id');
      const reg = index.get(target.registrationId);
      // another tenant's registration answers exactly like one that does not exist
      if (!reg || reg.tenant !== tenant) throw new NotFoundError(`registration ${target.registrationId} not found (unknown or already released)`);
      return [reg];
    }
    if ('interpreterId' in target) {
      checkIdLength(target.interpreterId, 'interpreter_id');
      const interp = interpreters.own(target.interpreterId, tenant);
      if (!interp) throw new NotFoundError(`interpreter ${target.interpreterId} not found (unknown or already disposed)`);
      if (interp.registrations.size === 0) throw new NotFoundError(`interpreter ${target.interpreterId} holds no registrations`);
      return [...interp.registrations.values()];
    }
    requireTrigger(target.trigger);
    const bound = index.bound(tenant, target.trigger);
    if (!bound || bound.length === 0) throw new NotFoundError(`no registration is bound to trigger "${target.trigger}"`);
    return bound.slice();
  }
}
