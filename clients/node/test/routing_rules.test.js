// What a routing client's Routes (src/routing.js) decides, with the test's
// clock and stand-in stubs (no server): which topologies it takes, by epoch
// and partition count, and how long it leaves a member that failed alone.
// Epochs order the topologies of one partition group only, so a topology of
// another partition count is taken whatever its epoch (replicas restarted
// with another --partitions); of the client's group a lower epoch is a view
// behind the client's and is not taken, unless fetches keep answering a
// lower one (the database's epochs went back). One outage seen by many calls
// is one down period of a second; only probes, the calls sent once it ended,
// double it. Then the same through a client, against stand-in replicas:
// calls in flight to a member that fails them together.

import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, services } from '../src/chronicle.js';
import { DOWN_MS, MOST_DOWN_MS, Routes } from '../src/routing.js';
import { standInServer } from './stand_in.js';

const SEED = 'seed:1';
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function topology(epoch, { count = 64, owner = 'a' } = {}) {
  return {
    epoch,
    partition_count: count,
    hash: 'PARTITION_HASH_CRC32',
    members: ['a', 'b'].map((name) => ({ member_id: name, address: `${name}:1` })),
    partition_owners: Array(count).fill(owner),
  };
}

/** The trailing metadata of a command a member executed without owning it. */
function hint(epoch) {
  const metadata = new grpc.Metadata();
  metadata.set('chronicle-not-owner', '7');
  metadata.set('chronicle-topology-epoch', String(epoch));
  return metadata;
}

/**
 * Routes whose every member's GetTopology answers `seed.answer` (counted in
 * `seed.fetches`), whose watch never sends anything, on the clock `clock`
 * ({ now } in ms).
 */
function standInRoutes(seed, clock) {
  class CommandService {
    getChannel() {
      return null;
    }
    close() {}
  }
  class ClusterService {
    GetTopology(_request, _options, callback) {
      seed.fetches += 1;
      const call = new EventEmitter();
      const answer = seed.answer;
      setImmediate(() => {
        callback(null, { topology: answer });
        call.emit('status', { metadata: new grpc.Metadata() });
      });
      return call;
    }
    WatchTopology() {
      let end;
      const ended = new Promise((resolve) => (end = resolve));
      return {
        cancel: () => end(),
        async *[Symbol.asyncIterator]() {
          await ended;
        },
      };
    }
  }
  return new Routes(SEED, { api: { CommandService, ClusterService }, clock: () => clock.now });
}

/** Once the fetch a hint or a failure started (if any) is done. */
async function refreshed(routes) {
  await routes.refreshing;
}

test('a topology of another partition count is taken whatever its epoch', async () => {
  // Replicas restarted one by one with --partitions 128 instead of 64 answer
  // with the partitions/128 group's topology, whose epoch is far below the
  // partitions/64 one the client holds.
  const clock = { now: 1_000_000 };
  const seed = { answer: topology(3275), fetches: 0 };
  const routes = standInRoutes(seed, clock);
  try {
    await routes.ready;
    assert.equal(routes.topology.epoch, 3275);
    routes.adopt(topology(342, { count: 128, owner: 'b' })); // from the watch
    assert.deepEqual([routes.topology.partition_count, routes.topology.epoch], [128, 342]);
    assert.equal(routes.ownerOf('acc-1'), 'b:1');

    routes.adopt(topology(3275)); // back to the 64 group (a member of it answered)
    assert.equal(routes.topology.partition_count, 64);
    seed.answer = topology(342, { count: 128, owner: 'b' });
    routes.hinted(hint(342)); // a partitions/128 member, which does not own acc-1
    await refreshed(routes);
    assert.equal(seed.fetches, 2);
    assert.deepEqual([routes.topology.partition_count, routes.topology.epoch], [128, 342]);
  } finally {
    routes.close();
  }
});

test('lower epochs fetched for two seconds are taken, and a lagging view is not', async () => {
  // The database's epochs went back (a restored database): every member
  // answers a lower epoch than the client's for good, and hints say the
  // client routes wrong. A lower hint fetches once a second at most, and the
  // third lower fetch in a row, two seconds after the first, is taken. A
  // view a heartbeat behind (fetched lower once, then the held epoch again)
  // is not, nor a lower topology from the watch, nor lower fetches in quick
  // succession.
  const clock = { now: 1_000_000 };
  const held = topology(3275, { owner: 'a' });
  const seed = { answer: held, fetches: 0 };
  const routes = standInRoutes(seed, clock);
  const fetched = () => [seed.fetches - 1, routes.topology]; // not counting the first
  try {
    await routes.ready;
    seed.answer = topology(3274, { owner: 'b' }); // its view lags a heartbeat
    routes.hinted(hint(3274));
    await refreshed(routes);
    assert.deepEqual(fetched(), [1, held]);
    for (let n = 0; n < 5; n += 1) {
      // members failing fetch at once, but lower fetches count once a second
      routes.unreachable(`m${n}:1`);
      await refreshed(routes);
      clock.now += 100;
    }
    assert.deepEqual(fetched(), [6, held]);
    clock.now += 1000;
    seed.answer = held; // caught up
    routes.hinted(hint(3274));
    await refreshed(routes);
    assert.deepEqual(fetched(), [7, held]);
    for (let n = 0; n < 3; n += 1) {
      // the lower topology of the watch is never taken
      clock.now += 1000;
      routes.adopt(topology(3274, { owner: 'b' }));
    }
    assert.equal(routes.topology, held);

    const restored = topology(342, { owner: 'b' });
    seed.answer = restored;
    clock.now += 1000;
    routes.hinted(hint(342));
    await refreshed(routes);
    assert.deepEqual(fetched(), [8, held]); // one lower fetch: the count starts again
    clock.now += 500;
    routes.hinted(hint(342)); // within the second: no fetch
    await refreshed(routes);
    assert.deepEqual(fetched(), [8, held]);
    clock.now += 500;
    routes.hinted(hint(342));
    await refreshed(routes);
    assert.deepEqual(fetched(), [9, held]);
    clock.now += 1000;
    routes.hinted(hint(342));
    await refreshed(routes);
    assert.deepEqual(fetched(), [10, restored]);
    assert.equal(routes.ownerOf('acc-1'), 'b:1');
    routes.adopt(topology(343, { owner: 'a' })); // and the watch's next one follows
    assert.equal(routes.ownerOf('acc-1'), 'a:1');
  } finally {
    routes.close();
  }
});

