// The Node client's batches and reads take what the Python client's take:
// submitBatch (all or none, retried whole, a dry run), read's limit,
// backwards, origin and minPosition, getAggregate's atVersion, atTime and
// minPosition. Against a real server process (the bank example), and a
// stand-in for a read with a limit broken mid-way.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, ChronicleError, pack, services } from '../src/chronicle.js';
import { startServer } from './server.js';
import { standInServer } from './stand_in.js';

let server;
let client;

before(async () => {
  server = await startServer();
  client = new ChronicleClient(server.address, { origin: 'node-tests' });
});

after(async () => {
  client?.close();
  await server?.stop();
});

// A wrong option of a call: refused in the client, as a ChronicleError with a reason.
const invalidOption = (error) =>
  error instanceof ChronicleError && error.code === 'INVALID_ARGUMENT' && error.reason === 'INVALID_OPTION';

const newAccount = () => `acc-${randomUUID()}`;
const open = (aggregateId, extra = {}) => ({
  aggregateId,
  typeName: 'bank.v1.OpenAccount',
  fields: { owner: 'ann' },
  ...extra,
});
const deposit = (aggregateId, amount, extra = {}) => ({
  aggregateId,
  typeName: 'bank.v1.Deposit',
  fields: { amount },
  ...extra,
});
const withdraw = (aggregateId, amount, extra = {}) => ({
  aggregateId,
  typeName: 'bank.v1.Withdraw',
  fields: { amount },
  ...extra,
});

function refusedWith(code, reason) {
  return (error) => {
    assert.equal(error.name, 'ChronicleError');
    assert.equal(`${error.code} ${error.reason}`, `${code} ${reason}`);
    return true;
  };
}

/** An account opened with deposits of 10, 20, … (`deposits` of them): versions 1 to deposits + 1. */
async function accountWith(deposits) {
  const id = newAccount();
  await client.submit(id, 'bank.v1.OpenAccount', { owner: 'ann' });
  let last;
  for (let n = 1; n <= deposits; n += 1) last = await client.submit(id, 'bank.v1.Deposit', { amount: 10 * n });
  return { id, last };
}

test('a batch runs its commands as one unit, each seeing the ones before it', async () => {
  const id = newAccount();
  const batch = await client.submitBatch([open(id), deposit(id, 50), withdraw(id, 20)]);
  assert.equal(batch.version, 3);
  assert.equal(batch.replayed, false);
  assert.deepEqual(
    batch.results.map((result) => [result.version, result.events[0].payload['@type']]),
    [
      [1, 'bank.v1.AccountOpened'],
      [2, 'bank.v1.MoneyDeposited'],
      [3, 'bank.v1.MoneyWithdrawn'],
    ],
  );
  assert.equal(batch.position, batch.results[2].events[0].position);
  assert.equal(batch.results[2].position, batch.position);
  assert.equal((await client.getAggregate(id)).state.balance, 30);
});

test('a batch sent again with its command ids comes back whole, replayed, and appends nothing', async () => {
  const id = newAccount();
  const commands = [open(id, { commandId: randomUUID() }), deposit(id, 5, { commandId: randomUUID() })];
  const first = await client.submitBatch(commands);
  const again = await client.submitBatch(commands);
  assert.equal(again.replayed, true);
  assert.deepEqual(
    again.results.map((result) => result.command_id),
    commands.map((command) => command.commandId),
  );
  assert.equal(again.position, first.position);
  assert.equal((await client.read(id)).length, 2);
});

test('a refused batch writes nothing and names the command refused', async () => {
  const id = newAccount();
  const refused = await client.submitBatch([open(id), withdraw(id, 500)]).catch((error) => error);
  assert.equal(`${refused.code} ${refused.reason}`, 'FAILED_PRECONDITION INSUFFICIENT_FUNDS');
  assert.equal(refused.metadata.batch_index, '1');
  await assert.rejects(client.getAggregate(id), refusedWith('NOT_FOUND', 'AGGREGATE_NOT_FOUND'));
  await assert.rejects(client.submitBatch([]), refusedWith('INVALID_ARGUMENT', 'EMPTY_BATCH'));
  await assert.rejects(
    client.submitBatch([open(id), open(newAccount())]),
    refusedWith('INVALID_ARGUMENT', 'MIXED_AGGREGATES'),
  );
});

