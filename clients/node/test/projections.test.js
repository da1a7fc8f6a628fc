// ProjectionService from Node against real server processes serving the
// example plugins (bank.balances_by_owner) and tests/support/projection_labels.py
// (labels.boxes parks an "unlabelable…" box, labels.strict stops at one,
// labels.late fails once on a "late…" box and tries again a second later).
// A server each, so that what one test parks or rebuilds is not another's.

import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

import { ChronicleClient } from '../src/chronicle.js';
import { startServer } from './server.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const BALANCES = 'bank.balances_by_owner';
const LABELS = 'labels.boxes';
const STRICT = 'labels.strict';
const LATE = 'labels.late';
const SERVE = ['--anonymous-admin', '--plugin', 'tests.support.projection_labels:plugin'];

/** A client of a fresh server (`args`: its arguments) for `body`; both closed after. */
async function withServer(body, { args = SERVE, retry = {} } = {}) {
  const server = await startServer({ args });
  const client = new ChronicleClient(server.address, { retry });
  try {
    await body(client, server);
  } finally {
    client.close();
    await server.stop();
  }
}

async function eventually(check, what, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await check()) return;
    if (Date.now() > deadline) assert.fail(`not within ${timeoutMs} ms: ${what}`);
    await sleep(50);
  }
}

async function caughtUp(client, name) {
  await eventually(async () => {
    const status = await client.projections.get(name);
    return status.position === status.log_head;
  }, `${name} caught up`);
}

async function all(iterable) {
  const found = [];
  for await (const one of iterable) found.push(one);
  return found;
}

function refusedWith(code, reason) {
  return (error) => {
    assert.equal(error.name, 'ChronicleError');
    assert.equal(`${error.code} ${error.reason}`, `${code} ${reason}`);
    return true;
  };
}

test('a document read with the position of the submit that wrote it holds that command', async () => {
  await withServer(async (client) => {
    // labels.late fails once on a "late…" box and tries again a second later.
    const created = await client.submit('box-1', 'box.v1.CreateBox', { name: 'late-1' });
    assert.equal(created.position, created.events[0].position);
    await assert.rejects(
      client.projections.document(LATE, 'box:box-1'),
      refusedWith('NOT_FOUND', 'DOCUMENT_NOT_FOUND'),
    );
    const found = await client.projections.document(LATE, 'box:box-1', { minPosition: created.position });
    assert.deepEqual(found.document, { '@type': 'box.v1.Box', name: 'late-1', archived: false });
    assert.equal(found.key, 'box:box-1');
    assert.ok(found.position >= created.position);
  });
});

test('a read the projection stays behind is PROJECTION_BEHIND, retried until it gets there', async () => {
  const args = [...SERVE, '--read-wait-seconds', '0.2'];
  await withServer(
    async (impatient, server) => {
      const created = await impatient.submit('box-1', 'box.v1.CreateBox', { name: 'late-2' });
      const behind = await impatient.projections
        .document(LATE, 'box:box-1', { minPosition: created.position })
        .catch((error) => error);
      assert.equal(`${behind.code} ${behind.reason}`, 'UNAVAILABLE PROJECTION_BEHIND');
      assert.notEqual(behind.retryDelaySeconds, null);
      const patient = new ChronicleClient(server.address);
      try {
        const found = await patient.projections.document(LATE, 'box:box-1', { minPosition: created.position });
        assert.equal(found.document.name, 'late-2');
      } finally {
        patient.close();
      }
    },
    { args, retry: { maxAttempts: 1 } },
  );
});

test('a read past where a projection stopped is PROJECTION_FAILED at once, not retried', async () => {
  await withServer(async (client) => {
    const stopped = await client.submit('box-1', 'box.v1.CreateBox', { name: 'unlabelable-1' });
    const started = Date.now();
    const failed = await client.projections
      .document(STRICT, 'box:box-1', { minPosition: stopped.position })
      .catch((error) => error);
    assert.equal(`${failed.code} ${failed.reason}`, 'FAILED_PRECONDITION PROJECTION_FAILED');
    assert.equal(failed.metadata.failed_at, String(stopped.position));
    assert.ok(Date.now() - started < 5000, 'not retried for retryForSeconds (30 s)');
  });
});

