/**
 * @isogear/client: the typed client for isogear's gRPC API (`createClient`), its errors
 * (`IsogearRpcError`) and the generated messages and service (`pb`). The `isogear` command line is
 * this package's bin; `@isogear/client/cli` exports it for the server package, which adds `serve`.
 */
export { createClient, IsogearRpcError, pb } from './client';
export type {
  CallOptions,
  ClientOptions,
  ExecuteInit,
  ExecutionStateName,
  IsogearClient,
  Json,
  LanguageName,
  LimitsInit,
  ListExecutionsInit,
  ListInterpretersInit,
  ListRegistrationsInit,
  Mode,
  PauseInit,
  RegisterInit,
  ReleaseInit,
  TriggerInit,
  WaitExecutionInit,
  Watch,
  WatchInit,
} from './client';
export type { Duration } from './gen/google/protobuf/duration';
