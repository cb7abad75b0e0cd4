import assert from 'node:assert/strict';
import { parseRunTuple } from '../../src/sandbox/Sandbox';
import { NO_EVENTS_REDIS, scheduleProblem, sourceCheck, specProblem, streamProblem } from '../../src/core/sources/rules';

describe('schedule and stream rules', () => {
  it('takes five or six cron fields, nicknames and IANA time zones', () => {
    for (const cron of ['* * * * *', '*/10 * * * * *', '0 9 * * 1-5', '0 0 1 JAN *', '@hourly', '0 0 L * *']) assert.equal(scheduleProblem(cron, ''), undefined, cron);
    assert.equal(scheduleProblem('0 9 * * *', 'Europe/Paris'), undefined);
    assert.equal(scheduleProblem('0 9 * * *', 'UTC'), undefined);
  });

  it('says why a cron expression or time zone is refused', () => {
    const cases: [string, string, RegExp][] = [
      ['', '', /the cron expression is invalid: it is empty/],
      ['   ', '', /it is empty/],
      ['* * * *', '', /the cron expression "\* \* \* \*" is invalid: .*five, six/],
      ['* * * * * * *', '', /is invalid: .*5 or 6 parts/],
      ['61 * * * *', '', /is invalid: Invalid value for minute: 61/],
      ['0 0 31 2 *', '', /is invalid: it never matches a date/],
      ['x'.repeat(300), '', /longer than 256 characters/],
      ['* * * * *', 'Mars/Olympus', /options.timezone "Mars\/Olympus" is not an IANA time zone/],
    ];
    for (const [cron, tz, why] of cases) assert.match(scheduleProblem(cron, tz) ?? 'accepted', why, cron);
  });

  it('checks stream keys and group names, and needs an events Redis for consumers', () => {
    assert.equal(streamProblem('orders', 'isogear'), undefined);
    assert.equal(streamProblem('tenant:a/orders ü', 'billing.v2'), undefined);
    assert.match(streamProblem('', 'g') ?? '', /stream must be a Redis key of 1–256 characters/);
    assert.match(streamProblem('a\nb', 'g') ?? '', /without control characters/);
    assert.match(streamProblem('s', '') ?? '', /options.group must be/);
    assert.match(streamProblem('isogear:changes', 'g') ?? '', /keys starting with "isogear:" are isogear's own/);
    assert.match(streamProblem('s', 'bad group') ?? '', /options.group must be/);
    const check = sourceCheck(false);
    assert.equal(check('stream', 'orders', 'isogear'), NO_EVENTS_REDIS);
    assert.equal(sourceCheck(true)('stream', 'orders', 'isogear'), '');
    assert.equal(check('schedule', '* * * * *', ''), '');
    assert.match(check('teleport', 'a', 'b'), /unknown registration kind "teleport"/);
  });

  it('checks what the sandbox reported again: a spec of each kind', () => {
    assert.equal(specProblem({ id: 'r', trigger: 'orders', description: '' }, false), undefined);
    assert.match(specProblem({ id: 'r', trigger: 'bad name', description: '' }, false) ?? '', /not a valid trigger name/);
    assert.match(specProblem({ id: 'r', kind: 'schedule', trigger: 'x', description: '', cron: '* * * * *' }, false) ?? '', /tampered/);
    assert.match(specProblem({ id: 'r', kind: 'schedule', trigger: '', description: '', cron: 'nope' }, false) ?? '', /is invalid/);
    assert.equal(specProblem({ id: 'r', kind: 'stream', trigger: '', description: '', stream: 's', group: 'g' }, true), undefined);
    assert.equal(specProblem({ id: 'r', kind: 'stream', trigger: '', description: '', stream: 's', group: 'g' }, false), NO_EVENTS_REDIS);
  });

  it('a run tuple carries each registration kind; an unknown kind is a malformed tuple', () => {
    const tuple = (regs: unknown[]): unknown => ({ t: [true, 'null', [], false, regs, null, ''] });
    const parsed = parseRunTuple(tuple([['reg_1', 'orders', 'd'], ['reg_2', '', '', 'schedule', '* * * * *', 'UTC'], ['reg_3', '', '', 'stream', 'orders', 'isogear']]), 1000);
    assert.deepEqual(parsed.registrations, [
      { id: 'reg_1', trigger: 'orders', description: 'd', kind: 'trigger' },
      { id: 'reg_2', trigger: '', description: '', kind: 'schedule', cron: '* * * * *', timezone: 'UTC' },
      { id: 'reg_3', trigger: '', description: '', kind: 'stream', stream: 'orders', group: 'isogear' },
    ]);
    assert.throws(() => parseRunTuple(tuple([['reg_1', '', '', 'teleport', 'a', 'b']]), 1000), /unknown kind/);
  });
});
