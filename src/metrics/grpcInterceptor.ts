import { ServerInterceptingCall, status, type ServerInterceptor } from '@grpc/grpc-js';
import type { GrpcType, IsogearMetrics } from './metrics';

/** A method's grpc-ecosystem labels, from its path (`/package.Service/Method`) and streaming. */
export function rpcLabels(m: { path: string; requestStream: boolean; responseStream: boolean }): { type: GrpcType; service: string; method: string } {
  const slash = m.path.lastIndexOf('/');
  const type: GrpcType = m.requestStream ? (m.responseStream ? 'bidi_stream' : 'client_stream') : m.responseStream ? 'server_stream' : 'unary';
  return { type, service: m.path.slice(1, slash), method: m.path.slice(slash + 1) };
}

/**
 * The one place gRPC server metrics are recorded (grpc-ecosystem names), for every service on
 * the server. A call is counted as handled exactly once: when its status is sent, or, if the
 * client cancelled or disconnected first, as CANCELLED.
 */
export function metricsInterceptor(metrics: IsogearMetrics): ServerInterceptor {
  return (method, call) => {
    const { type, service, method: name } = rpcLabels(method);
    const started = performance.now();
    let done = false;
    const finish = (code: status): void => {
      if (done) return;
      done = true;
      metrics.rpcHandled(type, service, name, status[code] ?? String(code), (performance.now() - started) / 1000);
    };
    metrics.rpcStarted(type, service, name);
    return new ServerInterceptingCall(call, {
      start(next) {
        next({
          onCancel() {
            finish(status.CANCELLED);
          },
        });
      },
      sendStatus(st, next) {
        try {
          next(st);
        } finally {
          finish(st.code);
        }
      },
    });
  };
}