test('a dry-run batch says what it would append and writes nothing', async () => {
  const id = newAccount();
  const tried = await client.submitBatch([open(id), deposit(id, 5)], { dryRun: true });
  assert.equal(tried.version, 2);
  assert.equal(tried.position, 0);
  assert.equal(tried.results[1].events[0].payload.amount, 5);
  await assert.rejects(client.getAggregate(id), refusedWith('NOT_FOUND', 'AGGREGATE_NOT_FOUND'));
});

test('a dry-run submit says what it would append and writes nothing; a refusal rejects as it would', async () => {
  const id = newAccount();
  await client.submit(id, 'bank.v1.OpenAccount', { owner: 'ann' });
  const tried = await client.submit(id, 'bank.v1.Deposit', { amount: 7 }, { dryRun: true });
  assert.deepEqual([tried.version, tried.position, tried.events[0].payload.amount], [2, 0, 7]);
  assert.equal((await client.getAggregate(id)).version, 1);
  const refused = await client.submit(id, 'bank.v1.Withdraw', { amount: 9 }, { dryRun: true }).catch((e) => e);
  assert.equal(`${refused.code} ${refused.reason}`, 'FAILED_PRECONDITION INSUFFICIENT_FUNDS');
});

test("a submit's correlation and causation ids reach its events; a refusal names the command ids sent", async () => {
  const id = newAccount();
  const opened = await client.submit(
    id,
    'bank.v1.OpenAccount',
    { owner: 'ann' },
    { correlationId: 'order-17', causationId: 'msg-3' },
  );
  assert.deepEqual([opened.events[0].correlation_id, opened.events[0].causation_id], ['order-17', 'msg-3']);
  const commandId = randomUUID();
  const refused = await client.submit(id, 'bank.v1.Withdraw', { amount: 9 }, { commandId }).catch((e) => e);
  assert.equal(refused.reason, 'INSUFFICIENT_FUNDS');
  assert.deepEqual(refused.commandIds, [commandId]);
  const batch = [deposit(id, 1, { commandId: randomUUID() }), withdraw(id, 500, { commandId: randomUUID() })];
  const batchRefused = await client.submitBatch(batch).catch((e) => e);
  assert.deepEqual(batchRefused.commandIds, [batch[0].commandId, batch[1].commandId]);
});

test('a command that appends nothing has no position to wait for', async () => {
  const id = `box-${randomUUID()}`;
  const created = await client.submit(id, 'box.v1.CreateBox', { name: 'same' });
  assert.ok(created.position > 0);
  const unchanged = await client.submit(id, 'box.v1.RenameBox', { name: 'same' }); // already so named
  assert.deepEqual([unchanged.events, unchanged.position], [[], 0]);
});

test('read pages with a limit, forwards and backwards, from a version', async () => {
  const { id } = await accountWith(4); // versions 1 to 5
  const versions = async (options) => (await client.read(id, options)).map((event) => event.version);
  assert.deepEqual(await versions({ limit: 2 }), [1, 2]);
  assert.deepEqual(await versions({ fromVersion: 3, limit: 2 }), [3, 4]);
  assert.deepEqual(await versions({ backwards: true }), [5, 4, 3, 2, 1]);
  assert.deepEqual(await versions({ backwards: true, limit: 2 }), [5, 4]);
  assert.deepEqual(await versions({ backwards: true, fromVersion: 3 }), [3, 2, 1]);
  for (const limit of [0, -1, 1.5]) await assert.rejects(client.read(id, { limit }), invalidOption);
});

