// An event of a type neither the server's plugins nor this client know (a
// retired plugin's, an import's) reaches a Node.js subscriber and reader as
// stored, its type name and bytes, and the stream goes on
// (docs/subscriptions.md, "Events the server cannot decode"). A real server
// over a SQLite store filled beforehand, serving only the bank plugin.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { ChronicleClient, services, unpack } from '../src/chronicle.js';
import { startServer } from './server.js';

const repository = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const LEGACY_BYTES = Buffer.from('0a0463617264', 'hex');
let directory;
let server;
let client;

/** acc-1: opened, a legacy.v1.CardIssued (no plugin declares it), a deposit of 7. */
function fillStore(database) {
  const python = process.env.CHRONICLE_PYTHON ?? path.join(repository, '.venv', 'bin', 'python');
  const script = [
    'import asyncio, sys',
    'from pathlib import Path',
    'from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank',
    'from service.store.sqlite import SqliteStore',
    'from tests.support.events import new_event',
    'async def fill():',
    '    store = SqliteStore(Path(sys.argv[1]))',
    '    await store.open()',
    '    opened = bank.AccountOpened(owner="ann").SerializeToString()',
    '    deposited = bank.MoneyDeposited(amount=7).SerializeToString()',
    '    await store.append("acc-1", [',
    '        new_event("bank.v1.AccountOpened", aggregate_type="Account", payload=opened),',
    `        new_event("legacy.v1.CardIssued", aggregate_type="Account", payload=bytes.fromhex("${LEGACY_BYTES.toString('hex')}")),`,
    '        new_event("bank.v1.MoneyDeposited", aggregate_type="Account", payload=deposited),',
    '    ], 0)',
    '    await store.close()',
    'asyncio.run(fill())',
  ].join('\n');
  const made = spawnSync(fs.existsSync(python) ? python : 'python3', ['-c', script, database], { cwd: repository });
  assert.equal(made.status, 0, String(made.stderr));
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-unknown-types-'));
  const database = path.join(directory, 'events.db');
  fillStore(database);
  server = await startServer({
    args: ['--database-url', `sqlite:///${database}`, '--no-discover-plugins', '--plugin', 'domain_plugins.bank_account'],
  });
  client = new ChronicleClient(server.address, { origin: 'node-tests' });
});

after(async () => {
  client?.close();
  await server?.stop();
  fs.rmSync(directory, { recursive: true, force: true });
});

test('a subscriber gets an event of an unknown type as stored and goes on', async () => {
  const subscription = client.subscribe();
  const events = [];
  for await (const message of subscription.messages) {
    if (message.kind === 'event') events.push(message.event);
    if (events.length === 3) break;
  }
  assert.deepEqual(
    events.map((e) => e.event_type),
    ['bank.v1.AccountOpened', 'legacy.v1.CardIssued', 'bank.v1.MoneyDeposited'],
  );
  assert.deepEqual(events[1].payload, { '@type': 'legacy.v1.CardIssued', value: LEGACY_BYTES });
  assert.equal(events[2].payload.amount, 7);
});

test('an event without a payload (a forgotten aggregate, redacted) decodes with a null payload', () => {
  // An Event with only its event_id (field 1, "e-1") set: no payload at all, as a redacted one comes.
  const bytes = Buffer.from([0x0a, 0x03, 0x65, 0x2d, 0x31]);
  const event = services.EventService.ReadAggregate.responseDeserialize(bytes);
  assert.equal(event.payload, null);
  assert.equal(unpack(event.payload), null);
});
