// A replica that drains behind an L4 balancer: the client's subscriber and
// group consumer resume on the other replica at the start of the drain, not
// at its end. Two replicas (--shutdown-drain 10s) on a throwaway PostgreSQL
// behind a round-robin TCP balancer (a Kubernetes Service); the client's
// connection lands on the first, which gets SIGTERM and is taken out of the
// balancer, as a terminating pod's endpoint is. It ends the streams
// SHUTTING_DOWN; the client leaves that connection for a new one, which the
// balancer places on the other replica. Before, the client reopened on the
// same connection and was refused until the drain ended.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { after, before, test } from 'node:test';

import { ChronicleClient } from '../src/chronicle.js';
import { startCluster } from './server.js';

const DRAIN_SECONDS = 10;
let cluster;

before(async () => {
  cluster = await startCluster({ replicas: 2, anonymousAdmin: true, shutdownDrain: `${DRAIN_SECONDS}s` });
});

after(async () => {
  await cluster?.stop();
});

/** Each connection to the next backend in turn ({ port }); takeOut(port): no new connection goes there. */
async function roundRobinBalancer(backends) {
  const live = [...backends];
  const connections = new Map();
  const sockets = new Set();
  let turn = 0;
  const server = net.createServer((client) => {
    const port = live[turn++ % live.length];
    connections.set(port, (connections.get(port) ?? 0) + 1);
    const upstream = net.connect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => {});
      socket.on('close', () => sockets.delete(socket));
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: server.address().port,
    connections,
    takeOut: (port) => live.splice(live.indexOf(port), 1),
    close: () => {
      for (const socket of sockets) socket.destroy();
      server.close();
    },
  };
}

async function eventually(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

const portOf = (address) => Number(address.split(':').at(-1));

test('a subscriber and a consumer behind an L4 balancer move off a draining replica at once', { timeout: 120_000 }, async () => {
  const [draining, staying] = cluster.replicas;
  const balancer = await roundRobinBalancer([portOf(draining.address), portOf(staying.address)]);
  const client = new ChronicleClient(`127.0.0.1:${balancer.port}`, { retry: { initialBackoffSeconds: 0.05, maxBackoffSeconds: 0.5 } });
  const subscribed = [];
  const acked = [];
  try {
    const tag = randomUUID().slice(0, 8);
    const group = `drain-${tag}`;
    await client.createGroup(group, { aggregateTypes: ['Account'] }); // the first connection: the draining replica
    assert.deepEqual([...balancer.connections], [[portOf(draining.address), 1]]);
    const subscription = client.subscribe({ aggregateTypes: ['Account'], fromEnd: true });
    const subscribing = (async () => {
      for await (const message of subscription.messages) {
        if (message.kind === 'event') subscribed.push(message.event.aggregate_id);
      }
    })().catch(() => {});
    const worker = client.consume(group, 'auditor', { reconnectDelaySeconds: 0.05 });
    const working = (async () => {
      for await (const delivery of worker.deliveries) {
        if (await delivery.ack()) acked.push(delivery.event.aggregate_id);
      }
    })();
    await eventually(async () => {
      await client.submit(`before-${tag}-${randomUUID().slice(0, 4)}`, 'bank.v1.OpenAccount', { owner: 'a' });
      return subscribed.some((id) => id.startsWith(`before-${tag}`)) && acked.some((id) => id.startsWith(`before-${tag}`));
    }, 'the streams open on the draining replica');

    const began = Date.now();
    process.kill(draining.pid, 'SIGTERM');
    balancer.takeOut(portOf(draining.address));
    // Submitted until both streams carry one: they have moved.
    let n = 0;
    await eventually(async () => {
      n += 1;
      await client.submit(`after-${tag}-${n}`, 'bank.v1.OpenAccount', { owner: 'b' });
      return subscribed.some((id) => id.startsWith(`after-${tag}`)) && acked.some((id) => id.startsWith(`after-${tag}`));
    }, 'the streams resumed on the other replica', DRAIN_SECONDS * 1000);
    const movedSeconds = (Date.now() - began) / 1000;
    assert.ok(movedSeconds < DRAIN_SECONDS / 2, `the streams moved after ${movedSeconds} s of a ${DRAIN_SECONDS} s drain`);
    assert.equal(balancer.connections.get(portOf(staying.address)), 1);
    subscription.cancel();
    await subscribing;
    await worker.close();
    await working;
  } finally {
    await client.close();
    balancer.close();
  }
});
