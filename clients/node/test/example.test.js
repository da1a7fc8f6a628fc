// The Node example against a real server process.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, ChronicleError, pack, services } from '../src/chronicle.js';
import { walkthrough } from '../src/example.js';
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

test('the walkthrough opens, deposits, is refused by reason and reads the account back', async () => {
  const lines = [];
  const result = await walkthrough(server.address, { log: (line) => lines.push(line) });
  assert.equal(result.opened.version, 1);
  assert.equal(result.deposited.version, 2);
  assert.deepEqual(result.deposited.events[0].payload, { '@type': 'bank.v1.MoneyDeposited', amount: 100 });
  assert.equal(result.refusal.code, 'FAILED_PRECONDITION');
  assert.equal(result.refusal.reason, 'INSUFFICIENT_FUNDS');
  assert.deepEqual(result.refusal.metadata, { balance: '100', amount: '500' });
  assert.deepEqual(
    result.events.map((e) => [e.version, e.event_type]),
    [
      [1, 'bank.v1.AccountOpened'],
      [2, 'bank.v1.MoneyDeposited'],
    ],
  );
  assert.equal(result.events[0].origin, 'node-example');
  assert.equal(result.account.aggregate_type, 'Account');
  assert.equal(result.account.version, 2);
  assert.deepEqual(result.account.state, { '@type': 'bank.v1.Account', owner: 'ann', balance: 100, closed: false });
  assert.ok(lines.some((line) => line.includes('withdrawal refused (FAILED_PRECONDITION INSUFFICIENT_FUNDS)')));
  // The subscription saw the same two events, live, in order.
  assert.deepEqual(
    result.streamed.map((e) => [e.event_id, e.version]),
    result.events.map((e) => [e.event_id, e.version]),
  );
});

test('a subscription resumes after a position without a gap or a repeat', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'eve' });
  for (const amount of [1, 2, 3]) await client.submit(accountId, 'bank.v1.Deposit', { amount });
  const firstRun = client.subscribe({ aggregateId: accountId });
  const first = [];
  for await (const message of firstRun.messages) {
    if (message.kind === 'event') first.push(message.event);
    if (first.length === 2) break;
  }
  // A restarted subscriber passes back the position it had processed.
  const secondRun = client.subscribe({ aggregateId: accountId }, { afterPosition: firstRun.position });
  const second = [];
  for await (const message of secondRun.messages) {
    if (message.kind === 'event') second.push(message.event);
    if (second.length === 2) break;
  }
  assert.deepEqual(
    [...first, ...second].map((e) => e.version),
    [1, 2, 3, 4],
  );
});

test('a subscription filter naming an unknown event type is INVALID_ARGUMENT', async () => {
  const subscription = client.subscribe({ eventTypes: ['bank.v1.NoSuchEvent'] });
  await assert.rejects(subscription.messages.next(), (error) => {
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.equal(error.reason, 'INVALID_FILTER');
    return true;
  });
});

test('the same command id twice is executed once', async () => {
  const accountId = `acc-${randomUUID()}`;
  const commandId = randomUUID();
  const first = await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'bob' }, { commandId });
  const again = await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'bob' }, { commandId });
  assert.equal(first.replayed, false);
  assert.equal(again.replayed, true);
  assert.deepEqual(
    again.events.map((e) => e.event_id),
    first.events.map((e) => e.event_id),
  );
  assert.equal((await client.read(accountId)).length, 1);
});

test('bad input is INVALID_ARGUMENT naming the field', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'cy' });
  await assert.rejects(client.submit(accountId, 'bank.v1.Deposit', { amount: -5 }), (error) => {
    assert.ok(error instanceof ChronicleError);
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.equal(error.reason, 'INVALID_AMOUNT');
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ['amount'],
    );
    return true;
  });
});

test('a refusal naming several fields lists each of them', async () => {
  const transferId = `t-${randomUUID()}`;
  const malformed = { target_account_id: 'acc-x', amount: -5 };
  await assert.rejects(client.submit(transferId, 'bank.v1.TransferMoney', malformed), (error) => {
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.equal(error.reason, 'INVALID_TRANSFER');
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ['source_account_id', 'amount'],
    );
    return true;
  });
});

test('a stale expected version is refused with the current version', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'dee' }, { expectedVersion: 0 });
  await assert.rejects(client.submit(accountId, 'bank.v1.Deposit', { amount: 1 }, { expectedVersion: 7 }), (error) => {
    assert.equal(error.reason, 'WRONG_EXPECTED_VERSION');
    assert.equal(error.metadata.current_version, '1');
    return true;
  });
});