test('calls in flight when a member is marked down add no down time; probes that fail double it', async () => {
  assert.deepEqual([DOWN_MS, MOST_DOWN_MS], [1000, 30000]);
  const member = 'a:1';
  const clock = { now: 1_000_000 };
  const routes = standInRoutes({ answer: topology(1), fetches: 0 }, clock);
  /** `member` stays marked down for `ms` from now, no more. */
  const assertDownFor = (ms) => {
    assert.equal(routes.isDown(member), ms > 0, `down now: ${routes.isDown(member)}`);
    if (ms === 0) return;
    const start = clock.now;
    clock.now = start + ms - 1;
    assert.ok(routes.isDown(member), `down for less than ${ms} ms`);
    clock.now = start + ms;
    assert.ok(!routes.isDown(member), `down for more than ${ms} ms`);
    clock.now = start;
  };
  try {
    await routes.ready;
    const sent = clock.now; // six calls sent to the member
    clock.now += 12_000; // SIGSTOP for 12 s: they all fail, one after another
    for (let n = 0; n < 6; n += 1) {
      routes.unreachable(member);
      clock.now += 10;
    }
    assertDownFor(940); // one down period: a second from the first failure

    clock.now += 500;
    routes.unreachable(member, clock.now - 200); // sent to it while it was down (the address given)
    assertDownFor(440);

    clock.now += 440; // its down period ended
    routes.unreachable(member, sent); // one more call sent before it was marked down
    assertDownFor(0);
    const probes = [clock.now, clock.now + 100]; // calls sent now are probes
    clock.now += 500;
    for (const probe of probes) routes.unreachable(member, probe);
    assertDownFor(2000); // the first probe's failure doubles it, once
    for (const down of [2000, 4000, 8000, 16000, 30000, 30000]) {
      // probes that keep failing
      clock.now += down;
      routes.unreachable(member, clock.now);
      assertDownFor(Math.min(down * 2, MOST_DOWN_MS));
    }

    clock.now += 1000;
    routes.answered(member); // a call in flight came back: it is alive
    clock.now += 29_000;
    routes.unreachable(member, clock.now);
    assertDownFor(1000); // back to a second
    await refreshed(routes);
  } finally {
    routes.close();
  }
});

test('calls in flight to a member that fails them together mark it down once, for a second', async () => {
  // Two stand-in replicas of four partitions; `a` owns them all, waits until
  // six Submits arrived, and fails them all UNAVAILABLE (a connection lost,
  // as gRPC says it); `b` answers. Later Submits `a` answers too.
  const inFlight = 6;
  const replicas = {};
  const answered = { a: [], b: [] };
  const waiting = [];
  let failedAll = false;
  const topologyOf = () => ({
    epoch: 1,
    partition_count: 4,
    hash: 'PARTITION_HASH_CRC32',
    members: ['a', 'b'].map((name) => ({ member_id: name, address: replicas[name].address })),
    partition_owners: Array(4).fill('a'),
  });
  for (const name of ['a', 'b']) {
    replicas[name] = await standInServer(
      services.CommandService,
      {
        Submit(call, callback) {
          const answer = () => {
            answered[name].push(call.request.command.aggregate_id);
            callback(null, { events: [], version: 1, replayed: false });
          };
          if (name === 'b' || failedAll) return answer();
          waiting.push(callback);
          if (waiting.length === inFlight) {
            for (const failed of waiting.splice(0)) {
              failed({ code: grpc.status.UNAVAILABLE, details: 'connection lost (simulated)' });
            }
            failedAll = true;
          }
        },
      },
      [
        [
          services.ClusterService,
          {
            GetTopology: (_call, callback) => callback(null, { topology: topologyOf() }),
            WatchTopology: (call) => call.write({ topology: topologyOf() }),
          },
        ],
      ],
    );
  }
  const client = new ChronicleClient(replicas.a.address, { routing: true });
  try {
    const routes = client.routes;
    await routes.waitFor((t) => t.epoch === 1);
    const accounts = Array.from({ length: inFlight }, (_, n) => `acc-${n}`);
    await Promise.all(accounts.map((account) => client.submit(account, 'bank.v1.Deposit', { amount: 1 })));
    assert.deepEqual(answered.b.sort(), accounts); // each sent again, elsewhere
    assert.equal(routes.isDown(replicas.a.address), true);
    await sleep(DOWN_MS + 100);
    assert.equal(routes.isDown(replicas.a.address), false); // one down period, not six
    await client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 });
    assert.deepEqual(answered.a, ['acc-1']); // the owner has its commands again
  } finally {
    client.close();
    replicas.a.stop();
    replicas.b.stop();
  }
});
