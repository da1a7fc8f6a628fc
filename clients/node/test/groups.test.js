// Consuming a subscription group from Node against a real server process.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, pack, services } from '../src/chronicle.js';
import { groupWalkthrough } from '../src/group_example.js';
import { startServer } from './server.js';
import { standInServer } from './stand_in.js';

let server;

// The n-th event a stand-in group delivers: a deposit of 5 to acc-n, at position n.
function deposited(n) {
  return {
    event_id: `event-${n}`,
    aggregate_id: `acc-${n}`,
    aggregate_type: 'Account',
    version: 1,
    position: n,
    event_type: 'bank.v1.MoneyDeposited',
    payload: pack('bank.v1.MoneyDeposited', { amount: 5 }),
  };
}

before(async () => {
  server = await startServer();
});

after(async () => {
  await server?.stop();
});

test('a group consumer gets every event once acked, each aggregate in order, a nacked one again', async () => {
  const lines = [];
  const result = await groupWalkthrough(server.address, { log: (line) => lines.push(line) });
  assert.equal(result.handled.length, 9);
  for (const id of result.ids) {
    const versions = result.handled.filter((h) => h.aggregateId === id).map((h) => h.version);
    assert.deepEqual(versions, [1, 2, 3], id);
  }
  // The nacked deposit came back as its second attempt.
  assert.deepEqual(
    result.handled.filter((h) => h.attempt === 2).map((h) => h.version),
    [2],
  );
  assert.ok(lines.some((line) => line.startsWith('  nack ')));
  assert.equal(result.info.acknowledged, 9);
  assert.equal(result.info.parked, 0);
  assert.equal(result.info.lag, 0);
});

test("a tenant's group is made with createGroup's tenant, and an invalid tenant is refused", async () => {
  const client = new ChronicleClient(server.address);
  const group = `tenant-${randomUUID().slice(0, 8)}`;
  try {
    const info = await client.createGroup(group, { aggregateTypes: ['Account'], tenant: 'acme' });
    assert.equal(info.filter.tenant, 'acme');
    await assert.rejects(
      client.createGroup(`${group}-bad`, { tenant: 'ac:me' }),
      (error) => error.reason === 'BAD_GROUP_SETTING',
    );
    await client.deleteGroup(group);
  } finally {
    client.close();
  }
});

test('bad group requests are refused with their reasons', async () => {
  const client = new ChronicleClient(server.address);
  try {
    await assert.rejects(client.createGroup('has space'), (error) => error.reason === 'BAD_GROUP_NAME');
    await assert.rejects(client.deleteGroup('missing'), (error) => error.reason === 'GROUP_NOT_FOUND');
    const worker = client.consume('missing', 'worker-1');
    await assert.rejects(
      (async () => {
        for await (const delivery of worker.deliveries) delivery.ack();
      })(),
      (error) => error.code === 'NOT_FOUND' && error.reason === 'GROUP_NOT_FOUND',
    );
  } finally {
    client.close();
  }
});