test('an event a projection is stopped on is skipped: parked, and the projection goes on', async () => {
  await withServer(async (client) => {
    const stopped = await client.submit('box-1', 'box.v1.CreateBox', { name: 'unlabelable-1' });
    await eventually(async () => (await client.projections.get(STRICT)).error !== '', `${STRICT} stopping`);
    await assert.rejects(
      client.projections.skip(STRICT, stopped.position + 1),
      (error) =>
        refusedWith('FAILED_PRECONDITION', 'NOT_STOPPED_AT')(error) &&
        error.metadata.stopped_at === String(stopped.position),
    );
    const parked = await client.projections.skip(STRICT, stopped.position);
    assert.equal(parked.position, stopped.position);
    assert.equal(parked.event_type, 'box.v1.BoxCreated');
    assert.ok(parked.parked_at instanceof Date);
    const next = await client.submit('box-2', 'box.v1.CreateBox', { name: 'fine' });
    const found = await client.projections.document(STRICT, 'box:box-2', { minPosition: next.position });
    assert.equal(found.document.name, 'fine');
    assert.equal((await client.projections.get(STRICT)).parked_events, 1);
  });
});

test('documents are decoded and followed page after page, in either order', async () => {
  await withServer(async (client) => {
    let last;
    for (let n = 0; n < 7; n += 1) {
      last = await client.submit(`acc-${n}`, 'bank.v1.OpenAccount', { owner: `owner-${n}` });
    }
    const keys = Array.from({ length: 7 }, (_, n) => `owner:owner-${n}`);
    const found = await all(
      client.projections.documents(BALANCES, { keyPrefix: 'owner:', pageSize: 3, minPosition: last.position }),
    );
    assert.deepEqual(
      found.map((one) => one.key),
      keys,
    );
    assert.deepEqual(found[0].document, {
      '@type': 'bank.v1.OwnerBalance',
      owner: 'owner-0',
      balance: 0,
      account_ids: ['acc-0'],
    });
    const backwards = await all(
      client.projections.documents(BALANCES, { keyPrefix: 'owner:', pageSize: 2, descending: true }),
    );
    assert.deepEqual(
      backwards.map((one) => one.key),
      keys.reverse(),
    );
    assert.deepEqual(await all(client.projections.documents(BALANCES, { keyPrefix: 'nobody:' })), []);
  });
});

test('documents by keys: one call, found in the order asked, the others missing, too many refused; counted', async () => {
  await withServer(async (client) => {
    let last;
    for (let n = 0; n < 3; n += 1) {
      last = await client.submit(`acc-${n}`, 'bank.v1.OpenAccount', { owner: `owner-${n}` });
    }
    const keys = ['owner:owner-2', 'owner:nobody', 'owner:owner-0', 'owner:owner-2'];
    const read = await client.projections.documentsByKeys(BALANCES, keys, { minPosition: last.position });
    assert.deepEqual([...read.documents.keys()], ['owner:owner-2', 'owner:owner-0']);
    assert.deepEqual(read.documents.get('owner:owner-0').document, {
      '@type': 'bank.v1.OwnerBalance',
      owner: 'owner-0',
      balance: 0,
      account_ids: ['acc-0'],
    });
    assert.deepEqual(read.missing, ['owner:nobody']);
    assert.ok(read.position >= last.position);
    const tooMany = Array.from({ length: 101 }, (_, n) => `owner:${n}`);
    await assert.rejects(
      client.projections.documentsByKeys(BALANCES, tooMany),
      refusedWith('INVALID_ARGUMENT', 'TOO_MANY_KEYS'),
    );
    await assert.rejects(
      client.projections.documentsByKeys(BALANCES, ['owner:ann', '']),
      refusedWith('INVALID_ARGUMENT', 'INVALID_KEY'),
    );
    assert.deepEqual(await client.projections.count(BALANCES, { keyPrefix: 'owner:', minPosition: last.position }), {
      count: 3,
      more: false,
      position: read.position,
    });
    const capped = await client.projections.count(BALANCES, { limit: 2 });
    assert.deepEqual([capped.count, capped.more], [2, true]);
    await assert.rejects(
      client.projections.count(BALANCES, { limit: 1_000_001 }),
      refusedWith('INVALID_ARGUMENT', 'COUNT_LIMIT_TOO_LARGE'),
    );
  });
});

