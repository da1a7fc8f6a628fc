// How the client's streams and calls end: safely when the app's loop or a
// payload fails, gracefully on a drain or a client's close, at once on an
// AbortSignal or a deadline. Against a real server process, and a stand-in
// for what a real server never sends (a payload that does not decode).

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, pack, services } from '../src/chronicle.js';
import { startServer } from './server.js';
import { standInServer } from './stand_in.js';

let server;

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

const pause = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
/** Iterates `iterable` to its end, keeping nothing. */
async function drain(iterable) {
  for await (const item of iterable) void item;
}

/** Runs `body` and returns the uncaught exceptions the process saw meanwhile and for `settleMs` after. */
async function uncaughtDuring(body, settleMs = 500) {
  const seen = [];
  const listener = (error) => seen.push(error);
  process.on('uncaughtException', listener);
  try {
    await body();
    await pause(settleMs);
  } finally {
    process.off('uncaughtException', listener);
  }
  return seen;
}

/** A command opening a new account, its id given. */
const opened = () => ({
  aggregateId: `acc-${randomUUID()}`,
  typeName: 'bank.v1.OpenAccount',
  fields: { owner: 'ann' },
  commandId: randomUUID(),
});

/** `count` accounts opened, and a group of theirs created before (so it delivers them all). */
async function groupOf(client, count, settings = {}) {
  const group = `g-${randomUUID().slice(0, 8)}`;
  const tag = randomUUID().slice(0, 8);
  await client.createGroup(group, { aggregateTypes: ['Account'], fromEnd: true, ...settings });
  const ids = [];
  for await (const result of client.submitStream(
    Array.from({ length: count }, (_, n) => ({
      aggregateId: `acc-${tag}-${n}`,
      typeName: 'bank.v1.OpenAccount',
      fields: { owner: 'ann' },
    })),
  )) {
    assert.equal(result.error, null);
    ids.push(result.command.aggregateId);
  }
  return { group, ids };
}

test('a consumer whose event does not decode throws a ChronicleError, and the process lives on', async () => {
  const garbled = {
    event_id: 'event-1',
    aggregate_id: 'acc-1',
    aggregate_type: 'Account',
    version: 1,
    position: 1,
    event_type: 'bank.v1.MoneyDeposited',
    // A varint cut short: its last byte says another follows.
    payload: { type_url: 'type.googleapis.com/bank.v1.MoneyDeposited', value: Buffer.from([0x08, 0xff]) },
  };
  const standIn = await standInServer(services.SubscriptionGroupService, {
    Consume(call) {
      call.on('data', () => {});
      call.on('end', () => call.end());
      call.write({ joined: { consumer: 'worker-1#1', segments: 1 } });
      call.write({ deliveries: { deliveries: [{ event: garbled, attempt: 1 }] } });
    },
  });
  const client = new ChronicleClient(standIn.address);
  try {
    let caught = null;
    const uncaught = await uncaughtDuring(async () => {
      try {
        for await (const delivery of client.consume('ledger', 'worker-1').deliveries) delivery.ack();
      } catch (error) {
        caught = error;
      }
    });
    assert.deepEqual(uncaught, []);
    assert.equal(caught?.name, 'ChronicleError');
    assert.equal(`${caught.code} ${caught.reason}`, 'INTERNAL UNDECODABLE_EVENT');
    assert.equal(caught.metadata.event_id, 'event-1');
  } finally {
    await client.close();
    standIn.stop();
  }
});

test('stop() drains: nothing new is handed out, the acks of what was are sent and confirmed', async () => {
  const client = new ChronicleClient(server.address);
  try {
    const { group, ids } = await groupOf(client, 3);
    const worker = client.consume(group, 'worker-1');
    const handled = [];
    let stopping = null;
    for await (const delivery of worker.deliveries) {
      handled.push(delivery.event.aggregate_id);
      stopping ??= worker.stop({ timeoutSeconds: 10 }); // SIGTERM arrived while handling it
      await pause(200); // the work in flight finishes
      assert.equal(await delivery.ack(), true); // sent
    }
    await stopping;
    assert.equal(handled.length, 1, 'nothing handed out after stop()');
    assert.equal(await (async () => (await client.getGroup(group)).acknowledged)(), 1);
    // The next worker gets the others, not the one acked during the drain.
    const next = client.consume(group, 'worker-2');
    const rest = [];
    for await (const delivery of next.deliveries) {
      rest.push(delivery.event.aggregate_id);
      await delivery.ack();
      if (rest.length === 2) break;
    }
    await next.close();
    assert.deepEqual([...handled, ...rest].sort(), [...ids].sort());
    // After leaving, an ack is not sent, and says so.
    const late = client.consume(group, 'worker-3');
    await late.close();
    assert.equal((await client.getGroup(group)).acknowledged, 3);
  } finally {
    await client.close();
  }
});

test('an ack after close() resolves false (not sent: the event comes again)', async () => {
  const client = new ChronicleClient(server.address);
  try {
    const { group } = await groupOf(client, 1);
    const worker = client.consume(group, 'worker-1');
    for await (const delivery of worker.deliveries) {
      await worker.close();
      assert.equal(await delivery.ack(), false);
    }
  } finally {
    await client.close();
  }
});

