/**
 * The isogear package: the typed client for its gRPC API. (The server is `dist/main.js`, run by
 * `npm start` or `isogear serve`.)
 */
export { createClient, IsogearRpcError, pb } from './client';
export type {
  CallOptions,
  ClientOptions,
  ExecuteInit,
  ExecutionStateName,
  IsogearClient,
  Json,
  LimitsInit,
  ListExecutionsInit,
  ListInterpretersInit,
  ListRegistrationsInit,
  Mode,
  RegisterInit,
  ReleaseInit,
  TriggerInit,
  WaitExecutionInit,
  Watch,
  WatchInit,
} from './client';
