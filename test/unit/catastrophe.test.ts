import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { createLogger } from '../../src/logger';
import { exitOnCatastrophe } from '../../src/server';

describe('onCatastrophicError: log at fatal, then abort the process', () => {
  it('writes one fatal line naming the error before aborting', () => {
    const lines: Record<string, unknown>[] = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, cb) {
        for (const l of chunk.toString().split('\n')) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
        cb();
      },
    });
    const events: string[] = [];
    const logger = createLogger('info', sink);
    const handler = exitOnCatastrophe(logger, () => events.push(`abort after ${lines.length} line(s)`));
    handler('Fatal JavaScript out of memory');
    assert.deepEqual(events, ['abort after 1 line(s)'], 'the line is written before the abort');
    assert.equal(lines[0].level, 'fatal');
    assert.equal(lines[0].message, 'Fatal JavaScript out of memory');
    assert.match(String(lines[0].msg), /lost control of an isolate/);
  });
});
