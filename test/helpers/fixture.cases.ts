/**
 * Not a test suite of its own: test/integration/fixture.test.ts runs this file in a child mocha
 * and checks how each case ends. Each case is its own describe block, since a failing afterEach
 * stops the rest of its block.
 */
import assert from 'node:assert/strict';
import { leavesRegistrations, useTestServer } from './fixture';

const REGISTER = "gears.register('case.t', () => 1);";

describe('case: releases what it registered', () => {
  const server = useTestServer();
  it('runs', async () => {
    const t = server();
    const res = await t.client.execute({ source: REGISTER });
    await t.client.release({ interpreterId: res.interpreterId });
  });
});

describe('case: forgets a registration', () => {
  const server = useTestServer();
  it('runs', async () => {
    await server().client.execute({ source: REGISTER });
  });
});

describe('case: leaves registrations on purpose', () => {
  const server = useTestServer();
  it('runs', async () => {
    const t = server();
    leavesRegistrations(t);
    await t.client.execute({ source: REGISTER });
    await t.client.register({ trigger: 'case.u', source: 'export default () => 2;' });
  });
});

describe('case: declares leavesRegistrations but leaves none', () => {
  const server = useTestServer();
  it('runs', async () => {
    const t = server();
    leavesRegistrations(t);
    const res = await t.client.execute({ source: REGISTER });
    await t.client.release({ interpreterId: res.interpreterId });
  });
});

describe('case: fails while holding a registration', () => {
  const server = useTestServer();
  it('runs', async () => {
    await server().client.execute({ source: REGISTER });
    assert.fail('the test’s own failure');
  });
});
