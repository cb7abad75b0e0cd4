/**
 * `isogear pause` and `isogear resume`: PauseRegistrations and ResumeRegistrations with one
 * selector (a registration id, --interpreter or --trigger). Prints the ids the call changed, one
 * per line (nothing when all were so already), or the response as JSON.
 */
import type { Command } from 'commander';
import { pb, type IsogearClient, type PauseInit } from '../client';
import { EXIT, UsageError, type GlobalOptions, type Io } from './common';

type WithClient = (fn: (client: IsogearClient, g: GlobalOptions) => Promise<number>) => Promise<void>;

export function addPauseCommands(root: Command, io: Io, withClient: WithClient): void {
  for (const [verb, paused] of [
    ['pause', true],
    ['resume', false],
  ] as const) {
    root
      .command(verb)
      .description(
        paused
          ? 'pause registrations: Trigger skips them until they are resumed (durable, on every replica)'
          : 'resume paused registrations: the next Trigger runs them again',
      )
      .argument('[registration-id]', 'one registration (reg_...)')
      .option('--interpreter <id>', "every registration of this interpreter")
      .option('--trigger <name>', 'every registration bound to this trigger')
      .addHelpText('after', `\nGive exactly one of them. Prints the registrations this changed, one per line.\n\nExamples:\n  $ isogear ${verb} reg_...\n  $ isogear ${verb} --trigger orders.created\n  $ isogear ${verb} --interpreter itp_...`)
      .action(async (registrationId: string | undefined, o: { interpreter?: string; trigger?: string }) => {
        const given: PauseInit[] = [];
        if (registrationId) given.push({ registrationId });
        if (o.interpreter) given.push({ interpreterId: o.interpreter });
        if (o.trigger) given.push({ trigger: o.trigger });
        if (given.length !== 1) throw new UsageError('give one of: a registration id, --interpreter ID, --trigger NAME');
        await withClient(async (client, g) => {
          const res = paused ? await client.pauseRegistrations(given[0]) : await client.resumeRegistrations(given[0]);
          if (g.json) io.out(`${JSON.stringify(pb.PauseRegistrationsResponse.toJSON(res))}\n`);
          else for (const id of res.registrationIds) io.out(`${id}\n`);
          return EXIT.ok;
        });
      });
  }
}
