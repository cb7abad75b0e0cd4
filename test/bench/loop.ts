/** One figure: `concurrency` loops calling `fn` back to back for a set time, after a warm-up. */
export interface LoopFigure {
  concurrency: number;
  calls: number;
  perSecond: number;
  medianMs: number;
  p99Ms: number;
}

const quantile = (sorted: number[], q: number): number => sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))] ?? NaN;

export async function closedLoop(concurrency: number, seconds: number, fn: () => Promise<unknown>, warmupSeconds = Math.min(1, seconds / 2)): Promise<LoopFigure> {
  const run = async (untilMs: number, times?: number[]): Promise<void> => {
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < untilMs) {
          const t = performance.now();
          await fn();
          times?.push(performance.now() - t);
        }
      }),
    );
  };
  await run(performance.now() + warmupSeconds * 1000);
  const times: number[] = [];
  const start = performance.now();
  await run(start + seconds * 1000, times);
  const elapsed = (performance.now() - start) / 1000;
  times.sort((a, b) => a - b);
  return { concurrency, calls: times.length, perSecond: times.length / elapsed, medianMs: quantile(times, 0.5), p99Ms: quantile(times, 0.99) };
}
