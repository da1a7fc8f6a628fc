// A routing client given its seed spelt otherwise than the replica
// advertises itself (localhost:PORT for 127.0.0.1:PORT) knows them for one
// member, by the member id the seed answers with (Topology.answered_by),
// not by the address's spelling: two replicas on a throwaway PostgreSQL
// (tests/support/node_cluster.py), the seed killed. A command its member
// owned and the reads after it cost one failed attempt in all, not one
// under each name (routing.js, Routes.adopt and seedMember; the Python
// client's tests/integration/test_routing_seed_spelling.py is the same).

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { ChronicleClient } from '../src/chronicle.js';
import { recordMarks } from './routes.js';
import { startCluster } from './server.js';

let cluster;

before(async () => {
  cluster = await startCluster({ replicas: 2 });
});

after(async () => {
  await cluster?.stop();
});

const sharedByTwo = (t) =>
  t.members.length === 2 && t.partition_owners.every(Boolean) && new Set(t.partition_owners).size === 2;

test('a seed spelt otherwise than its replica advertises itself is that member, not a second one', { timeout: 120_000 }, async () => {
  const [seed, survivor] = cluster.replicas;
  const given = seed.address.replace('127.0.0.1', 'localhost');
  assert.notEqual(given, seed.address);
  const client = new ChronicleClient(given, { routing: true, retry: { retryForSeconds: 15 } });
  try {
    const topology = await client.routes.waitFor(sharedByTwo);
    const [seedId] = topology.members.filter((member) => member.address === seed.address).map((m) => m.member_id);
    assert.equal(client.routes.seedMember, seedId);
    const tag = randomUUID().slice(0, 8);
    const ids = Array.from({ length: 64 }, (_, n) => `acc-${tag}-${n}`);
    // The seed's partitions are owned by the address given; the other's as it advertises itself.
    assert.deepEqual(new Set(ids.map((id) => client.routes.ownerOf(id))), new Set([given, survivor.address]));
    const onSeed = ids.find((id) => client.routes.ownerOf(id) === given);
    const opened = await client.submit(onSeed, 'bank.v1.OpenAccount', { owner: 'ann' });
    assert.deepEqual([1, 2, 3].map(() => client.routes.reader()), [given, given, given]); // reads stay on the seed while it is up

    const marked = recordMarks(client.routes);
    process.kill(seed.pid, 'SIGKILL');
    const deposited = await client.submit(onSeed, 'bank.v1.Deposit', { amount: 5 }); // the survivor runs it
    const state = await client.getAggregate(onSeed, { minPosition: deposited.position });
    const events = await client.read(onSeed);
    // One failed attempt for the dead replica, under the name given; the
    // reads went to the survivor at once, not to the seed's other name.
    assert.deepEqual(marked, [given]);
    assert.deepEqual([opened.version, state.version, Number(state.state.balance), events.length], [1, 2, 5, 2]);
  } finally {
    await client.close();
  }
});