test('parked events are dismissed, all named or none, and a group is found by name', async () => {
  const client = new ChronicleClient(server.address);
  const group = `dismissing-${randomUUID().slice(0, 8)}`;
  const ids = [`acc-${randomUUID()}`, `acc-${randomUUID()}`];
  try {
    // One delivery each: a nack parks the event at once.
    await client.createGroup(group, { aggregateTypes: ['Account'], fromEnd: true, maxDeliveryAttempts: 1 });
    for (const id of ids) await client.submit(id, 'bank.v1.OpenAccount', { owner: 'ann' });
    const worker = client.consume(group, 'worker-1');
    const before = Date.now();
    const types = new Set();
    let nacked = 0;
    for await (const delivery of worker.deliveries) {
      if (ids.includes(delivery.event.aggregate_id)) {
        types.add(delivery.event.event_type);
        delivery.nack('cannot handle it (test)');
        nacked += 1;
      } else delivery.ack();
      if (nacked === ids.length) break;
    }
    await worker.close();
    let parked = [];
    for (let tries = 0; tries < 200 && parked.length < ids.length; tries += 1) {
      parked = await client.listParked(group);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.deepEqual(parked.map((p) => p.aggregate_id).sort(), [...ids].sort());
    // What an operator triages by: each one's type, and when it was parked (a Date).
    assert.deepEqual(parked.map((p) => p.event_type), [...types, ...types]);
    for (const p of parked) {
      assert.ok(p.parked_at instanceof Date, `${p.parked_at}`);
      assert.ok(p.parked_at.getTime() >= before - 1000 && p.parked_at.getTime() <= Date.now() + 1000, `${p.parked_at}`);
    }
    const [first, second] = parked.map((p) => p.event_id);

    // One named that is not parked: none dismissed, the missing one named.
    const missing = randomUUID();
    await assert.rejects(client.dismissParked(group, [first, missing]), (error) => {
      assert.equal(error.name, 'ChronicleError');
      assert.equal(`${error.code} ${error.reason}`, 'NOT_FOUND PARKED_EVENT_NOT_FOUND');
      assert.ok(error.metadata.event_ids.includes(missing), error.metadata.event_ids);
      return true;
    });
    assert.equal((await client.getGroup(group)).parked, 2);
    await assert.rejects(client.dismissParked(group, []), (error) => error.reason === 'INVALID_EVENT_ID');
    await assert.rejects(client.dismissParked(group, ['not-a-uuid']), (error) => error.reason === 'INVALID_EVENT_ID');
    await assert.rejects(client.dismissParked('missing', [first]), (error) => error.reason === 'GROUP_NOT_FOUND');

    assert.equal(await client.dismissParked(group, [first]), 1);
    assert.deepEqual((await client.listParked(group)).map((p) => p.event_id), [second]);
    const info = await client.getGroup(group);
    // Dismissed is not acknowledged: counted apart, as an event the group did not process.
    assert.deepEqual([info.name, info.parked, info.acknowledged, info.dismissed, info.skipped], [group, 1, 0, 1, 0]);
    await assert.rejects(client.getGroup('missing'), (error) => {
      assert.equal(error.name, 'ChronicleError');
      assert.equal(`${error.code} ${error.reason}`, 'NOT_FOUND GROUP_NOT_FOUND');
      assert.deepEqual(error.metadata, { group: 'missing' });
      return true;
    });
    await client.deleteGroup(group);
  } finally {
    client.close();
  }
});

test('a consumer whose stream a stopping server ended consumes again; its acks go on the new stream', async () => {
  const streams = [];
  const acked = [];
  const standIn = await standInServer(services.SubscriptionGroupService, {
    Consume(call) {
      const number = streams.push(call);
      call.on('data', (request) => {
        if (request.ack) acked.push([number, ...request.ack.event_ids]);
      });
      call.write({ joined: { consumer: `worker-1#${number}`, segments: 1 } });
      if (number === 1) {
        const code = grpc.status.UNAVAILABLE;
        setImmediate(() => call.emit('error', { code, details: 'shutting down (test)' }));
      } else if (number === 2) {
        setImmediate(() => call.emit('error', { code: grpc.status.CANCELLED, details: 'cancelled by a stopping server (test)' }));
      } else {
        call.write({ deliveries: { deliveries: [{ event: deposited(1), attempt: 1 }] } });
      }
    },
  });
  const client = new ChronicleClient(standIn.address);
  const worker = client.consume('ledger', 'worker-1', { reconnectDelaySeconds: 0.01 });
  try {
    for await (const delivery of worker.deliveries) {
      assert.equal(delivery.event.payload.amount, 5);
      delivery.ack();
      break;
    }
    assert.equal(streams.length, 3);
    assert.equal(worker.member, 'worker-1#3');
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(acked, [[3, 'event-1']]);
  } finally {
    worker.close();
    client.close();
    standIn.stop();
  }
});

test('a consumer refused for good is not opened again', async () => {
  let opened = 0;
  const standIn = await standInServer(services.SubscriptionGroupService, {
    Consume(call) {
      opened += 1;
      setImmediate(() => call.emit('error', { code: grpc.status.PERMISSION_DENIED, details: 'no grant (test)' }));
    },
  });
  const client = new ChronicleClient(standIn.address);
  const worker = client.consume('ledger', 'worker-1', { reconnectDelaySeconds: 0.01 });
  try {
    await assert.rejects(
      (async () => {
        for await (const delivery of worker.deliveries) delivery.ack();
      })(),
      (error) => error.code === 'PERMISSION_DENIED',
    );
    assert.equal(opened, 1);
  } finally {
    worker.close();
    client.close();
    standIn.stop();
  }
});

/** `node src/group_example.js address`, as a user runs it: its exit code, stdout and stderr. */
async function runGroupExample(address) {
  const example = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'group_example.js');
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [example, address], { timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    return { code: error.code, stdout: error.stdout, stderr: error.stderr };
  }
}

