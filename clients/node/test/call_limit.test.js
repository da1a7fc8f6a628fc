// A caller's bound on a call (src/call_limit.js) with no server: which error
// a stopped call rejects with. Node's timers may fire a millisecond before
// Date.now() reaches the time they were set for, so the deadline's own
// timer, not the clock, says the deadline passed (a call past its
// timeoutSeconds once rejected CANCELLED, the code of an abort).

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { CallLimit } from '../src/call_limit.js';

const refusal = (code, reason) => Object.assign(new Error(`${code} ${reason}`), { code, reason });

/** Runs `body` with Date.now() held one millisecond short of `limit`'s deadline. */
async function withClockShortOf(limit, body) {
  const realNow = Date.now;
  Date.now = () => limit.deadline - 1;
  try {
    return await body();
  } finally {
    Date.now = realNow;
  }
}

test('a deadline whose timer fires before the clock reaches it rejects DEADLINE_EXCEEDED, not CANCELLED', async () => {
  const limit = new CallLimit({ timeoutSeconds: 0.05 }, refusal);
  await withClockShortOf(limit, () =>
    assert.rejects(limit.race(new Promise(() => {})), (error) => error.code === 'DEADLINE_EXCEEDED'),
  );
});

test('a sleep cut by the deadline rejects DEADLINE_EXCEEDED, and an abort CANCELLED', async () => {
  const limit = new CallLimit({ timeoutSeconds: 0.05 }, refusal);
  await withClockShortOf(limit, () =>
    assert.rejects(limit.sleep(5), (error) => error.code === 'DEADLINE_EXCEEDED'),
  );
  const aborting = new AbortController();
  const aborted = new CallLimit({ signal: aborting.signal, timeoutSeconds: 5 }, refusal);
  setTimeout(() => aborting.abort(), 10);
  await assert.rejects(aborted.sleep(5), (error) => error.code === 'CANCELLED');
});

test('a call not yet stopped goes on; one past its deadline by the clock is stopped', () => {
  const limit = new CallLimit({ timeoutSeconds: 0.05 }, refusal);
  assert.equal(limit.stopped(), null);
  const realNow = Date.now;
  Date.now = () => limit.deadline;
  try {
    assert.equal(limit.stopped()?.code, 'DEADLINE_EXCEEDED');
  } finally {
    Date.now = realNow;
  }
});
