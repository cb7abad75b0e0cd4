import fc from 'fast-check';
import { commands, maxInterpreters } from './commands';
import { runScenario, stats } from './harness';

/**
 * Model check of interpreter reference counting: fast-check generates sequences of Execute,
 * Register, Trigger, Release, upgrades, cancellations, timeouts and concurrent batches; each runs
 * against a fresh server and the model in ./model.ts, compared after every step (see ./harness.ts).
 *
 * MODEL_RUNS (default 20) and MODEL_COMMANDS (default 20) size the search; MODEL_SEED (and
 * MODEL_PATH, both printed by fast-check on failure) replay a run; MODEL_VERBOSE=1 prints each
 * command; MODEL_SHRINK=0 reports the first failure without shrinking it.
 */
const env = (name: string): number | undefined => {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return undefined;
  const n = Number(raw);
  if (!Number.isInteger(n)) throw new Error(`${name} must be an integer, got ${JSON.stringify(raw)}`);
  return n;
};

describe('refcount model: random command sequences against a real server', function () {
  // a failure is shrunk by re-running shorter sequences, each on its own server
  this.timeout(30 * 60_000);

  it('keeps interpreters, references by owner and dedicated isolates equal to the model, and zero after releasing all', async () => {
    await fc.assert(
      fc.asyncProperty(maxInterpreters, commands(env('MODEL_COMMANDS') ?? 20), (max, cmds) =>
        runScenario(cmds, { maxInterpreters: max, verbose: process.env.MODEL_VERBOSE === '1' }),
      ),
      {
        numRuns: env('MODEL_RUNS') ?? 20,
        seed: env('MODEL_SEED'),
        path: process.env.MODEL_PATH || undefined,
        endOnFailure: process.env.MODEL_SHRINK === '0',
      },
    );
    if (process.env.MODEL_STATS === '1') console.log(stats);
  });
});
