import { pb, type Duration } from '@isogear/client';
import { InvalidArgumentError } from '../core/errors';
import type * as core from '../core/types';

/** Maps between proto messages and the core's plain types. No logic beyond translation. */

export function durationFromMs(ms: number): Duration {
  const totalNanos = Math.max(0, Math.round(ms * 1e6));
  return { seconds: Math.floor(totalNanos / 1e9), nanos: totalNanos % 1e9 };
}

export function modeFromProto(mode: pb.IsolationMode, field = 'mode'): core.IsolationMode | undefined {
  switch (mode) {
    case pb.IsolationMode.ISOLATION_MODE_UNSPECIFIED:
      return undefined;
    case pb.IsolationMode.ISOLATION_MODE_SHARED:
      return 'shared';
    case pb.IsolationMode.ISOLATION_MODE_ISOLATE:
      return 'isolate';
    default:
      throw new InvalidArgumentError(`${field} ${String(mode)} is not a known IsolationMode`);
  }
}

export function languageFromProto(language: pb.Language): core.Language | undefined {
  switch (language) {
    case pb.Language.LANGUAGE_UNSPECIFIED:
      return undefined;
    case pb.Language.LANGUAGE_JAVASCRIPT:
      return 'javascript';
    case pb.Language.LANGUAGE_TYPESCRIPT:
      return 'typescript';
    default:
      throw new InvalidArgumentError(`language ${String(language)} is not a known Language`);
  }
}

export function modeToProto(mode: core.IsolationMode): pb.IsolationMode {
  return mode === 'shared' ? pb.IsolationMode.ISOLATION_MODE_SHARED : pb.IsolationMode.ISOLATION_MODE_ISOLATE;
}

const STATES: Record<core.InterpreterState, pb.InterpreterState> = {
  ready: pb.InterpreterState.INTERPRETER_STATE_READY,
  draining: pb.InterpreterState.INTERPRETER_STATE_DRAINING,
  disposed: pb.InterpreterState.INTERPRETER_STATE_DISPOSED,
  failed: pb.InterpreterState.INTERPRETER_STATE_FAILED,
};

const OUTCOMES: Record<core.Outcome, pb.Outcome> = {
  succeeded: pb.Outcome.OUTCOME_SUCCEEDED,
  failed: pb.Outcome.OUTCOME_FAILED,
  timed_out: pb.Outcome.OUTCOME_TIMED_OUT,
  memory_exceeded: pb.Outcome.OUTCOME_MEMORY_EXCEEDED,
  aborted: pb.Outcome.OUTCOME_ABORTED,
};

export function limitsFromProto(limits: pb.Limits | undefined): core.Limits | undefined {
  if (!limits) return undefined;
  return { timeoutMs: limits.timeoutMs, memoryLimitMb: limits.memoryLimitMb };
}

export function interpreterToProto(i: core.InterpreterInfo): pb.Interpreter {
  return {
    id: i.id,
    name: i.name,
    mode: modeToProto(i.mode),
    state: STATES[i.state],
    references: i.references,
    registrationReferences: i.registrationReferences,
    executionReferences: i.executionReferences,
    createdAt: i.createdAt,
    heapUsedBytes: i.heapUsedBytes,
    cpuTime: durationFromMs(i.cpuTimeMs),
    failureReason: i.failureReason,
  };
}

export function scriptErrorToProto(e: core.ScriptError | undefined): pb.ScriptError | undefined {
  return e ? { name: e.name, message: e.message, stack: e.stack } : undefined;
}

export function registrationToProto(r: core.RegistrationInfo): pb.Registration {
  return {
    id: r.id,
    trigger: r.trigger,
    interpreterId: r.interpreterId,
    description: r.description,
    createdAt: r.createdAt,
    stats: {
      runs: r.stats.runs,
      failures: r.stats.failures,
      lastError: scriptErrorToProto(r.stats.lastError),
      totalTime: durationFromMs(r.stats.totalTimeMs),
      lastRunAt: r.stats.lastRunAt,
      skippedTicks: r.stats.skippedTicks ?? 0,
      nextRunAt: r.stats.nextRunAt,
      pendingEntries: r.stats.pendingEntries ?? 0,
      lag: r.stats.lag ?? 0,
      lastEntryId: r.stats.lastEntryId ?? '',
      deadLetters: r.stats.deadLetters ?? 0,
    },
    broken: r.broken,
    schedule: r.schedule,
    stream: r.stream,
    paused: r.paused,
    timezone: r.timezone,
    group: r.group,
  };
}

export function executeResponseToProto(r: core.ExecuteResult): pb.ExecuteResponse {
  return {
    executionId: r.executionId,
    interpreterId: r.interpreterId,
    outcome: OUTCOMES[r.outcome],
    // null must be sent explicitly: undefined would leave the field unset
    result: r.outcome === 'succeeded' ? r.result : undefined,
    error: scriptErrorToProto(r.error),
    logs: r.logs,
    logsTruncated: r.logsTruncated,
    registrations: r.registrations.map(registrationToProto),
    wallTime: durationFromMs(r.wallTimeMs),
    cpuTime: durationFromMs(r.cpuTimeMs),
    interpreter: r.interpreter ? interpreterToProto(r.interpreter) : undefined,
  };
}

