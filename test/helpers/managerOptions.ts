import type { ManagerOptions } from '../../src/core/options';

/** Options for an InterpreterManager used as a library in unit tests; spread and override. */
export const MANAGER_OPTIONS: ManagerOptions = {
  defaultMode: 'isolate',
  defaultTimeoutMs: 2000,
  maxTimeoutMs: 10_000,
  defaultMemoryMb: 64,
  maxMemoryMb: 256,
  sharedIsolates: 2,
  sharedIsolateMemoryMb: 128,
  maxInterpreters: 100,
  maxSourceBytes: 1024 * 1024,
  maxLogBytes: 64 * 1024,
  maxValueBytes: 1024 * 1024,
  maxRegistrationsPerInterpreter: 100,
};