test('the group example run by hand against no server says UNAVAILABLE once and what to do', async () => {
  const nobody = await standInServer(services.SubscriptionGroupService, {});
  nobody.stop(); // a port nothing listens on now
  const ran = await runGroupExample(nobody.address);
  assert.equal(ran.code, 1);
  assert.equal(ran.stdout, '');
  const [first, hint, ...rest] = ran.stderr.split('\n');
  assert.match(first, /^error: UNAVAILABLE: /);
  assert.doesNotMatch(first, /UNAVAILABLE UNAVAILABLE/);
  assert.equal(
    hint,
    `  no Chronicle server answered at ${nobody.address}: start one (\`make run\` in the repository root),` +
      ' or give its address: node src/group_example.js HOST:PORT',
  );
  assert.deepEqual(rest, ['']);
});

test('the group example run by hand prints a refusal by its code and reason', async () => {
  const standIn = await standInServer(services.SubscriptionGroupService, {
    CreateGroup(call, callback) {
      // As a server without --anonymous-admin refuses it.
      const code = grpc.status.PERMISSION_DENIED;
      const message = 'anonymous callers may not create a group (test)';
      const details = [pack('google.rpc.ErrorInfo', { reason: 'ANONYMOUS_ADMIN_DENIED', domain: 'chronicle' })];
      const metadata = new grpc.Metadata();
      metadata.set('grpc-status-details-bin', pack('google.rpc.Status', { code, message, details }).value);
      callback({ code, details: message, metadata });
    },
  });
  try {
    const ran = await runGroupExample(standIn.address);
    assert.deepEqual(ran, {
      code: 1,
      stdout: '',
      stderr: 'error: PERMISSION_DENIED ANONYMOUS_ADMIN_DENIED: anonymous callers may not create a group (test)\n',
    });
  } finally {
    standIn.stop();
  }
});

/**
 * A stand-in group server: one consumer's stream gets `count` deliveries;
 * it records, in order, the acks and the client's end of its half of the
 * call (then it ends the call, OK, as Chronicle does). (grpc-js reports
 * 'cancelled' on the server for every call that closes, so that tells
 * nothing.)
 */
async function standInGroup(count) {
  const seen = [];
  const standIn = await standInServer(services.SubscriptionGroupService, {
    Consume(call) {
      call.on('data', (request) => {
        if (request.ack) seen.push(...request.ack.event_ids.map((id) => `ack ${id}`));
      });
      call.on('end', () => {
        seen.push('end');
        call.end();
      });
      call.on('error', () => {});
      call.write({ joined: { consumer: 'worker-1', segments: 1 } });
      const deliveries = Array.from({ length: count }, (_, n) => ({ event: deposited(n + 1), attempt: 1 }));
      call.write({ deliveries: { deliveries } });
    },
  });
  return { ...standIn, seen };
}

test('a consumer that leaves its loop right after an ack ends its stream gracefully: the ack counts', async () => {
  const group = await standInGroup(3);
  const client = new ChronicleClient(group.address);
  try {
    const worker = client.consume('billing', 'worker-1');
    let handled = 0;
    for await (const delivery of worker.deliveries) {
      delivery.ack();
      handled += 1;
      if (handled === 3) break; // the last ack written, then the loop left at once
    }
    // Leaving the loop waited for the server to end the stream: every ack
    // reached it, then the end of the client's half (not a cancellation).
    assert.deepEqual(group.seen, ['ack event-1', 'ack event-2', 'ack event-3', 'end']);
  } finally {
    client.close();
    group.stop();
  }
});

