import { createServer, type IncomingMessage, type Server as HttpServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import * as grpc from '@grpc/grpc-js';
import { loadSync } from '@grpc/proto-loader';

/** A span as the receiver got it, whatever the protocol: ids in lowercase hex ('' for no parent). */
export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  parentSpanId: string;
  name: string;
  /** OTLP's SpanKind: 1 internal, 2 server, … */
  kind: number;
  startNs: bigint;
  endNs: bigint;
  attributes: Record<string, string | number | boolean>;
  /** OTLP's status code: 0 unset, 1 ok, 2 error. */
  statusCode: number;
  statusMessage: string;
  resource: Record<string, string | number | boolean>;
  scope: string;
  protocol: 'grpc' | 'http/protobuf' | 'http/json';
}

const definition = loadSync(path.join(__dirname, 'otlp/trace.proto'), { longs: String, enums: Number, defaults: true, oneofs: true });
const service = definition['opentelemetry.proto.collector.trace.v1.TraceService'] as grpc.ServiceDefinition;
const exportMethod = service.Export;

// What proto-loader (camelCase, bytes as Buffer, longs as strings) and OTLP/JSON (camelCase, ids in hex, int64 as strings) give.
interface WireValue {
  stringValue?: string;
  boolValue?: boolean;
  intValue?: string | number;
  doubleValue?: number;
}
interface WireKeyValue {
  key: string;
  value?: WireValue;
}
interface WireSpan {
  traceId: Buffer | string;
  spanId: Buffer | string;
  parentSpanId?: Buffer | string;
  name: string;
  kind?: number;
  startTimeUnixNano?: string | number;
  endTimeUnixNano?: string | number;
  attributes?: WireKeyValue[];
  status?: { code?: number; message?: string };
}
interface WireRequest {
  resourceSpans?: { resource?: { attributes?: WireKeyValue[] }; scopeSpans?: { scope?: { name?: string }; spans?: WireSpan[] }[] }[];
}

/**
 * A real OTLP trace receiver on loopback, for tests and the benchmark: the collector's gRPC
 * TraceService/Export on one port and OTLP/HTTP `POST /v1/traces` (protobuf or JSON, gzip or
 * not) on another. It keeps every span it receives.
 */
export class OtlpReceiver {
  readonly spans: ReceivedSpan[] = [];
  /** Export requests received, per protocol. */
  readonly requests = { grpc: 0, 'http/protobuf': 0, 'http/json': 0 };
  private waiters: (() => void)[] = [];

  private constructor(
    private readonly grpcServer: grpc.Server,
    private readonly httpServer: HttpServer,
    readonly grpcEndpoint: string,
    readonly httpEndpoint: string,
    /** Keep spans (false: count requests only, for the benchmark). */
    private readonly keep: boolean,
  ) {}

  static async start(keep = true): Promise<OtlpReceiver> {
    const grpcServer = new grpc.Server();
    const httpServer = createServer();
    const grpcPort = await new Promise<number>((resolve, reject) =>
      grpcServer.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
    );
    await new Promise<void>((resolve) => httpServer.listen(0, '127.0.0.1', resolve));
    const httpPort = (httpServer.address() as AddressInfo).port;
    const receiver = new OtlpReceiver(grpcServer, httpServer, `http://127.0.0.1:${grpcPort}`, `http://127.0.0.1:${httpPort}`, keep);
    grpcServer.addService(service, {
      Export: (call: grpc.ServerUnaryCall<WireRequest, object>, callback: grpc.sendUnaryData<object>) => {
        receiver.take(call.request, 'grpc');
        callback(null, {});
      },
    });
    httpServer.on('request', (req, res) => {
      void receiver.http(req).then(
        ({ status, type, body }) => {
          res.writeHead(status, { 'content-type': type });
          res.end(body);
        },
        (err: unknown) => {
          res.writeHead(400, { 'content-type': 'text/plain' });
          res.end(String(err));
        },
      );
    });
    return receiver;
  }

  /** The spans of one trace. */
  trace(traceId: string): ReceivedSpan[] {
    return this.spans.filter((s) => s.traceId === traceId);
  }

  /** Resolves once `done()` holds (checked after each export), or rejects after `timeoutMs` saying what arrived. */
  async waitFor(done: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`the receiver did not get ${what} within ${timeoutMs} ms; it has: ${this.spans.map((s) => s.name).join(', ') || 'no span'}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  async close(): Promise<void> {
    this.grpcServer.forceShutdown();
    this.httpServer.closeAllConnections();
    await new Promise<void>((resolve) => this.httpServer.close(() => resolve()));
  }

  private async http(req: IncomingMessage): Promise<{ status: number; type: string; body: string | Buffer }> {
    if (req.method !== 'POST' || req.url !== '/v1/traces') return { status: 404, type: 'text/plain', body: `no ${req.method} ${req.url} here` };
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    let body = Buffer.concat(chunks);
    if (req.headers['content-encoding'] === 'gzip') body = gunzipSync(body);
    const type = req.headers['content-type'] ?? '';
    if (type.startsWith('application/json')) {
      this.take(JSON.parse(body.toString('utf8')) as WireRequest, 'http/json');
      return { status: 200, type: 'application/json', body: '{}' };
    }
    if (type.startsWith('application/x-protobuf')) {
      this.take(exportMethod.requestDeserialize(body) as WireRequest, 'http/protobuf');
      return { status: 200, type: 'application/x-protobuf', body: Buffer.alloc(0) };
    }
    return { status: 415, type: 'text/plain', body: `unsupported content-type ${type}` };
  }

  private take(request: WireRequest, protocol: ReceivedSpan['protocol']): void {
    this.requests[protocol] += 1;
    if (this.keep) {
      for (const rs of request.resourceSpans ?? []) {
        const resource = attributes(rs.resource?.attributes);
        for (const ss of rs.scopeSpans ?? []) {
          for (const s of ss.spans ?? []) {
            this.spans.push({
              traceId: hex(s.traceId),
              spanId: hex(s.spanId),
              parentSpanId: hex(s.parentSpanId),
              name: s.name,
              kind: Number(s.kind ?? 0),
              startNs: BigInt(s.startTimeUnixNano ?? 0),
              endNs: BigInt(s.endTimeUnixNano ?? 0),
              attributes: attributes(s.attributes),
              statusCode: Number(s.status?.code ?? 0),
              statusMessage: s.status?.message ?? '',
              resource,
              scope: ss.scope?.name ?? '',
              protocol,
            });
          }
        }
      }
    }
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w();
  }
}

function hex(id: Buffer | string | undefined): string {
  if (id === undefined) return '';
  return typeof id === 'string' ? id.toLowerCase() : id.toString('hex');
}

function attributes(list: WireKeyValue[] | undefined): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const { key, value } of list ?? []) {
    if (!value) continue;
    if (value.stringValue !== undefined && value.stringValue !== null) out[key] = value.stringValue;
    else if (value.boolValue !== undefined && value.boolValue !== null) out[key] = value.boolValue;
    else if (value.intValue !== undefined && value.intValue !== null) out[key] = Number(value.intValue);
    else if (value.doubleValue !== undefined && value.doubleValue !== null) out[key] = value.doubleValue;
  }
  return out;
}
