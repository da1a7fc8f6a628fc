// The client's keepalive pings (keepaliveSeconds): a server that accepts
// them (--min-client-ping-seconds) keeps an idle subscription on its
// connection; a connection that falls silent (a TCP proxy that stops
// forwarding, as a network cut or a vanished host does) ends the
// subscription UNAVAILABLE once a ping goes unanswered, where without pings
// it would wait for ever. A connection the server closed as idle
// (--max-connection-idle-seconds) is opened again for the next call. And a
// routed command whose owner does not answer within the attempt goes to
// another replica, the owner marked down for longer each time it fails again.

import assert from 'node:assert/strict';
import net from 'node:net';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { ChronicleClient, ChronicleError, keepaliveOptions, services, unpack } from '../src/chronicle.js';
import { DOWN_MS, MOST_DOWN_MS } from '../src/routing.js';
import { startServer } from './server.js';
import { standInServer } from './stand_in.js';

const PING = 0.3; // seconds: the test clients' keepalive and its timeout
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A TCP proxy to `port` that forwards until `silence()`, then holds everything, closing nothing. */
async function silentProxy(port) {
  let silent = false;
  const sockets = [];
  const proxy = { connections: 0, silence: () => (silent = true) };
  const server = net.createServer((client) => {
    proxy.connections += 1;
    const upstream = net.connect(port, '127.0.0.1');
    sockets.push(client, upstream);
    for (const [from, to] of [
      [client, upstream],
      [upstream, client],
    ]) {
      from.on('data', (data) => silent || to.write(data));
      from.on('error', () => {});
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.address = `127.0.0.1:${server.address().port}`;
  proxy.close = () => {
    for (const socket of sockets) socket.destroy();
    server.close();
  };
  return proxy;
}

let server;
let proxy;

before(async () => {
  server = await startServer({ args: ['--anonymous-admin', '--min-client-ping-seconds', '0.1'] });
});

after(async () => {
  proxy?.close();
  await server?.stop();
});

async function subscribedThroughProxy(options) {
  proxy?.close();
  proxy = await silentProxy(Number(server.address.split(':')[1]));
  const client = new ChronicleClient(proxy.address, options);
  const subscription = client.subscribe({}, { fromEnd: true, maxAttempts: 1 });
  const first = await subscription.messages.next(); // caught up: the call is open
  assert.equal(first.value.kind, 'caught_up');
  return { client, subscription };
}

test('an idle subscription stays on its connection while the client pings', async () => {
  const { client, subscription } = await subscribedThroughProxy({ keepaliveSeconds: PING, keepaliveTimeoutSeconds: PING });
  try {
    await sleep(10 * PING * 1000); // gRPC's default policy sends GOAWAY after the third such ping
    const writer = new ChronicleClient(server.address);
    const accountId = `acc-${randomUUID()}`;
    await writer.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    writer.close();
    let next;
    do next = await subscription.messages.next();
    while (next.value.kind !== 'event');
    assert.equal(next.value.event.aggregate_id, accountId);
    assert.equal(proxy.connections, 1); // never reopened
  } finally {
    subscription.cancel();
    client.close();
  }
});

test('an idle subscription whose connection fell silent ends UNAVAILABLE', { timeout: 15_000 }, async () => {
  const { client, subscription } = await subscribedThroughProxy({ keepaliveSeconds: PING, keepaliveTimeoutSeconds: PING });
  try {
    proxy.silence();
    await assert.rejects(subscription.messages.next(), (error) => error.code === 'UNAVAILABLE');
  } finally {
    subscription.cancel();
    client.close();
  }
});

test('without pings, a subscription on a silent connection waits', async () => {
  const { client, subscription } = await subscribedThroughProxy({ keepaliveSeconds: null });
  try {
    proxy.silence();
    const next = subscription.messages.next();
    const outcome = await Promise.race([next.then(() => 'ended', () => 'ended'), sleep(10 * PING * 1000).then(() => 'waiting')]);
    assert.equal(outcome, 'waiting');
  } finally {
    subscription.cancel();
    client.close();
  }
});

test('a connection the server closed as idle is opened again for the next call, unnoticed', async () => {
  const idleServer = await startServer({ args: ['--anonymous-admin', '--max-connection-idle-seconds', '0.3'] });
  const idleProxy = await silentProxy(Number(idleServer.address.split(':')[1]));
  const client = new ChronicleClient(idleProxy.address);
  try {
    const accountId = `acc-${randomUUID()}`;
    await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    await sleep(2000); // the server closes it between 0.3 and 0.6 s after the call
    const deposited = await client.submit(accountId, 'bank.v1.Deposit', { amount: 5 });
    assert.equal(deposited.version, 2);
    assert.equal(idleProxy.connections, 2); // a new connection, and no error
  } finally {
    client.close();
    idleProxy.close();
    await idleServer.stop();
  }
});

test('bad keepalives are refused when the client is made', () => {
  assert.deepEqual(keepaliveOptions(null, 10), {});
  for (const [seconds, timeout] of [
    [0, 1],
    [-1, 1],
    [1, 0],
  ]) {
    assert.throws(
      () => new ChronicleClient('127.0.0.1:1', { keepaliveSeconds: seconds, keepaliveTimeoutSeconds: timeout }),
      (error) => error instanceof ChronicleError && error.reason === 'INVALID_OPTION' && error.cause instanceof RangeError,
    );
  }
});

test('a routed submit whose owner does not answer in time goes to another replica, the owner down longer each time', async () => {
  // Two stand-in replicas of one partition; `a` owns it and never answers a Submit.
  const replicas = {};
  const topology = () => ({
    epoch: 1,
    partition_count: 1,
    hash: 'PARTITION_HASH_CRC32',
    members: [
      { member_id: 'a', address: replicas.a.address },
      { member_id: 'b', address: replicas.b.address },
    ],
    partition_owners: ['a'],
  });
  for (const name of ['a', 'b']) {
    const submits = [];
    replicas[name] = await standInServer(
      services.CommandService,
      {
        Submit(call, callback) {
          submits.push(call.request.command.command_id);
          if (name === 'a') return; // no answer: the client's deadline passes
          const amount = unpack(call.request.command.payload).amount;
          callback(null, { events: [], version: amount, replayed: false });
        },
      },
      [
        [
          services.ClusterService,
          {
            GetTopology: (_call, callback) => callback(null, { topology: topology() }),
            WatchTopology: (call) => call.write({ topology: topology() }),
          },
        ],
      ],
    );
    replicas[name].submits = submits;
  }
  const { a, b } = replicas;
  const client = new ChronicleClient(a.address, { routing: true, attemptTimeoutSeconds: PING });
  try {
    await client.routes.waitFor((t) => t.epoch === 1);
    const commandId = randomUUID();
    const submitted = await client.submit('acc-1', 'bank.v1.Deposit', { amount: 3 }, { commandId });
    assert.equal(submitted.version, 3);
    assert.deepEqual(a.submits, [commandId]);
    assert.deepEqual(b.submits, [commandId]); // the same id, elsewhere
    const routes = client.routes;
    const downFor = () => routes.down.get(a.address) - Date.now();
    assert.ok(downFor() > 0 && downFor() <= DOWN_MS, `down for ${downFor()} ms`);
    routes.unreachable(a.address); // another call failing while it is down: the same outage
    assert.ok(downFor() > 0 && downFor() <= DOWN_MS, `down for ${downFor()} ms`);
    // A probe: a call sent as its down period ended, that fails before it answered anything.
    const probeFails = () => routes.unreachable(a.address, routes.down.get(a.address));
    probeFails();
    assert.ok(downFor() > DOWN_MS && downFor() <= 2 * DOWN_MS, `down for ${downFor()} ms`);
    for (let n = 0; n < 10; n += 1) probeFails();
    assert.ok(downFor() > MOST_DOWN_MS - 1000 && downFor() <= MOST_DOWN_MS, `down for ${downFor()} ms`);
    routes.answered(a.address);
    probeFails();
    assert.ok(downFor() <= DOWN_MS, `down for ${downFor()} ms`); // back to a second
  } finally {
    client.close();
    a.stop();
    b.stop();
  }
});

/**
 * A stand-in replica whose first `hungCalls` SubmitStreamPages calls take
 * commands and never answer (a hung process whose connection still answers
 * pings); later calls answer each deposit at the version its amount says.
 */
async function standInStreams(hungCalls, topology = () => null) {
  const replica = { calls: 0, received: [] };
  const server = await standInServer(
    services.CommandService,
    {
      SubmitStreamPages(call) {
        replica.calls += 1;
        const hung = replica.calls <= hungCalls;
        call.on('data', (page) => {
          replica.received.push(...page.requests.map((request) => request.command.command_id));
          if (hung) return;
          call.write({
            results: page.requests.map((request) => ({
              command_id: request.command.command_id,
              ok: { events: [], version: unpack(request.command.payload).amount, replayed: false },
            })),
          });
        });
        call.on('end', () => hung || call.end());
        call.on('error', () => {});
      },
    },
    [
      [
        services.ClusterService,
        {
          GetTopology: (_call, callback) => callback(null, { topology: topology() }),
          WatchTopology: (call) => call.write({ topology: topology() }),
        },
      ],
    ],
  );
  return Object.assign(replica, server);
}

const deposits = (count) =>
  Array.from({ length: count }, (_, n) => ({
    aggregateId: 'acc-1',
    typeName: 'bank.v1.Deposit',
    fields: { amount: n + 1 },
    commandId: randomUUID(),
  }));

test('a command stream its server stopped answering is opened again, its commands sent again', { timeout: 15_000 }, async () => {
  const replica = await standInStreams(1);
  const client = new ChronicleClient(replica.address, { attemptTimeoutSeconds: PING });
  try {
    const commands = deposits(3);
    const results = [];
    for await (const result of client.submitStream(commands)) results.push(result);
    assert.deepEqual(
      results.map((r) => [r.command_id, r.submitted.version]),
      commands.map((c) => [c.commandId, c.fields.amount]),
    );
    assert.equal(replica.calls, 2);
    const ids = commands.map((c) => c.commandId);
    assert.deepEqual(replica.received, [...ids, ...ids]); // the same ids, again
  } finally {
    client.close();
    replica.stop();
  }
});

test('a server that never answers spends the attempts, however long each call was open', { timeout: 15_000 }, async () => {
  const replica = await standInStreams(1_000);
  const client = new ChronicleClient(replica.address, { attemptTimeoutSeconds: PING });
  try {
    const stream = client.submitStream(deposits(2), { maxAttempts: 2, renewAfterSeconds: PING / 5 });
    await assert.rejects(
      (async () => {
        for await (const _ of stream) assert.fail('no result was expected');
      })(),
      (error) => error.code === 'DEADLINE_EXCEEDED' && /no answer on the command stream/.test(error.message),
    );
    assert.equal(replica.calls, 2);
  } finally {
    client.close();
    replica.stop();
  }
});

test('a routed lane whose member stopped answering moves to another member, marked down', { timeout: 15_000 }, async () => {
  let a;
  let b;
  const topology = () => ({
    epoch: 1,
    partition_count: 1,
    hash: 'PARTITION_HASH_CRC32',
    members: [
      { member_id: 'a', address: a.address },
      { member_id: 'b', address: b.address },
    ],
    partition_owners: ['a'],
  });
  a = await standInStreams(1_000, topology);
  b = await standInStreams(0, topology);
  const client = new ChronicleClient(b.address, { routing: true, attemptTimeoutSeconds: PING });
  try {
    await client.routes.waitFor((t) => t.epoch === 1);
    const commands = deposits(3);
    const results = [];
    for await (const result of client.submitStream(commands)) results.push(result);
    assert.deepEqual(
      results.map((r) => r.submitted.version),
      commands.map((c) => c.fields.amount),
    );
    const ids = commands.map((c) => c.commandId);
    assert.deepEqual(a.received, ids);
    assert.deepEqual(b.received, ids);
    assert.equal(client.routes.isDown(a.address), true);
  } finally {
    client.close();
    a.stop();
    b.stop();
  }
});