test('close() sends the acks made, ends the stream, and resolves once the server ended it', async () => {
  const group = await standInGroup(2);
  const client = new ChronicleClient(group.address);
  try {
    const worker = client.consume('billing', 'worker-1');
    const deliveries = worker.deliveries[Symbol.asyncIterator]();
    const first = await deliveries.next();
    first.value.ack();
    await worker.close();
    assert.deepEqual(group.seen, ['ack event-1', 'end']);
    assert.equal((await deliveries.next()).done, true); // the loop ends
  } finally {
    client.close();
    group.stop();
  }
});

/** A status as the server sends it, with an ErrorInfo and (given a delay) a RetryInfo in its details. */
function rich(code, message, { reason, retryDelaySeconds } = {}) {
  const details = [];
  if (reason) details.push(pack('google.rpc.ErrorInfo', { reason, domain: 'chronicle', metadata: {} }));
  if (retryDelaySeconds !== undefined) {
    const retry_delay = { seconds: 0, nanos: Math.round(retryDelaySeconds * 1e9) };
    details.push(pack('google.rpc.RetryInfo', { retry_delay }));
  }
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', pack('google.rpc.Status', { code, message, details }).value);
  return { code, details: message, metadata };
}

/** A stand-in whose first Consume calls end with `endings` in turn; the next delivers one event. */
async function standInEndings(endings) {
  const state = { opened: 0 };
  const standIn = await standInServer(services.SubscriptionGroupService, {
    Consume(call) {
      state.opened += 1;
      call.on('error', () => {});
      const ending = endings[state.opened - 1];
      if (ending !== undefined) {
        setImmediate(() => call.emit('error', ending()));
        return;
      }
      call.write({ joined: { consumer: `worker-1#${state.opened}`, segments: 1 } });
      call.write({ deliveries: { deliveries: [{ event: deposited(1), attempt: 1 }] } });
    },
  });
  return { ...standIn, state };
}

test('a consumer is opened again after what a subscription is: TOO_MANY_SUBSCRIPTIONS, ABORTED, DEADLINE_EXCEEDED', async () => {
  // Before, only UNAVAILABLE and CANCELLED: a consumer of a server at its
  // --max-subscriptions failed at once, while a subscription waited for room.
  const full = () =>
    rich(grpc.status.RESOURCE_EXHAUSTED, 'the server has 1 open subscriptions; retry later (test)', {
      reason: 'TOO_MANY_SUBSCRIPTIONS',
      retryDelaySeconds: 0.01,
    });
  const aborted = () => rich(grpc.status.ABORTED, 'conflict (test)', { reason: 'CONCURRENCY_CONFLICT' });
  const late = () => ({ code: grpc.status.DEADLINE_EXCEEDED, details: 'late (test)' });
  const group = await standInEndings([full, full, aborted, late]);
  const client = new ChronicleClient(group.address);
  const worker = client.consume('ledger', 'worker-1', { reconnectDelaySeconds: 0.01 });
  try {
    for await (const delivery of worker.deliveries) {
      assert.equal(delivery.event.event_id, 'event-1');
      delivery.ack();
      break;
    }
    assert.equal(group.state.opened, 5);
    assert.equal(worker.member, 'worker-1#5');
  } finally {
    worker.close();
    client.close();
    group.stop();
  }
});