test("read keeps an origin's events only, and waits for a position (beyond the log's end: refused)", async () => {
  const { id, last } = await accountWith(1);
  const billing = new ChronicleClient(server.address, { origin: 'billing' });
  try {
    await billing.submit(id, 'bank.v1.Deposit', { amount: 7 });
  } finally {
    billing.close();
  }
  const fromBilling = await client.read(id, { origin: 'billing' });
  assert.deepEqual(
    fromBilling.map((event) => [event.version, event.origin, event.payload.amount]),
    [[3, 'billing', 7]],
  );
  assert.equal((await client.read(id, { minPosition: last.position })).length, 3);
  await assert.rejects(
    client.read(id, { minPosition: last.position + 1_000_000 }),
    refusedWith('INVALID_ARGUMENT', 'POSITION_BEYOND_END'),
  );
});

test('getAggregate reads the state after a version or at a time', async () => {
  const id = newAccount();
  await client.submit(id, 'bank.v1.OpenAccount', { owner: 'ann' });
  await sleep(20); // a Date holds milliseconds, an event's time microseconds: well after it
  const beforeDeposits = new Date();
  await sleep(20);
  const deposited = await client.submit(id, 'bank.v1.Deposit', { amount: 40 });
  await client.submit(id, 'bank.v1.Deposit', { amount: 2 });

  const first = await client.getAggregate(id, { atVersion: 1 });
  assert.deepEqual([first.version, first.state.balance], [1, 0]);
  const then = await client.getAggregate(id, { atTime: beforeDeposits });
  assert.deepEqual([then.version, then.state.balance], [1, 0]);
  const now = await client.getAggregate(id, { minPosition: deposited.position });
  assert.deepEqual([now.version, now.state.balance], [3, 42]);

  const notYet = await client.getAggregate(id, { atVersion: 9 }).catch((error) => error);
  assert.equal(`${notYet.code} ${notYet.reason}`, 'OUT_OF_RANGE VERSION_NOT_REACHED');
  assert.equal(notYet.metadata.current_version, '3');
  await assert.rejects(client.getAggregate(id, { atVersion: 0 }), refusedWith('INVALID_ARGUMENT', 'INVALID_VERSION'));
  await assert.rejects(
    client.getAggregate(id, { atTime: new Date(Date.now() - 3_600_000) }),
    refusedWith('NOT_FOUND', 'AGGREGATE_NOT_FOUND'),
  );
  await assert.rejects(
    client.getAggregate(id, { minPosition: deposited.position + 1_000_000 }),
    refusedWith('INVALID_ARGUMENT', 'POSITION_BEYOND_END'),
  );
  await assert.rejects(client.getAggregate(id, { atVersion: 1, atTime: new Date() }), invalidOption);
  await assert.rejects(client.getAggregate(id, { atTime: 'yesterday' }), invalidOption);
});

test('a backwards read with a limit broken mid-way asks for what is left of it, from where it broke', async () => {
  const event = (version) => ({
    event_id: `e-${version}`,
    aggregate_id: 'acc-1',
    version,
    position: version,
    event_type: 'bank.v1.MoneyDeposited',
    payload: pack('bank.v1.MoneyDeposited', { amount: version }),
  });
  const asked = [];
  const standIn = await standInServer(services.EventService, {
    ReadAggregatePages(call) {
      const { from_version: from, limit, backwards, origin, min_position: minPosition } = call.request;
      asked.push([Number(from), limit, backwards, origin, Number(minPosition)]);
      const events = [];
      for (let version = Number(from); version >= 1 && events.length < limit; version -= 1) events.push(event(version));
      if (asked.length === 1) {
        call.write({ events: events.slice(0, 2) }); // versions 9 and 8
        call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'dropped (test)' });
      } else {
        call.write({ events });
        call.end();
      }
    },
  });
  const reader = new ChronicleClient(standIn.address);
  try {
    const events = await reader.read('acc-1', {
      fromVersion: 9,
      backwards: true,
      limit: 4,
      origin: 'billing',
      minPosition: 7,
    });
    assert.deepEqual(
      events.map((one) => one.version),
      [9, 8, 7, 6],
    );
    // Again at version 8 (the last received, skipped once read again), for the 3 left counting it.
    assert.deepEqual(asked, [
      [9, 4, true, 'billing', 7],
      [8, 3, true, 'billing', 7],
    ]);
  } finally {
    reader.close();
    standIn.stop();
  }
});