test("client.close() ends its subscriptions' and consumers' loops, and later calls reject CLIENT_CLOSED", async () => {
  const client = new ChronicleClient(server.address);
  const { group } = await groupOf(client, 0);
  const subscription = client.subscribe({ aggregateTypes: ['Account'] }, { fromEnd: true });
  const worker = client.consume(group, 'worker-1');
  const commands = (async function* () {
    await new Promise(() => {}); // a command stream waiting for its next command, for ever
  })();
  const loops = [
    (async () => {
      for await (const message of subscription.messages) void message;
    })(),
    (async () => {
      for await (const delivery of worker.deliveries) await delivery.ack();
    })(),
    (async () => {
      for await (const result of client.submitStream(commands)) void result;
    })(),
  ];
  await pause(300);
  await client.close();
  const ended = await Promise.race([Promise.all(loops).then(() => 'ended'), pause(5000).then(() => 'still running')]);
  assert.equal(ended, 'ended');
  for (const made of [
    () => client.submit('acc-1', 'bank.v1.OpenAccount', { owner: 'ann' }),
    () => client.getAggregate('acc-1'),
    () => client.read('acc-1'),
    () => client.listGroups(),
    () => (async () => client.subscribe({}))(),
    () => (async () => client.consume(group, 'w'))(),
  ]) {
    await assert.rejects(made(), (error) => {
      assert.equal(error.name, 'ChronicleError');
      assert.equal(`${error.code} ${error.reason}`, 'FAILED_PRECONDITION CLIENT_CLOSED');
      return true;
    });
  }
});

test('a call aborted or past its timeoutSeconds rejects at once, not after the retries', async () => {
  // Nothing listens: UNAVAILABLE, retried for 30 s; the bounds below (5 s)
  // tell an answer at once from one after the retries on a loaded machine.
  const client = new ChronicleClient('127.0.0.1:1');
  try {
    const calls = {
      submit: (options) => client.submit('acc-1', 'bank.v1.OpenAccount', { owner: 'ann' }, options),
      getAggregate: (options) => client.getAggregate('acc-1', options),
      read: (options) => client.read('acc-1', options),
      listParked: (options) => client.listParked('g', options),
      updateGroup: (options) => client.updateGroup('g', { ackTimeoutSeconds: 5 }, options),
      'projections.document': (options) => client.projections.document('p', 'k', options),
      'projections.documents': (options) => drain(client.projections.documents('p', options)),
      'projections.get': (options) => client.projections.get('p', options),
      'projections.list': (options) => client.projections.list(options),
      'projections.parked': (options) => drain(client.projections.parked('p', options)),
      'projections.rebuild': (options) => client.projections.rebuild('p', options),
      'projections.orphaned': (options) => client.projections.orphaned(options),
      'projections.delete': (options) => client.projections.delete('p', options),
      'reactions.list': (options) => client.reactions.list(options),
      'reactions.get': (options) => client.reactions.get('r', options),
      'reactions.parked': (options) => drain(client.reactions.parked('r', options)),
      'reactions.replay': (options) => client.reactions.replay('r', randomUUID(), options),
      'reactions.dismiss': (options) => client.reactions.dismiss('r', randomUUID(), options),
      'reactions.replayAll': (options) => client.reactions.replayAll('r', options),
      'reactions.dismissAll': (options) => client.reactions.dismissAll('r', options),
      'reactions.dropProcessState': (options) => client.reactions.dropProcessState('r', 'k', options),
      'reactions.dropProcessStates': (options) => client.reactions.dropProcessStates('r', ['k', 'l'], options),
      'reactions.processState': (options) => client.reactions.processState('r', 'k', options),
      'reactions.processStates': (options) => drain(client.reactions.processStates('r', options)),
    };
    for (const [name, made] of Object.entries(calls)) {
      const aborting = new AbortController();
      setTimeout(() => aborting.abort(), 100);
      let started = Date.now();
      await assert.rejects(made({ signal: aborting.signal }), (error) => {
        assert.equal(`${error.name} ${error.code} ${error.reason}`, 'ChronicleError CANCELLED CANCELLED', name);
        return true;
      });
      assert.ok(Date.now() - started < 5000, `${name} took ${Date.now() - started} ms to stop`);
      started = Date.now();
      await assert.rejects(made({ timeoutSeconds: 0.3 }), (error) => {
        assert.equal(`${error.code} ${error.reason}`, 'DEADLINE_EXCEEDED DEADLINE_EXCEEDED', name);
        return true;
      });
      const took = Date.now() - started;
      assert.ok(took >= 250 && took < 5000, `${name} took ${took} ms for a 0.3 s timeout`);
    }
  } finally {
    await client.close();
  }
});