test('a consumer the server cut as stalled (ABORTED CONSUMER_STALLED) consumes again, and says why as a warning', async () => {
  const stalled = () =>
    rich(grpc.status.ABORTED, 'consumer worker-1#1 took no deliveries in for 1s (test)', {
      reason: 'CONSUMER_STALLED',
      retryDelaySeconds: 0.01,
    });
  const group = await standInEndings([stalled]);
  const lines = [];
  const logger = { info: (message) => lines.push(['info', message]), warn: (message) => lines.push(['warn', message]) };
  const client = new ChronicleClient(group.address, { logger });
  const worker = client.consume('ledger', 'worker-1', { reconnectDelaySeconds: 0.01 });
  try {
    for await (const delivery of worker.deliveries) {
      assert.equal(delivery.event.event_id, 'event-1');
      delivery.ack();
      break;
    }
    assert.equal(group.state.opened, 2);
    assert.equal(worker.member, 'worker-1#2');
    assert.equal(lines.length, 1);
    const [[level, message]] = lines;
    assert.equal(level, 'warn');
    assert.match(message, /^group ledger: ABORTED CONSUMER_STALLED: .*; consuming again in 0\.010 s \(iterate/);
  } finally {
    worker.close();
    client.close();
    group.stop();
  }
});

test("a consumer is not opened again after gRPC's own RESOURCE_EXHAUSTED (no RetryInfo)", async () => {
  const tooLarge = () => ({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'Received message larger than max (test)' });
  const group = await standInEndings([tooLarge]);
  const client = new ChronicleClient(group.address);
  const worker = client.consume('ledger', 'worker-1', { reconnectDelaySeconds: 0.01 });
  try {
    await assert.rejects(
      (async () => {
        for await (const delivery of worker.deliveries) delivery.ack();
      })(),
      (error) => error.code === 'RESOURCE_EXHAUSTED',
    );
    assert.equal(group.state.opened, 1);
  } finally {
    worker.close();
    client.close();
    group.stop();
  }
});

test("createGroup sends a duration of 0 as 0 and leaves an undefined or null one to the server's default", async () => {
  // As the Python client: None (here undefined or null) is the server's
  // default, 0 is 0. null was sent as 0 s (an ack timeout of 0 is refused).
  const requests = [];
  const standIn = await standInServer(services.SubscriptionGroupService, {
    CreateGroup(call, callback) {
      requests.push(call.request);
      callback(null, { group: { name: call.request.name } });
    },
  });
  const client = new ChronicleClient(standIn.address);
  try {
    await client.createGroup('g', { retryBackoffSeconds: 0, maxRetryBackoffSeconds: null, ackTimeoutSeconds: 1.5 });
    await client.createGroup('h', {});
  } finally {
    client.close();
    standIn.stop();
  }
  const durations = requests.map((r) => [r.retry_backoff, r.max_retry_backoff, r.ack_timeout]);
  const plain = (value) => (value === null ? null : { seconds: Number(value.seconds), nanos: value.nanos });
  assert.deepEqual(
    durations.map((each) => each.map(plain)),
    [
      [{ seconds: 0, nanos: 0 }, null, { seconds: 1, nanos: 500_000_000 }],
      [null, null, null],
    ],
  );
});

test("a nack's action parks an event at once or skips it, and a misspelt action is refused here", async () => {
  const client = new ChronicleClient(server.address);
  const group = `actions-${randomUUID().slice(0, 8)}`;
  const [poison, skipped, fine] = [`acc-${randomUUID()}`, `acc-${randomUUID()}`, `acc-${randomUUID()}`];
  try {
    // Five attempts allowed: a nack that retried would not park or settle anything here.
    const created = await client.createGroup(group, {
      aggregateTypes: ['Account'],
      fromEnd: true,
      maxDeliveryAttempts: 5,
      maxUnansweredTimeouts: 0, // 0 sent as 0: never cut (unset: the server's 3)
    });
    assert.equal(created.max_unanswered_timeouts, 0);
    for (const id of [poison, skipped, fine]) await client.submit(id, 'bank.v1.OpenAccount', { owner: 'ann' });
    const worker = client.consume(group, 'worker-1');
    const seen = [];
    for await (const delivery of worker.deliveries) {
      const id = delivery.event.aggregate_id;
      seen.push(id);
      if (id === poison) {
        assert.throws(() => delivery.nack('x', { action: 'drop' }), (error) => error.reason === 'INVALID_OPTION');
        delivery.park('poison (test)');
      } else if (id === skipped) delivery.nack('', { action: 'skip' });
      else delivery.ack();
      if (seen.length === 3) break;
    }
    let info;
    for (let tries = 0; tries < 200; tries += 1) {
      info = await client.getGroup(group);
      if (info.parked === 1 && info.acknowledged === 1 && info.skipped === 1 && info.lag === 0) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await worker.close();
    // The skipped one is neither parked nor acknowledged: counted as skipped.
    assert.deepEqual([info.parked, info.acknowledged, info.skipped, info.dismissed, info.lag], [1, 1, 1, 0, 0]);
    const parked = await client.listParked(group);
    assert.deepEqual(
      parked.map((p) => [p.aggregate_id, p.attempts, p.reason]),
      [[poison, 1, 'poison (test)']],
    );
    await client.deleteGroup(group);
  } finally {
    client.close();
  }
});

test('updateGroup changes the settings given, keeps the others, and is refused with its reasons', async () => {
  const client = new ChronicleClient(server.address);
  const group = `updating-${randomUUID().slice(0, 8)}`;
  try {
    const created = await client.createGroup(group, { maxDeliveryAttempts: 3, ackTimeoutSeconds: 20, segments: 2 });
    const updated = await client.updateGroup(group, { maxDeliveryAttempts: 7, ackTimeoutSeconds: 0.5 });
    assert.equal(updated.name, group);
    assert.equal(updated.max_delivery_attempts, 7);
    assert.deepEqual(updated.ack_timeout, { seconds: 0, nanos: 500_000_000 });
    // Left out: as they were.
    assert.deepEqual(updated.retry_backoff, created.retry_backoff);
    assert.deepEqual(updated.max_retry_backoff, created.max_retry_backoff);
    assert.equal(updated.segments, 2);
    // Kept by the server, not only echoed.
    assert.equal((await client.getGroup(group)).max_delivery_attempts, 7);
    // The bound on unanswered ack timeouts, and 0 (never cut) sent as 0.
    assert.equal((await client.updateGroup(group, { maxUnansweredTimeouts: 5 })).max_unanswered_timeouts, 5);
    assert.equal((await client.updateGroup(group, { maxUnansweredTimeouts: 0 })).max_unanswered_timeouts, 0);
    // The group's own segment count is no change; another one is refused.
    assert.equal((await client.updateGroup(group, { segments: 2, retryBackoffSeconds: 0 })).retry_backoff.seconds, 0);
    await assert.rejects(client.updateGroup(group, { segments: 4 }), (error) => {
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.equal(error.reason, 'SETTING_NOT_UPDATABLE');
      assert.deepEqual(
        error.fieldViolations.map((v) => v.field),
        ['segments'],
      );
      return true;
    });
    // Nothing given (null is left out, as in createGroup): the server says so.
    for (const settings of [{}, { ackTimeoutSeconds: null }]) {
      await assert.rejects(client.updateGroup(group, settings), (error) => {
        assert.equal(error.code, 'INVALID_ARGUMENT');
        assert.equal(error.reason, 'NO_SETTING_GIVEN');
        return true;
      });
    }
    const missing = `missing-${randomUUID().slice(0, 8)}`;
    await assert.rejects(client.updateGroup(missing, { maxDeliveryAttempts: 2 }), (error) => {
      assert.equal(error.code, 'NOT_FOUND');
      assert.equal(error.reason, 'GROUP_NOT_FOUND');
      return true;
    });
    // A key that is no setting (the filter, a typo) is refused here, before anything is sent.
    await assert.rejects(client.updateGroup(group, { ackTimeout: 5 }), (error) => {
      assert.equal(error.code, 'INVALID_ARGUMENT');
      assert.equal(error.reason, 'INVALID_OPTION');
      assert.match(error.message, /"ackTimeout" is no setting/);
      return true;
    });
    assert.equal((await client.getGroup(group)).ack_timeout.nanos, 500_000_000);
  } finally {
    await client.deleteGroup(group).catch(() => {});
    client.close();
  }
});
