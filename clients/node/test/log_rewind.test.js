// A subscriber never skips when the log goes back (docs/subscriptions.md,
// "When the log goes back"). Real server processes over one SQLite file: a
// copy is taken at position 5, the log grows to 10 and a subscriber reads
// it all, keeping `position` and `eventId`; the copy is restored and written
// on (6..12 are other events now). Resuming with the id is refused with a
// LogRewoundError; without it (a position kept alone) it goes on unchecked,
// as before; on an unchanged log, with the id, it goes on. Restored and not
// written on (its end, 5, below the position kept): with the id, the same
// LogRewoundError; without it, INVALID_ARGUMENT POSITION_BEYOND_END.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ChronicleClient, ChronicleError, LogRewoundError } from '../src/chronicle.js';
import { startServer } from './server.js';

let directory;
let database;

before(() => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-log-rewind-'));
  database = path.join(directory, 'events.db');
});

after(() => {
  fs.rmSync(directory, { recursive: true, force: true });
});

/** A server on the SQLite file (`file`, default `database`), `body(client)`, then the server stopped (its file closed). */
async function serving(body, file = database) {
  const server = await startServer({ args: ['--database-url', `sqlite:///${file}`, '--anonymous-admin'] });
  const client = new ChronicleClient(server.address, { origin: 'node-tests' });
  try {
    return await body(client);
  } finally {
    client.close();
    await server.stop();
  }
}

/** The database file (and its WAL, if any), copied from `from` to `to`. */
function copyDatabase(from, to) {
  for (const suffix of ['', '-wal', '-shm']) {
    fs.rmSync(to + suffix, { force: true });
    if (fs.existsSync(from + suffix)) fs.copyFileSync(from + suffix, to + suffix);
  }
}

async function account(client, aggregateId, deposits, { open = true } = {}) {
  if (open) await client.submit(aggregateId, 'bank.v1.OpenAccount', { owner: 'ann' });
  for (let amount = 1; amount <= deposits; amount += 1) {
    await client.submit(aggregateId, 'bank.v1.Deposit', { amount });
  }
}

/** The first `count` events of `subscription`, then cancelled. */
async function take(subscription, count) {
  const events = [];
  for await (const message of subscription.messages) {
    if (message.kind === 'event') events.push(message.event);
    if (events.length === count) break;
  }
  subscription.cancel();
  return events;
}

test('a resume after a restore written on since is refused with LogRewoundError; unchecked without an id', async () => {
  await serving((client) => account(client, 'acc-1', 4)); // positions 1..5
  copyDatabase(database, path.join(directory, 'backup.db'));
  const kept = await serving(async (client) => {
    await account(client, 'acc-1', 5, { open: false }); // 6..10: lost in the restore
    const subscription = client.subscribe({});
    const events = await take(subscription, 10);
    assert.deepEqual(
      events.map((e) => e.position),
      [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
    );
    assert.equal(subscription.eventId, events[9].event_id);
    return { position: subscription.position, eventId: subscription.eventId };
  });
  assert.equal(kept.position, 10);

  copyDatabase(path.join(directory, 'backup.db'), database); // the restore
  await serving(async (client) => {
    await account(client, 'acc-2', 6); // 6..12: other events
    const resumed = client.subscribe({}, { afterPosition: kept.position, afterEventId: kept.eventId });
    await assert.rejects(take(resumed, 1), (error) => {
      assert.ok(error instanceof LogRewoundError && error instanceof ChronicleError);
      assert.equal(error.name, 'LogRewoundError');
      assert.equal(error.code, 'FAILED_PRECONDITION');
      assert.equal(error.reason, 'LOG_REWOUND');
      assert.deepEqual(error.metadata, { position: '10', log_head: '12' });
      return true;
    });
    // A position kept alone (an older subscriber) is served as before: unchecked.
    const unchecked = await take(client.subscribe({}, { afterPosition: kept.position }), 2);
    assert.deepEqual(
      unchecked.map((e) => e.position),
      [11, 12],
    );
    // On this log as it is now, a resume with the id goes on.
    const reader = client.subscribe({});
    await take(reader, 12);
    const again = client.subscribe({}, { afterPosition: reader.position, afterEventId: reader.eventId });
    await client.submit('acc-2', 'bank.v1.Deposit', { amount: 7 });
    const [next] = await take(again, 1);
    assert.equal(next.position, 13);
  });
});

test('a resume beyond the end of a restored log is refused with LogRewoundError; POSITION_BEYOND_END without an id', async () => {
  const file = path.join(directory, 'beyond.db');
  const backup = path.join(directory, 'beyond-backup.db');
  await serving((client) => account(client, 'acc-1', 4), file); // positions 1..5
  copyDatabase(file, backup);
  const kept = await serving(async (client) => {
    await account(client, 'acc-1', 5, { open: false }); // 6..10: lost in the restore
    const subscription = client.subscribe({});
    await take(subscription, 10);
    return { position: subscription.position, eventId: subscription.eventId };
  }, file);
  assert.equal(kept.position, 10);

  copyDatabase(backup, file); // the restore, not written on since: its end is 5
  await serving(async (client) => {
    const resumed = client.subscribe({}, { afterPosition: kept.position, afterEventId: kept.eventId });
    await assert.rejects(take(resumed, 1), (error) => {
      assert.ok(error instanceof LogRewoundError, `${error}`);
      assert.equal(error.code, 'FAILED_PRECONDITION');
      assert.equal(error.reason, 'LOG_REWOUND');
      assert.deepEqual(error.metadata, { position: '10', log_head: '5' });
      return true;
    });
    // A position kept alone: nothing says it came from a log, bad input as before.
    await assert.rejects(take(client.subscribe({}, { afterPosition: kept.position }), 1), (error) => {
      assert.ok(error instanceof ChronicleError && !(error instanceof LogRewoundError), `${error}`);
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.equal(error.reason, 'POSITION_BEYOND_END');
      assert.deepEqual(error.metadata, { after_position: '10', log_head: '5' });
      return true;
    });
  }, file);
});
