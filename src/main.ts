/**
 * Process entry. Before anything loads isolated-vm it checks what the server runs on, and refuses
 * with one line and exit code 2: a Node.js older than the supported one, a Node.js started without
 * `--no-node-snapshot`, an isolated-vm addon without isogear's patch or built for another Node.js.
 * Only these modules load first (node: built-ins), so the line comes out on any Node.js.
 */
import { engineProblem, nodeProblem } from './sandbox/engineCheck';

function preflight(): string | undefined {
  const node = nodeProblem();
  if (node) return node;
  // isolated-vm crashes Node >= 20 unless the startup snapshot is off; refuse to run without it.
  const flags = [...process.execArgv, ...(process.env.NODE_OPTIONS ?? '').split(/\s+/)];
  if (!flags.includes('--no-node-snapshot')) return 'run Node with --no-node-snapshot (isolated-vm requires it); `npm start` does';
  return engineProblem();
}

const problem = preflight();
if (problem) {
  process.stderr.write(`isogear: ${problem}\n`);
  process.exitCode = 2;
} else {
  void import('./serve.js').then((m) => m.serveOrExit());
}
