#!/usr/bin/env node
/**
 * `isogear` as the server package installs it: the command line of @isogear/client, with
 * `serve`, which starts this package's server. Every other command is a client of a running
 * server (see @isogear/client).
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { main, run as runClient, type GlobalOptions, type Io } from '@isogear/client/cli';
import type { IsogearClient } from '@isogear/client';

export { EXIT } from '@isogear/client/cli';
export type { GlobalOptions, Io };

/**
 * `isogear serve`: the server in a child Node.js with --no-node-snapshot; signals are passed on.
 * From a checkout without a build it runs the TypeScript sources through tsx, resolving
 * @isogear/client to its sources too (the `isogear-source` export condition).
 */
export function serve(settings: string[]): Promise<number> {
  const compiled = path.join(__dirname, '..', 'main.js');
  const entry = existsSync(compiled) ? [compiled] : ['--conditions=isogear-source', '--import', 'tsx', path.join(__dirname, '..', 'main.ts')];
  const child = spawn(process.execPath, ['--no-node-snapshot', ...entry, ...settings], { stdio: 'inherit' });
  const forward = (signal: NodeJS.Signals): void => {
    child.kill(signal);
  };
  for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.on(s, forward);
  // `npx isogear serve` runs this through a shell: a SIGTERM to npx ends the shell, and never
  // reaches this process, which is left orphaned. Orphaned, it stops the server as if signalled
  // (a server nobody can stop would otherwise keep its port).
  const parent = process.ppid;
  const orphaned = setInterval(() => {
    if (process.ppid === parent) return;
    clearInterval(orphaned);
    forward('SIGTERM');
  }, 250);
  orphaned.unref();
  return new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      clearInterval(orphaned);
      for (const s of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) process.off(s, forward);
      resolve(code ?? (signal ? 128 : 1));
    });
  });
}

/** Parses `argv` (without node and the script) and runs the command, `serve` included; resolves with the exit code. */
export function run(argv: string[], io: Io, connect?: (g: GlobalOptions) => IsogearClient): Promise<number> {
  return runClient(argv, io, connect, serve);
}

if (require.main === module) main(serve);
