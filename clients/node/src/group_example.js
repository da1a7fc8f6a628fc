// Competing consumers: a subscription group whose position the server
// keeps, consumed by one worker that acks what it handled and nacks what it
// could not (the server delivers a nacked event again after the backoff).
//
//   make run ARGS=--anonymous-admin            # creating a group takes the admin grant
//   cd clients/node && node src/group_example.js 127.0.0.1:50051
//
// `groupWalkthrough` is also what the test runs, against a server it starts.

import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';

import { ChronicleClient } from './chronicle.js';
import { describeFailure } from './example.js';

export async function groupWalkthrough(address, { log = console.log, accounts = 3, deposits = 2 } = {}) {
  // Retried for 5 s, not the default 30: run by hand, it says soon that nothing answers.
  const client = new ChronicleClient(address, { origin: 'node-example', retry: { retryForSeconds: 5 } });
  const group = `billing-${randomUUID().slice(0, 8)}`;
  const ids = Array.from({ length: accounts }, () => `acc-${randomUUID()}`);
  try {
    // Only new events: the group starts at the end of the log.
    await client.createGroup(group, { aggregateTypes: ['Account'], fromEnd: true, retryBackoffSeconds: 0.05, segments: 4 });
    for (const id of ids) {
      await client.submit(id, 'bank.v1.OpenAccount', { owner: 'ann' });
      for (let n = 1; n <= deposits; n += 1) await client.submit(id, 'bank.v1.Deposit', { amount: n });
    }
    const expected = accounts * (1 + deposits);

    const worker = client.consume(group, 'worker-1');
    const handled = [];
    let failedOnce = false;
    for await (const delivery of worker.deliveries) {
      const { event } = delivery;
      if (event.event_type === 'bank.v1.MoneyDeposited' && !failedOnce) {
        failedOnce = true; // pretend the first deposit could not be handled yet
        log(`  nack ${event.aggregate_id} v${event.version} (attempt ${delivery.attempt})`);
        delivery.nack('ledger busy');
        continue;
      }
      handled.push({ aggregateId: event.aggregate_id, version: event.version, attempt: delivery.attempt });
      log(`  ack  ${event.aggregate_id} v${event.version} ${event.event_type} (attempt ${delivery.attempt})`);
      delivery.ack();
      if (handled.length === expected) break;
    }
    worker.close();

    // The group's own accounting: each event counted once, when its
    // segment's checkpoint passed it.
    let info;
    for (let tries = 0; tries < 100; tries += 1) {
      [info] = (await client.listGroups()).filter((g) => g.name === group);
      if (info.acknowledged === expected) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    log(`group ${group}: ${info.acknowledged} acknowledged, lag ${info.lag}, parked ${info.parked}`);
    await client.deleteGroup(group);
    return { group, ids, handled, info };
  } finally {
    client.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const address = process.argv[2] ?? process.env.CHRONICLE_SERVER ?? '127.0.0.1:50051';
  groupWalkthrough(address).catch((error) => {
    console.error(describeFailure(error, address, { usage: 'node src/group_example.js HOST:PORT' }));
    process.exit(1);
  });
}
