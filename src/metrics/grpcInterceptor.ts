import { ServerInterceptingCall, status, type ServerInterceptor } from '@grpc/grpc-js';
import type { GrpcType, IsogearMetrics } from './metrics';

/**
 * The one place gRPC server metrics are recorded (grpc-ecosystem names), for every service on
 * the server. A call is counted as handled exactly once: when its status is sent, or, if the
 * client cancelled or disconnected first, as CANCELLED.
 */
export function metricsInterceptor(metrics: IsogearMetrics): ServerInterceptor {
  return (method, call) => {
    const slash = method.path.lastIndexOf('/');
    const service = method.path.slice(1, slash);
    const name = method.path.slice(slash + 1);
    const type: GrpcType = method.requestStream
      ? method.responseStream
        ? 'bidi_stream'
        : 'client_stream'
      : method.responseStream
        ? 'server_stream'
        : 'unary';
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
