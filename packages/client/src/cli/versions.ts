/**
 * `isogear versions NAME` and `isogear rollback NAME VERSION`: ListVersions as a table (or JSON),
 * and Rollback, answered as `exec` answers an Execute.
 */
import type { Command } from 'commander';
import { pb, type IsogearClient } from '../client';
import { age, EXIT, reportExecute, table, UsageError, type GlobalOptions, type Io } from './common';

type WithClient = (fn: (client: IsogearClient, g: GlobalOptions) => Promise<number>) => Promise<void>;

export function addVersionCommands(root: Command, io: Io, withClient: WithClient): void {
  root
    .command('versions')
    .description('list the versions of a named interpreter, oldest first (* marks the current one)')
    .argument('<name>', 'the interpreter name')
    .addHelpText('after', '\nColumns: VERSION (* current), CREATED (ago), INTERPRETER (the current one), FROM (the version a rollback re-created), SOURCE (sha256, first 12 hex, and bytes).\n\nExamples:\n  $ isogear versions orders\n  $ isogear --json versions orders')
    .action(async (name: string) => {
      await withClient(async (client, g) => {
        const res = await client.listVersions(name);
        if (g.json) {
          io.out(`${JSON.stringify(pb.ListVersionsResponse.toJSON(res))}\n`);
          return EXIT.ok;
        }
        const rows = res.versions.map((v) => [
          `${v.version}${v.current ? '*' : ''}`,
          age(v.createdAt),
          v.interpreterId || '-',
          v.rolledBackFrom ? String(v.rolledBackFrom) : '-',
          `${v.sourceSha256.slice(0, 12)} ${v.sourceBytes} B`,
        ]);
        io.out(table(['VERSION', 'CREATED', 'INTERPRETER', 'FROM', 'SOURCE'], rows));
        return EXIT.ok;
      });
    });

  root
    .command('rollback')
    .description("re-create a version of a named interpreter in a new one and move the name to it (as an upgrade does)")
    .argument('<name>', 'the interpreter name')
    .argument('<version>', 'the version to re-create (see isogear versions NAME)')
    .addHelpText('after', '\nPrints the new version as JSON ({"version":N,"rolledBackFrom":V}) and its registrations on stderr; a replay that fails changes nothing and exits 1.\n\nExamples:\n  $ isogear versions orders\n  $ isogear rollback orders 3')
    .action(async (name: string, versionText: string) => {
      const version = Number(versionText);
      if (!/^\d+$/.test(versionText) || !Number.isSafeInteger(version) || version < 1 || version > 0xffffffff) {
        throw new UsageError(`VERSION must be a whole number from 1 (see isogear versions ${name}), got ${JSON.stringify(versionText)}`);
      }
      await withClient(async (client, g) => {
        const res = await client.rollback(name, version);
        if (g.json) io.out(`${JSON.stringify(pb.ExecuteResponse.toJSON(res))}\n`);
        return reportExecute(io, res, g.json);
      });
    });
}