test('projections say where they stand; their parked events are followed to the last page, parked again by a rebuild', async () => {
  await withServer(async (client) => {
    assert.deepEqual(
      (await client.projections.list()).map((status) => status.name),
      [BALANCES, LABELS, LATE, STRICT],
    );
    for (let n = 0; n < 5; n += 1) {
      await client.submit(`box-${n}`, 'box.v1.CreateBox', { name: `unlabelable-${n}` });
    }
    const kept = await client.submit('box-9', 'box.v1.CreateBox', { name: 'kept' });
    await caughtUp(client, LABELS);
    const status = await client.projections.get(LABELS);
    assert.deepEqual(
      [status.on_failure, status.max_attempts, status.parked_events, status.retry_interval],
      ['park', 1, 5, 0.05],
    );
    // declared at 1 (the default), and its first run recorded that version with its checkpoint
    assert.deepEqual([status.version, status.stored_version], [1, 1]);
    const parked = await all(client.projections.parked(LABELS, { pageSize: 2 }));
    assert.deepEqual(
      parked.map((event) => [event.aggregate_id, event.event_type]),
      [0, 1, 2, 3, 4].map((n) => [`box-${n}`, 'box.v1.BoxCreated']),
    );
    assert.ok(parked.every((event) => event.parked_at instanceof Date && event.error.includes('cannot label')));

    assert.equal(await client.projections.rebuild(LABELS), kept.position);
    await caughtUp(client, LABELS);
    assert.equal((await all(client.projections.parked(LABELS))).length, 5);
    assert.equal((await client.projections.document(LABELS, 'box:box-9')).document.name, 'kept');
  });
});

test('a projection a loaded plugin declares is not deleted; a name with nothing stored deletes nothing', async () => {
  await withServer(async (client) => {
    assert.deepEqual(await client.projections.orphaned(), []);
    await assert.rejects(client.projections.delete(LABELS), refusedWith('FAILED_PRECONDITION', 'PROJECTION_LOADED'));
    assert.equal(await client.projections.delete('labels.retired'), 0);
    await assert.rejects(client.projections.delete(''), refusedWith('INVALID_ARGUMENT', 'INVALID_PROJECTION'));
  });
});

test('a rebuild takes an administrator', async () => {
  await withServer(
    async (client) => {
      assert.equal((await client.projections.get(LABELS)).name, LABELS); // reading does not
      await assert.rejects(
        client.projections.rebuild(LABELS),
        refusedWith('PERMISSION_DENIED', 'ANONYMOUS_ADMIN_DENIED'),
      );
    },
    { args: ['--plugin', 'tests.support.projection_labels:plugin'] },
  );
});

test('bad reads are refused with their reason', async () => {
  await withServer(async (client) => {
    const { projections } = client;
    const first = async (listing) => {
      for await (const one of listing) return one;
      return undefined;
    };
    const reads = [
      [() => projections.document('no.such', 'k'), 'NOT_FOUND PROJECTION_NOT_FOUND'],
      [() => projections.document(BALANCES, 'owner:nobody'), 'NOT_FOUND DOCUMENT_NOT_FOUND'],
      [() => projections.document(BALANCES, ''), 'INVALID_ARGUMENT INVALID_KEY'],
      [() => projections.document(BALANCES, 'owner:\n'), 'INVALID_ARGUMENT INVALID_KEY'],
      [() => projections.document(BALANCES, 'owner:ann', { minPosition: 1e6 }), 'INVALID_ARGUMENT POSITION_BEYOND_END'],
      [() => first(projections.documents('no.such')), 'NOT_FOUND PROJECTION_NOT_FOUND'],
      [() => first(projections.documents(BALANCES, { pageSize: 1001 })), 'INVALID_ARGUMENT PAGE_SIZE_TOO_LARGE'],
      [() => first(projections.documents(BALANCES, { keyPrefix: '\u0000' })), 'INVALID_ARGUMENT INVALID_KEY_PREFIX'],
      [() => projections.get('no.such'), 'NOT_FOUND PROJECTION_NOT_FOUND'],
      [() => first(projections.parked(LABELS, { pageSize: 1001 })), 'INVALID_ARGUMENT PAGE_SIZE_TOO_LARGE'],
      [() => projections.rebuild('no.such'), 'NOT_FOUND PROJECTION_NOT_FOUND'],
    ];
    for (const [read, expected] of reads) {
      const [code, reason] = expected.split(' ');
      await assert.rejects(read(), refusedWith(code, reason), expected);
    }
  });
});

test("the README's read-model snippet runs as printed", async () => {
  await withServer(async (client) => {
    const readme = fs.readFileSync(path.join(here, '..', 'README.md'), 'utf8');
    const blocks = [...readme.matchAll(/^```js\n(.*?)^```$/gms)].map((match) => match[1]);
    const [snippet] = blocks.filter((block) => block.includes('client.projections.document('));
    await client.submit('acc-1', 'bank.v1.OpenAccount', { owner: 'ann' });
    const printed = [];
    const AsyncFunction = (async () => {}).constructor;
    await new AsyncFunction('client', 'console', snippet)(client, { log: (...args) => printed.push(args.join(' ')) });
    assert.deepEqual(printed, ['5', 'owner:ann 5']);
  });
});
