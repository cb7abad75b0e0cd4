import assert from 'node:assert/strict';
import { pb, type TestClient } from './client';
import { succeeded } from './proto';

/** A script that registers `n` handlers on `trigger`, each returning `version`. */
export const versioned = (trigger: string, version: string, n: number, tail = 'export default null;'): string =>
  `for (let i = 0; i < ${n}; i++) gears.register(${JSON.stringify(trigger)}, () => ${JSON.stringify(version)});\n${tail}`;

export interface Observed {
  /** Per loop, in call order: each response's results, or the error the call failed with. */
  perLoop: (pb.TriggerResponse | Error)[][];
  count(): number;
  stop(): Promise<void>;
}

/** Runs `loops` sequential Trigger loops side by side until stopped, recording every answer. */
export function triggerLoops(client: TestClient, trigger: string, loops: number): Observed {
  let stopped = false;
  const perLoop: (pb.TriggerResponse | Error)[][] = [];
  let total = 0;
  const running = Array.from({ length: loops }, async (_, i) => {
    const seen: (pb.TriggerResponse | Error)[] = [];
    perLoop[i] = seen;
    while (!stopped) {
      seen.push(await client.trigger({ trigger }).catch((e: Error) => e));
      total += 1;
    }
  });
  return {
    perLoop,
    count: () => total,
    async stop() {
      stopped = true;
      await Promise.all(running);
    },
  };
}

/** The one version a Trigger response shows, asserting it is a complete, unmixed set. */
export function versionOf(res: pb.TriggerResponse | Error, size: number): string {
  if (res instanceof Error) throw new assert.AssertionError({ message: `a Trigger failed during the upgrade: ${res.message}` });
  assert.equal(res.results.length, size, `a Trigger saw ${res.results.length} registrations, not ${size}`);
  for (const r of res.results) succeeded(r);
  const versions = new Set(res.results.map((r) => r.result));
  const interpreters = new Set(res.results.map((r) => r.interpreterId));
  assert.equal(versions.size, 1, `a Trigger saw a mix of versions: ${[...versions].join(', ')}`);
  assert.equal(interpreters.size, 1, 'a Trigger saw registrations of two interpreters');
  return String(res.results[0].result);
}