test('an unknown aggregate is NOT_FOUND', async () => {
  await assert.rejects(client.getAggregate(`nobody-${randomUUID()}`), (error) => {
    assert.equal(error.code, 'NOT_FOUND');
    assert.equal(error.reason, 'AGGREGATE_NOT_FOUND');
    return true;
  });
});

test('a subscription the server cancels (as a stopping server does) is reopened after the last position', async () => {
  // A stand-in server: the first stream sends a checkpoint, then ends with
  // CANCELLED; the second answers caught_up.
  const asked = [];
  const standIn = await standInServer(services.EventService, {
    Subscribe(call) {
      asked.push(Number(call.request.after_position));
      if (asked.length === 1) {
        call.write({ checkpoint: { position: 7 } });
        setImmediate(() => call.emit('error', { code: grpc.status.CANCELLED, details: 'stopping (test)' }));
      } else {
        call.write({ caught_up: { position: 9 } });
      }
    },
  });
  const subscriber = new ChronicleClient(standIn.address);
  try {
    const subscription = subscriber.subscribe();
    const seen = [];
    for await (const message of subscription.messages) {
      seen.push([message.kind, message.position]);
      if (message.kind === 'caught_up') break;
    }
    assert.deepEqual(seen, [
      ['checkpoint', 7],
      ['caught_up', 9],
    ]);
    assert.deepEqual(asked, [0, 7]);
  } finally {
    subscriber.close();
    standIn.stop();
  }
});

function deposited(position) {
  return {
    event_id: randomUUID(),
    aggregate_id: 'acc-1',
    aggregate_type: 'Account',
    version: position,
    position,
    event_type: 'bank.v1.MoneyDeposited',
    payload: pack('bank.v1.MoneyDeposited', { amount: position }),
  };
}

test('a subscription asks for pages and hands out their events one by one, resuming after the last one', async () => {
  const asked = [];
  const standIn = await standInServer(services.EventService, {
    Subscribe(call) {
      asked.push({ after: Number(call.request.after_position), pages: call.request.pages });
      if (asked.length === 1) {
        call.write({ page: { events: [deposited(1), deposited(2), deposited(3)] } });
        setImmediate(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'dropped (test)' }));
      } else {
        call.write({ page: { events: [deposited(4)] } });
      }
    },
  });
  const subscriber = new ChronicleClient(standIn.address);
  try {
    const subscription = subscriber.subscribe();
    const seen = [];
    for await (const message of subscription.messages) {
      seen.push([message.event.position, message.event.payload.amount]);
      if (seen.length === 4) break;
    }
    assert.deepEqual(seen, [
      [1, 1],
      [2, 2],
      [3, 3],
      [4, 4],
    ]);
    assert.deepEqual(asked, [
      { after: 0, pages: true },
      { after: 3, pages: true },
    ]);
  } finally {
    subscriber.close();
    standIn.stop();
  }
});

test('read takes the events from pages, and from single events where the server has no pages', async () => {
  const paged = await standInServer(services.EventService, {
    ReadAggregatePages(call) {
      call.write({ events: [deposited(1), deposited(2)] });
      call.write({ events: [deposited(3)] });
      call.end();
    },
  });
  const older = await standInServer(services.EventService, {
    ReadAggregate(call) {
      for (const position of [1, 2, 3]) call.write(deposited(position));
      call.end();
    },
  });
  const reader = new ChronicleClient(paged.address);
  const olderReader = new ChronicleClient(older.address);
  try {
    const versions = (events) => events.map((e) => [e.version, e.payload.amount]);
    const expected = [
      [1, 1],
      [2, 2],
      [3, 3],
    ];
    assert.deepEqual(versions(await reader.read('acc-1')), expected);
    assert.equal(reader.pagedReads, true);
    assert.deepEqual(versions(await olderReader.read('acc-1')), expected); // UNIMPLEMENTED, then ReadAggregate
    assert.equal(olderReader.pagedReads, false);
    assert.deepEqual(versions(await olderReader.read('acc-1')), expected);
  } finally {
    reader.close();
    olderReader.close();
    paged.stop();
    older.stop();
  }
});

test('a history of sixty events reads back whole and in order from a real server, through ReadAggregatePages', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'pam' });
  for (let amount = 1; amount <= 60; amount += 1) await client.submit(accountId, 'bank.v1.Deposit', { amount });
  const events = await client.read(accountId, { fromVersion: 2 });
  assert.deepEqual(
    events.map((e) => e.version),
    Array.from({ length: 60 }, (_, i) => i + 2),
  );
  assert.equal(client.pagedReads, true);
});
