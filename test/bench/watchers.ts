/**
 * The benchmark's watchers, in a process of their own (as watchers are: a terminal's `isogear
 * tail`, a dashboard's backend): `watchers.ts ADDRESS N` opens N Watch streams (no logs), prints
 * `ready` once all are open, reads every event as fast as it comes, and on SIGTERM prints how
 * many it read.
 */
import { TestClient } from '../helpers/client';

const client = new TestClient(process.argv[2]);
const watches = Array.from({ length: Number(process.argv[3]) }, () => client.watch({}));
let events = 0;
for (const w of watches) {
  void (async () => {
    for await (const e of w) if (e) events += 1;
  })();
}
void Promise.all(watches.map((w) => w.ready)).then(() => console.log('ready'));
process.on('SIGTERM', () => {
  console.log(`events ${events}`);
  process.exit(0);
});
