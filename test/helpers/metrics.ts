import type { TestServer } from './server';

/** One scrape of /metrics: sample key (`name{a="x",b="y"}`, labels sorted) → value. */
export type Samples = Map<string, number>;

export function sampleKey(name: string, labels: Record<string, string> = {}): string {
  const parts = Object.keys(labels)
    .sort()
    .map((k) => `${k}="${labels[k]}"`);
  return parts.length ? `${name}{${parts.join(',')}}` : name;
}

/** Scrapes the server's metrics endpoint and parses the text exposition format. */
export async function scrape(t: TestServer): Promise<Samples> {
  const res = await fetch(`http://${t.server.metricsAddress}/metrics`);
  if (res.status !== 200) throw new Error(`/metrics answered ${res.status}`);
  const out: Samples = new Map();
  for (const line of (await res.text()).split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    out.set(sampleKey(m[1], labels), Number(m[3]));
  }
  return out;
}

/** The value of one sample, 0 when the series does not exist. */
export function value(samples: Samples, name: string, labels: Record<string, string> = {}): number {
  return samples.get(sampleKey(name, labels)) ?? 0;
}

/** How much each listed sample moved between two scrapes. */
export function delta(before: Samples, after: Samples, name: string, labels: Record<string, string> = {}): number {
  return value(after, name, labels) - value(before, name, labels);
}
