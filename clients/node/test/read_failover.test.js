// Reads of a routing client fail over as its commands do: two replicas on a
// throwaway PostgreSQL (tests/support/node_cluster.py), the client given the
// first, which is killed mid-way. Its subscription resumes on the survivor
// from its last complete position (nothing skipped, nothing twice), its
// group consumer joins the group again there and gets every event, and its
// reads (getAggregate with minPosition, read, the projection and group
// calls) are served there, the dead replica marked down as for a command.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { ChronicleClient } from '../src/chronicle.js';
import { recordMarks } from './routes.js';
import { startCluster } from './server.js';

let cluster;

before(async () => {
  cluster = await startCluster({ replicas: 2, anonymousAdmin: true });
});

after(async () => {
  await cluster?.stop();
});

const sharedByTwo = (t) =>
  t.members.length === 2 && t.partition_owners.every(Boolean) && new Set(t.partition_owners).size === 2;

async function eventually(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('with routing, reads and a subscription go on on another replica when the address given dies', { timeout: 120_000 }, async () => {
  const [seed, survivor] = cluster.replicas;
  // A bound well below the old behaviour's end (reads on the dead seed's
  // channel, retried until the window closed): 15 s is ample for a failover.
  const client = new ChronicleClient(seed.address, { routing: true, retry: { retryForSeconds: 15 } });
  const received = [];
  let subscriptionFailure = null;
  try {
    await client.routes.waitFor(sharedByTwo);
    const marked = recordMarks(client.routes);
    const group = `failover-${randomUUID().slice(0, 8)}`;
    await client.createGroup(group, { aggregateTypes: ['Account'], ackTimeoutSeconds: 2 });
    const acked = new Set(); // aggregate ids whose event the consumer acked (a redelivery is no harm)
    const worker = client.consume(group, 'worker');
    const working = (async () => {
      for await (const delivery of worker.deliveries) {
        if (await delivery.ack()) acked.add(delivery.event.aggregate_id);
      }
    })();
    const subscription = client.subscribe({ aggregateTypes: ['Account'] });
    const consuming = (async () => {
      try {
        for await (const message of subscription.messages) if (message.kind === 'event') received.push(message.event);
      } catch (error) {
        subscriptionFailure = error;
      }
    })();
    const tag = randomUUID().slice(0, 8);
    const open = (n) => client.submit(`acc-${tag}-${n}`, 'bank.v1.OpenAccount', { owner: `owner-${n}` });
    const before = [];
    for (let n = 0; n < 10; n += 1) before.push(await open(n));
    await eventually(() => received.length >= 10, 'the first ten events on the subscription');
    // The subscription's call is on the seed: its death ends it.
    process.kill(seed.pid, 'SIGKILL');
    const afterKill = [];
    for (let n = 10; n < 20; n += 1) afterKill.push(await open(n));
    const last = afterKill.at(-1);

    // Read your write on the survivor, the seed being dead.
    const state = await client.getAggregate(`acc-${tag}-19`, { minPosition: last.position });
    assert.equal(state.version, 1);
    assert.equal(state.state.owner, 'owner-19');
    const events = await client.read(`acc-${tag}-15`, { minPosition: last.position });
    assert.deepEqual(
      events.map((e) => e.event_type),
      ['bank.v1.AccountOpened'],
    );
    assert.ok(Array.isArray(await client.projections.list()));
    assert.ok(Array.isArray(await client.listGroups()));
    assert.ok(marked.includes(seed.address), `the seed was not marked down: ${marked}`);
    assert.ok(!marked.includes(survivor.address), `the survivor was marked down: ${marked}`);

    // The subscription resumed there: every event once, in log order.
    await eventually(() => received.length >= 20, `all 20 events on the subscription (${received.length})`);
    await new Promise((resolve) => setTimeout(resolve, 300)); // a duplicate would come now
    assert.equal(subscriptionFailure, null);
    const positions = received.map((e) => e.position);
    assert.deepEqual(
      positions,
      [...before, ...afterKill].map((r) => r.position),
    );
    assert.equal(subscription.position, last.position);
    subscription.cancel();
    await consuming;

    // The consumer joined the group again on the survivor: every account's event acked.
    const ids = [...before, ...afterKill].map((r) => r.events[0].aggregate_id);
    await eventually(() => ids.every((id) => acked.has(id)), `all 20 events acked (${acked.size})`, 30_000);
    await worker.close();
    await working;
  } finally {
    await client.close();
  }
});