test('a subscription or consumer aborted throws CANCELLED, one past its timeoutSeconds DEADLINE_EXCEEDED', async () => {
  const client = new ChronicleClient(server.address);
  try {
    const { group } = await groupOf(client, 0);
    const aborting = new AbortController();
    setTimeout(() => aborting.abort(), 200);
    await assert.rejects(
      (async () => {
        for await (const message of client.subscribe({}, { fromEnd: true, signal: aborting.signal }).messages) {
          void message;
        }
      })(),
      (error) => `${error.name} ${error.code} ${error.reason}` === 'ChronicleError CANCELLED CANCELLED',
    );
    await assert.rejects(
      (async () => {
        for await (const delivery of client.consume(group, 'w', { timeoutSeconds: 0.3 }).deliveries) await delivery.ack();
      })(),
      (error) => `${error.code} ${error.reason}` === 'DEADLINE_EXCEEDED DEADLINE_EXCEEDED',
    );
  } finally {
    await client.close();
  }
});

test('a command stream aborted or past its timeoutSeconds throws at once, not after its reopenings', { timeout: 60_000 }, async () => {
  // Nothing listens: each call fails UNAVAILABLE and the stream reopens
  // without a bound, 10 s apart: only the bound can end it within 5 s.
  const retry = { initialBackoffSeconds: 10, maxBackoffSeconds: 10, jitter: 0 };
  for (const routing of [false, true]) {
    const client = new ChronicleClient('127.0.0.1:1', { retry, routing });
    try {
      const aborting = new AbortController();
      setTimeout(() => aborting.abort(), 300);
      let started = Date.now();
      await assert.rejects(drain(client.submitStream([opened()], { signal: aborting.signal })), (error) => {
        assert.equal(`${error.name} ${error.code} ${error.reason}`, 'ChronicleError CANCELLED CANCELLED');
        return true;
      });
      assert.ok(Date.now() - started < 5000, `routing ${routing}: ${Date.now() - started} ms to stop`);
      started = Date.now();
      await assert.rejects(drain(client.submitStream([opened()], { timeoutSeconds: 0.5 })), (error) => {
        assert.equal(`${error.code} ${error.reason}`, 'DEADLINE_EXCEEDED DEADLINE_EXCEEDED');
        return true;
      });
      const took = Date.now() - started;
      assert.ok(took >= 450 && took < 5000, `routing ${routing}: ${took} ms for a 0.5 s timeout`);
      // Aborted before it began: nothing is taken from the commands.
      let taken = 0;
      function* counted() {
        taken += 1;
        yield opened();
      }
      await assert.rejects(drain(client.submitStream(counted(), { signal: AbortSignal.abort() })), {
        code: 'CANCELLED',
      });
      assert.equal(taken, 0);
    } finally {
      await client.close();
    }
  }
});

test('a bounded command stream that ends in time hands out every result and throws nothing', async () => {
  const client = new ChronicleClient(server.address);
  try {
    const aborting = new AbortController();
    const commands = Array.from({ length: 5 }, () => opened());
    const results = [];
    for await (const result of client.submitStream(commands, { signal: aborting.signal, timeoutSeconds: 30 })) {
      results.push(result);
    }
    assert.deepEqual(
      results.map((r) => [r.command_id, r.submitted?.version]),
      commands.map((c) => [c.commandId, 1]),
    );
    aborting.abort(); // after the end: nothing left to stop, nothing thrown
    await pause(50);
  } finally {
    await client.close();
  }
});

test('a subscription or consumer stopped while it waits to reopen throws at once, not after the backoff', { timeout: 60_000 }, async () => {
  const retry = { initialBackoffSeconds: 10, maxBackoffSeconds: 10, jitter: 0 };
  const client = new ChronicleClient('127.0.0.1:1', { retry });
  try {
    let started = Date.now();
    await assert.rejects(drain(client.subscribe({}, { timeoutSeconds: 0.5 }).messages), {
      code: 'DEADLINE_EXCEEDED',
    });
    assert.ok(Date.now() - started < 5000, `the subscription took ${Date.now() - started} ms to stop`);
    started = Date.now();
    const worker = client.consume('g', 'w', { reconnectDelaySeconds: 10 });
    setTimeout(() => worker.close(), 300);
    await drain(worker.deliveries); // close() ends the loop without an error
    assert.ok(Date.now() - started < 5000, `the consumer took ${Date.now() - started} ms to close`);
  } finally {
    await client.close();
  }
});

test('listParked follows every page', async () => {
  const client = new ChronicleClient(server.address);
  try {
    const { group, ids } = await groupOf(client, 105, { maxDeliveryAttempts: 1 });
    const worker = client.consume(group, 'worker-1');
    let nacked = 0;
    for await (const delivery of worker.deliveries) {
      await delivery.nack('parked for the test');
      nacked += 1;
      if (nacked === ids.length) break;
    }
    await worker.close();
    let parked = [];
    for (let tries = 0; tries < 200 && parked.length < ids.length; tries += 1) {
      parked = await client.listParked(group);
      await pause(50);
    }
    assert.deepEqual(parked.map((p) => p.aggregate_id).sort(), [...ids].sort());
    assert.equal((await client.listParked(group, { limit: 7, pageSize: 3 })).length, 7);
  } finally {
    await client.close();
  }
});
