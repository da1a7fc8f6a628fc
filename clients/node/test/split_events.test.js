// A subscriber that keeps `subscription.position` never skips the second
// half of a split event (docs/subscriptions.md, "Keeping your own
// position"). A real server over a SQLite store filled beforehand, serving
// the ledger test plugin (tests/support/plugins.py), which splits a stored
// AccountOpened v2 into AccountOpened v3 + MoneyDeposited, both at the
// stored event's position. The consumer dies while handling the second
// piece; restarted from the position it saved, it gets it (the first again).

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { ChronicleClient } from '../src/chronicle.js';
import { startServer } from './server.js';

const repository = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
let directory;
let server;
let client;

/** book-1: opened at AccountOpened v2 (read as two events), a v1 deposit; book-2: opened likewise, last. */
function fillStore(database) {
  const python = process.env.CHRONICLE_PYTHON ?? path.join(repository, '.venv', 'bin', 'python');
  const script = [
    'import asyncio, sys',
    'from pathlib import Path',
    'from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank',
    'from service.store.sqlite import SqliteStore',
    'from tests.support.events import new_event',
    'def opened(owner):',
    '    payload = bank.AccountOpened(owner=owner).SerializeToString()',
    '    return new_event("bank.v1.AccountOpened", aggregate_type="Book", payload=payload, schema_version=2)',
    'async def fill():',
    '    store = SqliteStore(Path(sys.argv[1]))',
    '    await store.open()',
    '    deposited = bank.MoneyDeposited(amount=3).SerializeToString()',
    '    await store.append("book-1", [',
    '        opened("ann"),',
    '        new_event("bank.v1.MoneyDeposited", aggregate_type="Book", payload=deposited, schema_version=1),',
    '    ], 0)',
    '    await store.append("book-2", [opened("bob")], 0)',
    '    await store.close()',
    'asyncio.run(fill())',
  ].join('\n');
  const made = spawnSync(fs.existsSync(python) ? python : 'python3', ['-c', script, database], { cwd: repository });
  assert.equal(made.status, 0, String(made.stderr));
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-split-events-'));
  const database = path.join(directory, 'events.db');
  fillStore(database);
  server = await startServer({
    args: [
      ...['--database-url', `sqlite:///${database}`, '--anonymous-admin'],
      ...['--no-discover-plugins', '--plugin', 'tests.support.plugins:ledger'],
    ],
  });
  client = new ChronicleClient(server.address, { origin: 'node-tests' });
});

after(async () => {
  client?.close();
  await server?.stop();
  if (directory) fs.rmSync(directory, { recursive: true, force: true });
});

const seen = (event) => `${event.aggregate_id} v${event.version} ${event.event_type}`;
const OPENED = 'book-1 v1 bank.v1.AccountOpened';
const BONUS = 'book-1 v1 bank.v1.MoneyDeposited';
const DEPOSIT = 'book-1 v2 bank.v1.MoneyDeposited';
const BOB_OPENED = 'book-2 v1 bank.v1.AccountOpened';
const BOB_BONUS = 'book-2 v1 bank.v1.MoneyDeposited';

/**
 * Events handled and the position saved after each, until the consumer
 * "dies" on `diesOn` (it stops without saving) or has handled `count`.
 */
async function consume({ afterPosition, diesOn, count }) {
  const subscription = client.subscribe({}, { afterPosition });
  const handled = [];
  let saved = afterPosition;
  for await (const message of subscription.messages) {
    if (message.kind !== 'event') continue;
    handled.push(seen(message.event));
    if (handled.at(-1) === diesOn) break; // died while handling it: nothing saved
    saved = subscription.position; // handled: the position is saved
    if (handled.length === count) break;
  }
  subscription.cancel();
  return { handled, saved };
}

test('a consumer that died on the second piece of a split event gets it after a restart', async () => {
  const first = await consume({ afterPosition: 0, diesOn: BONUS });
  assert.deepEqual(first.handled, [OPENED, BONUS]);
  assert.equal(first.saved, 0); // not the split event's position: its second piece was not handled
  const restarted = await consume({ afterPosition: first.saved, count: 3 });
  assert.deepEqual(restarted.handled, [OPENED, BONUS, DEPOSIT]); // the first piece again, the second not skipped
});

test('the last split event of the log: the position moves to it with its last piece', async () => {
  const [{ position: bob }] = (await client.read('book-2')).slice(-1);
  const everything = await consume({ afterPosition: 0, count: 5 });
  assert.deepEqual(everything.handled, [OPENED, BONUS, DEPOSIT, BOB_OPENED, BOB_BONUS]);
  assert.equal(everything.saved, bob); // the server said the bonus was the last of its position
  const died = await consume({ afterPosition: bob - 1, diesOn: BOB_BONUS });
  assert.deepEqual(died.handled, [BOB_OPENED, BOB_BONUS]);
  assert.equal(died.saved, bob - 1);
});

test('listParked pages through the pieces of a split event, however small its pages', async () => {
  // Every piece parked: five, two pairs of them at one position each.
  await client.createGroup('parked-pieces', { maxDeliveryAttempts: 1 });
  const worker = client.consume('parked-pieces', 'worker-1');
  let parkedHere = 0;
  for await (const delivery of worker.deliveries) {
    delivery.park('parked for the test');
    parkedHere += 1;
    if (parkedHere === 5) break;
  }
  await worker.close();
  let parked = [];
  for (let tries = 0; tries < 200 && parked.length < 5; tries += 1) {
    parked = await client.listParked('parked-pieces', { pageSize: 1000 });
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  assert.equal(parked.length, 5);
  for (const pageSize of [1, 2, 3]) {
    // Paged by position, a page ending between two pieces lost the rest (3 of 5 with pages of 1).
    const paged = await client.listParked('parked-pieces', { pageSize });
    assert.deepEqual(paged.map((p) => p.event_id), parked.map((p) => p.event_id), `pages of ${pageSize}`);
  }
  assert.equal((await client.listParked('parked-pieces', { pageSize: 1, limit: 4 })).length, 4);
});
