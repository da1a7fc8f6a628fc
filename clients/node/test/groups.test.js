// Consuming a subscription group from Node against a real server process.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';

import { ChronicleClient } from '../src/chronicle.js';
import { groupWalkthrough } from '../src/group_example.js';
import { startServer } from './server.js';

let server;

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
