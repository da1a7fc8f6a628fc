// The routing client: the partition hash against the test vectors of
// docs/scaling.md, then commands routed to their owners among two replicas
// on PostgreSQL, and a replica killed under the client's feet.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { ChronicleClient, crc32, partitionOf } from '../src/chronicle.js';
import { startCluster } from './server.js';

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
