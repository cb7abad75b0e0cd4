/**
 * `npm run bench`: latency of single calls from a grpc-js client against a real server on
 * loopback, each beside the no-op gRPC call (health Check) for scale. Never part of `npm test`.
 * BENCH_CALLS (default 1000) calls per figure after BENCH_WARMUP (default 200) warm-up calls.
 * Prints a table and writes bench-results/latency.json.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { loadConfig } from '../../src/config';
import { createLogger } from '../../src/logger';
import { startServer } from '../../src/server';
import { pb, TestClient } from '../helpers/client';

const CALLS = Number(process.env.BENCH_CALLS ?? 1000);
const WARMUP = Number(process.env.BENCH_WARMUP ?? 200);

const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];

async function measure(name: string, call: () => Promise<unknown>): Promise<{ name: string; medianMs: number; p99Ms: number }> {
  for (let i = 0; i < WARMUP; i++) await call();
  const times: number[] = [];
  for (let i = 0; i < CALLS; i++) {
    const t = performance.now();
    await call();
    times.push(performance.now() - t);
  }
  times.sort((a, b) => a - b);
  return { name, medianMs: quantile(times, 0.5), p99Ms: quantile(times, 0.99) };
}

async function main(): Promise<void> {
  const config = loadConfig({ ISOGEAR_GRPC_ADDRESS: '127.0.0.1:0', ISOGEAR_METRICS_ADDRESS: '127.0.0.1:0', ISOGEAR_LOG_LEVEL: 'warn' });
  const server = await startServer(config, createLogger(config.logLevel));
  const client = new TestClient(server.grpcAddress);
  const source = 'export default (a) => a + 1';
  const reg = await client.register({ trigger: 'bench', source: 'export default (p) => p', mode: pb.IsolationMode.ISOLATION_MODE_SHARED });
  const rows = [
    await measure('health Check (no-op gRPC call)', () => client.healthCheck()),
    await measure('Execute, shared mode', () => client.execute({ source, args: 1, mode: pb.IsolationMode.ISOLATION_MODE_SHARED })),
    await measure('Execute, isolate mode', () => client.execute({ source, args: 1, mode: pb.IsolationMode.ISOLATION_MODE_ISOLATE })),
    await measure('Trigger, one warm shared registration', () => client.trigger({ trigger: 'bench', payload: 1 })),
  ];
  await client.release({ registrationId: reg.registration?.id });
  const noop = rows[0].medianMs;
  console.log(`\n${CALLS} sequential calls each, after ${WARMUP} warm-up calls\n`);
  console.log('figure'.padEnd(40) + 'median ms'.padStart(11) + 'p99 ms'.padStart(10) + '× no-op'.padStart(10));
  for (const r of rows) {
    console.log(r.name.padEnd(40) + r.medianMs.toFixed(3).padStart(11) + r.p99Ms.toFixed(3).padStart(10) + (r.medianMs / noop).toFixed(2).padStart(10));
  }
  mkdirSync('bench-results', { recursive: true });
  writeFileSync('bench-results/latency.json', `${JSON.stringify({ calls: CALLS, warmup: WARMUP, rows }, null, 2)}\n`);
  client.close();
  await server.shutdown(2000);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exit(1);
});
