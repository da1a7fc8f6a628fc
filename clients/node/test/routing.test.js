// The routing client: the partition hash against the test vectors of
// docs/scaling.md, then commands routed to their owners among two replicas
// on PostgreSQL, and a replica killed under the client's feet; a routed
// command stream there too, and against stand-in replicas (an aggregate's
// commands kept in one lane across a change of owner, a lane moved to
// another member when its own breaks the call); and a routed stream whose
// connection a server closes at its age, which stays on that server.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, crc32, partitionOf, services, unpack } from '../src/chronicle.js';
import { startCluster, startServer } from './server.js';
import { recordMarks } from './routes.js';
import { standInServer } from './stand_in.js';

const repository = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const ROW = /^\| `([^`]*)` \| `([0-9a-f]*)` \| `([0-9a-f]{8})` \| (\d+) \| (\d+) \| (\d+) \|$/gm;

test('the partition hash gives every test vector of docs/scaling.md', () => {
  const text = fs.readFileSync(path.join(repository, 'docs', 'scaling.md'), 'utf8');
  const vectors = [...text.matchAll(ROW)];
  assert.ok(vectors.length >= 10, 'the test vectors table was not found');
  for (const [, id, utf8, crc, of64, of16, of1024] of vectors) {
    assert.equal(Buffer.from(id, 'utf8').toString('hex'), utf8, id);
    assert.equal(crc32(Buffer.from(id, 'utf8')), parseInt(crc, 16), id);
    assert.deepEqual(
      [partitionOf(id, 64), partitionOf(id, 16), partitionOf(id, 1024)],
      [Number(of64), Number(of16), Number(of1024)],
      id,
    );
  }
});

let cluster;

before(async () => {
  cluster = await startCluster({ replicas: 2 });
});

after(async () => {
  await cluster?.stop();
});

// Both replicas known, and each owning some partitions.
const sharedByTwo = (t) =>
  t.members.length === 2 && t.partition_owners.every(Boolean) && new Set(t.partition_owners).size === 2;
const opening = (aggregateId) => ({
  aggregateId,
  typeName: 'bank.v1.OpenAccount',
  fields: { owner: 'ann' },
  commandId: randomUUID(),
});
const depositing = (aggregateId, amount) => ({
  aggregateId,
  typeName: 'bank.v1.Deposit',
  fields: { amount },
  commandId: randomUUID(),
});
/** Each aggregate's versions, in the order its results were handed out. */
function versionsOf(results) {
  const versions = new Map();
  for (const { command, submitted } of results) {
    versions.set(command.aggregateId, [...(versions.get(command.aggregateId) ?? []), submitted?.version]);
  }
  return versions;
}
/** How many of `items` each key has, as sorted [key, count] pairs. */
function countBy(items, key) {
  const counts = new Map();
  for (const item of items) counts.set(key(item), (counts.get(key(item)) ?? 0) + 1);
  return [...counts].sort();
}
const errorsOf = (results) => results.filter((r) => r.error).map((r) => `${r.command_id}: ${r.error.reason}`);

test('a routed command stream gives each replica the commands of its aggregates, the results in order', async () => {
  const [first, second] = cluster.replicas;
  const client = new ChronicleClient(first.address, { origin: 'node-routing', routing: true });
  try {
    await client.routes.waitFor(sharedByTwo);
    const accounts = Array.from({ length: 40 }, () => `acc-${randomUUID()}`);
    const commands = accounts.map(opening);
    for (let round = 1; round <= 4; round += 1) {
      commands.push(...accounts.map((account, n) => depositing(account, round * 100 + n)));
    }
    // The window bounds the commands taken and not handed back, over both lanes.
    const window = 16;
    let taken = 0;
    let handedBack = 0;
    let furthest = 0;
    function* source() {
      for (const command of commands) {
        // Asked for one more: those taken and not received yet (the last
        // result handed back may still be on its way to the loop below).
        furthest = Math.max(furthest, taken - handedBack);
        taken += 1;
        yield command;
      }
    }
    const results = [];
    for await (const result of client.submitStream(source(), { window })) {
      handedBack += 1;
      results.push(result);
    }
    assert.deepEqual(
      results.map((r) => r.command_id),
      commands.map((c) => c.commandId),
    );
    assert.deepEqual(errorsOf(results), []); // none refused (NOT_OWNER or any other reason)
    const versions = versionsOf(results);
    for (const account of accounts) assert.deepEqual(versions.get(account), [1, 2, 3, 4, 5], account);
    assert.ok(furthest <= window && furthest > 1, `read ${furthest} ahead`);
    // Each command went to its owner's lane, and both replicas had some.
    const streamed = [...client.routes.streamed].sort();
    assert.deepEqual(streamed, countBy(commands, (c) => client.routes.ownerOf(c.aggregateId)));
    assert.deepEqual(streamed.map(([address]) => address), [first.address, second.address].sort());
    assert.equal(client.routes.notOwner, 0);
    const balance = (n) => [1, 2, 3, 4].reduce((sum, round) => sum + round * 100 + n, 0);
    for (const [n, account] of accounts.entries()) {
      assert.equal((await client.getAggregate(account)).state.balance, balance(n), account);
    }
  } finally {
    client.close();
  }
});

test("a routed batch goes to the replica that owns its aggregate", async () => {
  const [first, second] = cluster.replicas;
  const client = new ChronicleClient(first.address, { origin: 'node-routing', routing: true });
  try {
    await client.routes.waitFor(sharedByTwo);
    // Which replica answered each batch, as the routes hear it.
    const answeredBy = [];
    const answered = client.routes.answered.bind(client.routes);
    client.routes.answered = (address) => {
      answeredBy.push(address);
      answered(address);
    };
    const accounts = Array.from({ length: 20 }, () => `acc-${randomUUID()}`);
    for (const account of accounts) {
      const batch = await client.submitBatch([opening(account), depositing(account, 5)]);
      assert.equal(batch.version, 2, account);
    }
    assert.deepEqual(
      answeredBy,
      accounts.map((account) => client.routes.ownerOf(account)),
    );
    assert.deepEqual([...new Set(answeredBy)].sort(), [first.address, second.address].sort()); // both had some
    assert.equal(client.routes.notOwner, 0); // and neither said it was not the owner
  } finally {
    client.close();
  }
});

test('commands go to their owners, and around a replica that was killed', async () => {
  const [first, second] = cluster.replicas;
  const client = new ChronicleClient(first.address, { origin: 'node-routing', routing: true });
  try {
    const topology = await client.routes.waitFor((t) => t.members.length === 2 && t.partition_owners.every(Boolean));
    assert.equal(topology.partition_count, 64);
    const accounts = Array.from({ length: 40 }, () => `acc-${randomUUID()}`);
    for (const account of accounts) await client.submit(account, 'bank.v1.OpenAccount', { owner: 'ann' });
    const owners = new Set(accounts.map((account) => client.routes.ownerOf(account)));
    assert.deepEqual([...owners].sort(), [first.address, second.address].sort()); // both replicas were used
    assert.equal(client.routes.notOwner, 0); // and every command reached its owner

    // Kill the second replica (no goodbye: its leases lapse after two seconds).
    process.kill(second.pid, 'SIGKILL');
    const orphan = accounts.find((account) => client.routes.ownerOf(account) === second.address);
    const deposited = await client.submit(orphan, 'bank.v1.Deposit', { amount: 5 });
    assert.equal(deposited.version, 2); // executed by the survivor all the same
    const alone = await client.routes.waitFor(
      (t) => t.members.length === 1 && t.partition_owners.every((owner) => owner === t.members[0].member_id),
    );
    assert.equal(alone.members[0].address, first.address);
    assert.equal(client.routes.ownerOf(orphan), first.address);
    const again = await client.submit(orphan, 'bank.v1.Deposit', { amount: 5 });
    assert.equal(again.version, 3);
  } finally {
    client.close();
  }
});

test('a routed command stream goes on when a replica is killed under it: its lane moves to the survivor', async (t) => {
  // A cluster of its own: the one above lost a replica.
  const spare = await startCluster({ replicas: 2 });
  const [first, second] = spare.replicas;
  const client = new ChronicleClient(first.address, { origin: 'node-routing', routing: true });
  try {
    await client.routes.waitFor(sharedByTwo);
    const accounts = Array.from({ length: 40 }, () => `acc-${randomUUID()}`);
    const opened = [];
    for await (const result of client.submitStream(accounts.map(opening))) opened.push(result);
    assert.deepEqual(errorsOf(opened), []);
    const rounds = 25;
    const commands = [];
    for (let round = 1; round <= rounds; round += 1) {
      commands.push(...accounts.map((account) => depositing(account, round)));
    }
    const owners = new Map(accounts.map((account) => [account, client.routes.ownerOf(account)]));
    const openedBySecond = client.routes.streamed.get(second.address);
    const results = [];
    let unansweredBySecond = 0;
    for await (const result of client.submitStream(commands)) {
      if (results.push(result) !== 100) continue;
      // Deposits given to the second's lane and not answered yet.
      const answered = results.filter((r) => owners.get(r.command.aggregateId) === second.address).length;
      unansweredBySecond = client.routes.streamed.get(second.address) - openedBySecond - answered;
      // No goodbye: the lane's call breaks with UNAVAILABLE, the leases lapse after two seconds.
      process.kill(second.pid, 'SIGKILL');
    }
    assert.ok(unansweredBySecond > 0, `${unansweredBySecond} deposits on the second when it was killed`);
    assert.deepEqual(
      results.map((r) => r.command_id),
      commands.map((c) => c.commandId),
    );
    assert.deepEqual(errorsOf(results), []);
    const expected = Array.from({ length: rounds }, (_, n) => n + 2);
    const versions = versionsOf(results);
    for (const account of accounts) assert.deepEqual(versions.get(account), expected, account);
    // What was acknowledged is what the accounts hold: nothing lost, nothing twice.
    const acknowledged = new Map();
    for (const { command } of results) {
      acknowledged.set(command.aggregateId, (acknowledged.get(command.aggregateId) ?? 0) + command.fields.amount);
    }
    for (const account of accounts) {
      const state = await client.getAggregate(account);
      assert.deepEqual([state.version, state.state.balance], [rounds + 1, acknowledged.get(account)], account);
    }
    t.diagnostic(`${results.filter((r) => r.submitted.replayed).length} results replayed after the kill`);
  } finally {
    client.close();
    await spare.stop();
  }
});

// Stand-in replicas: each answers ClusterService with the topology the test
// publishes, and handles SubmitStreamPages as the test says.
function standInCluster() {
  const watchers = new Set();
  return {
    topology: null,
    watchers,
    publish(topology) {
      this.topology = topology;
      for (const watcher of watchers) watcher.write({ topology });
    },
  };
}

/**
 * `onPage(call, requests, page)` for each SubmitPage, `requests` all of the
 * call's so far; `onEnd(call)` when the client has sent its last;
 * `onSubmit(request)` for each unary Submit: its status if it fails the
 * call, else null (the deposit is accepted).
 */
async function standInReplica(cluster, onPage, onEnd = (call) => call.end(), onSubmit = () => null) {
  const calls = [];
  const submits = [];
  const replica = await standInServer(
    services.CommandService,
    {
      Submit(call, callback) {
        submits.push(call.request.command.command_id);
        const failure = onSubmit(call.request);
        if (failure) callback(failure);
        else callback(null, accepted(call.request, amountOf(call.request)).ok);
      },
      SubmitStreamPages(call) {
        const requests = [];
        calls.push(requests);
        call.on('data', (page) => {
          requests.push(...page.requests);
          onPage(call, requests, page.requests);
        });
        call.on('end', () => onEnd(call));
      },
    },
    [
      [
        services.ClusterService,
        {
          GetTopology(_call, callback) {
            callback(null, { topology: cluster.topology });
          },
          WatchTopology(call) {
            cluster.watchers.add(call);
            call.on('cancelled', () => cluster.watchers.delete(call));
            call.write({ topology: cluster.topology });
          },
        },
      ],
    ],
  );
  return {
    ...replica,
    calls,
    submits,
    received: () => calls.flat().map((request) => request.command.command_id),
  };
}

/** One partition, owned by member `owner` ('a' or 'b'). */
const topologyOf = (epoch, owner, a, b) => ({
  epoch,
  partition_count: 1,
  hash: 'PARTITION_HASH_CRC32',
  members: [
    { member_id: 'a', address: a.address },
    { member_id: 'b', address: b.address },
  ],
  partition_owners: [owner],
});
const accepted = (request, version) => ({
  command_id: request.command.command_id,
  ok: { events: [], version, replayed: false },
});
const amountOf = (request) => unpack(request.command.payload).amount;
// A stand-in replica's answer to each page: every deposit accepted, at the version its amount says.
const answerEachPage = (call, _requests, page) => {
  call.write({ results: page.map((request) => accepted(request, amountOf(request))) });
};

test("an aggregate's commands follow a new owner only once none is unanswered", { timeout: 15_000 }, async () => {
  const cluster = standInCluster();
  // `a` answers once it has two commands: acc-1's second must come to it,
  // though acc-1's owner is `b` by then (sent to `b`, the test times out).
  const a = await standInReplica(cluster, (call, requests) => {
    if (requests.length === 2) call.write({ results: requests.map((request) => accepted(request, amountOf(request))) });
  });
  const b = await standInReplica(cluster, answerEachPage);
  cluster.topology = topologyOf(1, 'a', a, b);
  const client = new ChronicleClient(a.address, { routing: true });
  try {
    await client.routes.waitFor((t) => t.epoch === 1);
    const commands = [depositing('acc-1', 1), depositing('acc-1', 2), depositing('acc-2', 1), depositing('acc-1', 3)];
    let answered;
    const twoHandedBack = new Promise((resolve) => {
      answered = resolve;
    });
    async function* source() {
      yield commands[0]; // to `a`, the owner
      cluster.publish(topologyOf(2, 'b', a, b));
      await client.routes.waitFor((t) => t.epoch === 2);
      yield commands[1]; // acc-1's first is unanswered: to `a` all the same
      yield commands[2]; // to `b`, the owner now
      await twoHandedBack;
      yield commands[3]; // nothing of acc-1 unanswered: to `b`, its owner now
    }
    const results = [];
    for await (const result of client.submitStream(source())) {
      if (results.push(result) === 2) answered();
    }
    assert.deepEqual(
      results.map((r) => [r.command_id, r.submitted.version]),
      commands.map((c) => [c.commandId, c.fields.amount]),
    );
    assert.deepEqual(a.received(), [commands[0].commandId, commands[1].commandId]);
    assert.deepEqual(b.received(), [commands[2].commandId, commands[3].commandId]);
  } finally {
    client.close();
    a.stop();
    b.stop();
  }
});

test('a lane whose replica breaks its call sends its unanswered commands to another, same ids', async () => {
  const cluster = standInCluster();
  const a = await standInReplica(
    cluster,
    (call) => setImmediate(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'going away (test)' })),
    () => {}, // it ends with UNAVAILABLE, not on the client's end
  );
  const b = await standInReplica(cluster, answerEachPage);
  cluster.topology = topologyOf(1, 'a', a, b);
  const client = new ChronicleClient(a.address, { routing: true });
  try {
    await client.routes.waitFor((t) => t.epoch === 1);
    const commands = [1, 2, 3].map((amount) => depositing('acc-1', amount));
    const results = [];
    for await (const result of client.submitStream(commands)) results.push(result);
    assert.deepEqual(
      results.map((r) => [r.command_id, r.submitted.version]),
      commands.map((c) => [c.commandId, c.fields.amount]),
    );
    const ids = commands.map((c) => c.commandId);
    assert.deepEqual(a.received(), ids);
    assert.deepEqual(b.received(), ids); // the same commands, the same ids, in order
    assert.equal(client.routes.isDown(a.address), true); // unary sends step around it too, for a second
  } finally {
    client.close();
    a.stop();
    b.stop();
  }
});

for (const [ended, gone] of [
  ['going away (test)', true],
  ['max connection age', false],
]) {
  test(`a routed submit its owner failed UNAVAILABLE "${ended}" is sent again ${gone ? 'to another replica, the owner marked down' : 'to the owner, alive'}`, async () => {
    const cluster = standInCluster();
    let failures = 1;
    const a = await standInReplica(cluster, answerEachPage, undefined, () =>
      failures-- > 0 ? { code: grpc.status.UNAVAILABLE, details: ended } : null,
    );
    const b = await standInReplica(cluster, answerEachPage);
    cluster.topology = topologyOf(1, 'a', a, b);
    const client = new ChronicleClient(a.address, { routing: true });
    try {
      await client.routes.waitFor((t) => t.epoch === 1);
      const commandId = randomUUID();
      const submitted = await client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 }, { commandId });
      assert.equal(submitted.version, 1);
      assert.deepEqual(a.submits, gone ? [commandId] : [commandId, commandId]);
      assert.deepEqual(b.submits, gone ? [commandId] : []);
      assert.equal(client.routes.isDown(a.address), gone);
    } finally {
      client.close();
      a.stop();
      b.stop();
    }
  });
}

test('a routed command stream whose connection aged out opens its call again on the same replica', async () => {
  // The server ends the calls of a connection a second after it opened and
  // 0.2 s of grace later (gRPC's UNAVAILABLE "max connection age"): alive,
  // it is not marked down.
  const aging = await startServer({
    args: ['--anonymous-admin', '--max-connection-age-seconds', '1', '--max-connection-age-grace-seconds', '0.2'],
  });
  const client = new ChronicleClient(aging.address, { routing: true });
  const marked = recordMarks(client.routes);
  try {
    await client.routes.ready;
    const [member] = client.routes.topology.members; // the lone server
    const stub = client.routes.stubsOf(member.address).commands;
    const calls = { count: 0 };
    const open = stub.SubmitStreamPages.bind(stub);
    stub.SubmitStreamPages = (...args) => {
      calls.count += 1;
      return open(...args);
    };
    const accountId = `acc-${randomUUID()}`;
    const commands = [opening(accountId)];
    async function* source() {
      yield commands[0];
      // Deposits until the lane's call was opened again twice, then one more.
      for (let n = 1; n <= 500 && calls.count < 3; n += 1) {
        commands.push(depositing(accountId, n));
        yield commands.at(-1);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
      commands.push(depositing(accountId, commands.length));
      yield commands.at(-1);
    }
    const results = [];
    for await (const result of client.submitStream(source())) results.push(result);
    assert.equal(calls.count, 3); // each time on its own replica
    assert.deepEqual(marked, []); // which was never marked down
    assert.equal(client.routes.isDown(member.address), false);
    assert.deepEqual(errorsOf(results), []);
    assert.deepEqual(
      results.map((r) => r.command_id),
      commands.map((c) => c.commandId),
    );
    assert.deepEqual(versionsOf(results).get(accountId), Array.from({ length: commands.length }, (_, n) => n + 1));
  } finally {
    client.close();
    await aging.stop();
  }
});