export function triggerResultToProto(r: core.TriggerRunResult): pb.TriggerResult {
  return {
    registrationId: r.registrationId,
    interpreterId: r.interpreterId,
    executionId: r.executionId,
    outcome: OUTCOMES[r.outcome],
    result: r.outcome === 'succeeded' ? r.result : undefined,
    error: scriptErrorToProto(r.error),
    logs: r.logs,
    wallTime: durationFromMs(r.wallTimeMs),
    logsTruncated: r.logsTruncated,
    cpuTime: durationFromMs(r.cpuTimeMs),
  };
}

const EXECUTION_STATES: Record<core.ExecutionState, pb.ExecutionState> = {
  queued: pb.ExecutionState.EXECUTION_STATE_QUEUED,
  running: pb.ExecutionState.EXECUTION_STATE_RUNNING,
  done: pb.ExecutionState.EXECUTION_STATE_DONE,
};

const EXECUTION_KINDS: Record<core.ExecutionKind, pb.ExecutionKind> = {
  execute: pb.ExecutionKind.EXECUTION_KIND_EXECUTE,
  trigger: pb.ExecutionKind.EXECUTION_KIND_TRIGGER,
  handler: pb.ExecutionKind.EXECUTION_KIND_HANDLER,
};

export function executionStateFromProto(state: pb.ExecutionState, field = 'state'): core.ExecutionState | undefined {
  switch (state) {
    case pb.ExecutionState.EXECUTION_STATE_UNSPECIFIED:
      return undefined;
    case pb.ExecutionState.EXECUTION_STATE_QUEUED:
      return 'queued';
    case pb.ExecutionState.EXECUTION_STATE_RUNNING:
      return 'running';
    case pb.ExecutionState.EXECUTION_STATE_DONE:
      return 'done';
    default:
      throw new InvalidArgumentError(`${field} ${String(state)} is not a known ExecutionState`);
  }
}

export function executionToProto(e: core.ExecutionInfo): pb.Execution {
  return {
    id: e.id,
    state: EXECUTION_STATES[e.state],
    kind: EXECUTION_KINDS[e.kind],
    interpreterId: e.interpreterId,
    registrationId: e.registrationId,
    trigger: e.trigger,
    createdAt: e.createdAt,
    startedAt: e.startedAt,
    endedAt: e.endedAt,
    executeResponse: e.executeResult ? executeResponseToProto(e.executeResult) : undefined,
    triggerResponse: e.triggerResults ? { results: e.triggerResults.map(triggerResultToProto) } : undefined,
    background: e.background,
  };
}

const CHANGES: Record<core.RegistrationChange, pb.RegistrationChange> = {
  created: pb.RegistrationChange.REGISTRATION_CHANGE_CREATED,
  released: pb.RegistrationChange.REGISTRATION_CHANGE_RELEASED,
  paused: pb.RegistrationChange.REGISTRATION_CHANGE_PAUSED,
  resumed: pb.RegistrationChange.REGISTRATION_CHANGE_RESUMED,
};

export function watchEventToProto(e: core.WatchEvent): pb.WatchEvent {
  const b = e.body;
  const out: pb.WatchEvent = { time: e.time };
  switch (b.kind) {
    case 'interpreter':
      out.interpreter = interpreterToProto(b.interpreter);
      break;
    case 'registration':
      out.registration = { registration: registrationToProto(b.registration), released: b.released, change: CHANGES[b.change] };
      break;
    case 'run':
      out.run = {
        executionId: b.run.executionId,
        interpreterId: b.run.interpreterId,
        registrationId: b.run.registrationId,
        trigger: b.run.trigger,
        outcome: OUTCOMES[b.run.outcome],
        error: scriptErrorToProto(b.run.error),
        wallTime: durationFromMs(b.run.wallTimeMs),
        cpuTime: durationFromMs(b.run.cpuTimeMs),
      };
      break;
    case 'log':
      out.log = { executionId: b.log.executionId, interpreterId: b.log.interpreterId, registrationId: b.log.registrationId, entry: b.log.entry };
      break;
    case 'dropped':
      out.dropped = b.count;
      break;
  }
  return out;
}

/** One version of a named interpreter; `interpreter_id` is set for the current one only (the contract). */
export function versionToProto(v: core.VersionInfo): pb.InterpreterVersion {
  return {
    version: v.version,
    createdAt: new Date(v.createdAtMs),
    current: v.current,
    interpreterId: v.current ? v.interpreterId : '',
    sourceSha256: v.sourceSha256,
    sourceBytes: v.sourceBytes,
    rolledBackFrom: v.rolledBackFrom ?? 0,
  };
}
