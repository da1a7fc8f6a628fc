// A routing client's group consumer, alone in its client, joins its group on
// the survivor when the replica it consumes on stops (SIGTERM): two replicas
// on a throwaway PostgreSQL. (The Python client retried the stopped replica
// for ever when no subscription in the same client marked it down: its
// consumer's failure was not booked. This pins the same promise here.)

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

async function eventually(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

test('a consumer alone in its client joins its group on the survivor when its replica stops', { timeout: 120_000 }, async () => {
  const [seed, survivor] = cluster.replicas;
  const client = new ChronicleClient(seed.address, { routing: true, retry: { retryForSeconds: 15 } });
  try {
    await client.routes.waitFor(sharedByTwo);
    const group = `alone-${randomUUID().slice(0, 8)}`;
    await client.createGroup(group, { aggregateTypes: ['Account'], fromEnd: true });
    const acked = new Set();
    const worker = client.consume(group, 'alone', { reconnectDelaySeconds: 0.1 });
    const working = (async () => {
      for await (const delivery of worker.deliveries) {
        if (await delivery.ack()) acked.add(delivery.event.aggregate_id);
      }
    })();
    await eventually(() => worker.member !== '', 'the consumer joined');
    const marked = recordMarks(client.routes);
    process.kill(seed.pid, 'SIGTERM');
    const tag = randomUUID().slice(0, 8);
    const ids = [];
    for (let n = 0; n < 5; n += 1) {
      ids.push(`acc-${tag}-${n}`);
      await client.submit(ids.at(-1), 'bank.v1.OpenAccount', { owner: `owner-${n}` });
    }
    await eventually(() => ids.every((id) => acked.has(id)), 'the events written after the stop acked');
    assert.ok(marked.includes(seed.address), `the stopped seed marked down: ${marked}`);
    assert.ok(!marked.includes(survivor.address));
    // Its session reports its replica with its heartbeat: soon after it joined.
    const onTheSurvivor = async () => {
      const consumers = (await client.getGroup(group)).consumers;
      return consumers.length === 1 && consumers[0].replica_address === survivor.address;
    };
    await eventually(onTheSurvivor, 'the consumer reported on the survivor');
    await worker.close();
    await working;
  } finally {
    await client.close();
  }
});
