// ReactionService from Node against real server processes serving the
// repository's test plugins: tests/support/plugins.py's `gates` (the
// gates.relay reaction sends each name the "source" gate lets through on to
// the "gated" gate, which refuses it while shut: parked) and
// tests/support/reaction_notes.py (notes.names: a state per gate, a failure
// once, every setting declared). A server each, so that what one test parks
// or opens is not another's.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { ChronicleClient, unpack } from '../src/chronicle.js';
import { startServer } from './server.js';

const RELAY = 'gates.relay';
const NOTES = 'notes.names';
const SAGA = 'saga.orders'; // tests/support/deadline_saga.py
const PLUGINS = ['--no-example-plugins', '--plugin', 'tests.support.plugins:gates'];
const SERVE = ['--anonymous-admin', ...PLUGINS, '--plugin', 'tests.support.reaction_notes:plugin'];
const SAGA_PLUGIN = ['--no-example-plugins', '--plugin', 'tests.support.deadline_saga:plugin'];
const SAGA_SERVE = ['--anonymous-admin', ...SAGA_PLUGIN, '--poll-seconds', '0.05'];
// As much metadata as a client may give a command (60 entries of 4,000 bytes),
// which the relay copies into every command it parks.
const LARGE = Object.fromEntries(Array.from({ length: 60 }, (_, k) => [`note${k}`, 'x'.repeat(4000)]));

/** A client of a fresh server (`args`: its arguments) for `body`; both closed after. */
async function withServer(body, args = SERVE) {
  const server = await startServer({ args });
  const client = new ChronicleClient(server.address);
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

/** Opens the "source" gate, lets `names` through it (the relay parks each), and waits until all are parked. */
async function park(client, names, metadata = {}) {
  const want = (await client.reactions.get(RELAY)).parked + names.length;
  await client.submit('source', 'box.v1.ArchiveBox', {});
  for (const name of names) await client.submit('source', 'box.v1.RenameBox', { name }, { metadata });
  await eventually(async () => (await client.reactions.get(RELAY)).parked === want, `${want} commands parked`);
}

async function all(iterable) {
  const found = [];
  for await (const one of iterable) found.push(one);
  return found;
}

const nameOf = (parked) => unpack(parked.command).name;

function refusedWith(code, reason) {
  return (error) => {
    assert.equal(error.name, 'ChronicleError');
    assert.equal(`${error.code} ${error.reason}`, `${code} ${reason}`);
    return true;
  };
}

test('parked commands are followed page after page, oldest first, to the last page', async () => {
  await withServer(async (client) => {
    const names = ['a', 'b', 'c', 'd', 'e'];
    await park(client, names);
    // Two to a page: three pages, the first two with a next_page_token.
    const listed = await all(client.reactions.parked(RELAY, { pageSize: 2 }));
    assert.deepEqual(listed.map(nameOf), names);
    assert.deepEqual(
      listed.map((parked) => [parked.aggregate_id, parked.reason, parked.command_metadata.relayed]),
      names.map(() => ['gated', 'GATE_SHUT', 'yes']),
    );
    const positions = listed.map((parked) => parked.position);
    assert.deepEqual(positions, [...positions].sort((x, y) => x - y));
    assert.equal(typeof listed[0].parked_at_us, 'number');
  });
});

test('parked commands larger than one message are listed whole, the pages bounded by bytes', async () => {
  await withServer(async (client) => {
    const names = Array.from({ length: 20 }, (_, i) => `n${i}`);
    await park(client, names, LARGE);
    // 20 × 240 KB: more than a client takes in one message (4 MiB), so
    // without the page tokens followed this is RESOURCE_EXHAUSTED or cut short.
    const listed = await all(client.reactions.parked(RELAY));
    assert.deepEqual(listed.map(nameOf), names);
    assert.ok(listed.every((parked) => parked.command_metadata.note59 === LARGE.note59));
  });
});

test('bad listings are refused with their reasons', async () => {
  await withServer(async (client) => {
    await assert.rejects(
      all(client.reactions.parked(RELAY, { pageSize: 1001 })),
      refusedWith('INVALID_ARGUMENT', 'PAGE_SIZE_TOO_LARGE'),
    );
    await assert.rejects(all(client.reactions.parked('no.such')), refusedWith('NOT_FOUND', 'REACTION_NOT_FOUND'));
    await assert.rejects(client.reactions.get('no.such'), refusedWith('NOT_FOUND', 'REACTION_NOT_FOUND'));
  });
});

test('parked commands are replayed and dismissed one by one and all at once, by reason', async () => {
  await withServer(async (client) => {
    await park(client, ['a', 'b', 'c', 'd', 'e']);
    // The gate still shut: every one refused again, and still parked.
    assert.deepEqual(await client.reactions.replayAll(RELAY), { accepted: 0, refused: 5 });
    const parked = await all(client.reactions.parked(RELAY));
    assert.deepEqual(parked.map((p) => [nameOf(p), p.replays]), [['a', 1], ['b', 1], ['c', 1], ['d', 1], ['e', 1]]);

    const [a, b] = parked;
    await client.reactions.dismiss(RELAY, a.command_id);
    await assert.rejects(
      client.reactions.dismiss(RELAY, a.command_id),
      refusedWith('NOT_FOUND', 'PARKED_COMMAND_NOT_FOUND'),
    );
    const again = await client.reactions.replay(RELAY, b.command_id);
    assert.equal(again.accepted, false);
    assert.equal(again.reason, 'GATE_SHUT');
    assert.notEqual(again.command_id, b.command_id); // a new id each time it is sent

    // Another reason than theirs: nothing done.
    assert.equal(await client.reactions.dismissAll(RELAY, { reason: 'SOMETHING_ELSE' }), 0);
    assert.deepEqual(await client.reactions.replayAll(RELAY, { reason: 'SOMETHING_ELSE' }), { accepted: 0, refused: 0 });

    await client.submit('gated', 'box.v1.ArchiveBox', {}); // the gate opens
    assert.equal((await client.reactions.replay(RELAY, b.command_id)).accepted, true);
    assert.deepEqual(await client.reactions.replayAll(RELAY, { reason: 'GATE_SHUT' }), { accepted: 3, refused: 0 });
    assert.deepEqual(await all(client.reactions.parked(RELAY)), []);
    assert.equal((await client.getAggregate('gated')).state.name, 'e'); // every name but a's got through, in order
    assert.equal(await client.reactions.dismissAll(RELAY), 0);
  });
});

test('a reaction reset to the start handles the log again; past the head is refused', async () => {
  await withServer(async (client) => {
    await park(client, ['a', 'b']);
    assert.equal(await client.reactions.dismissAll(RELAY), 2);
    const before = await client.reactions.get(RELAY);
    const reset = await client.reactions.reset(RELAY, 'start');
    assert.deepEqual(reset, { previous_position: before.position, position: 0, log_head: before.log_head });
    // Sent again under the same ids, answered from their recorded refusals: parked again.
    await eventually(async () => (await client.reactions.get(RELAY)).parked === 2, 'both parked again');
    await assert.rejects(
      client.reactions.reset(RELAY, before.log_head + 1000),
      refusedWith('INVALID_ARGUMENT', 'POSITION_BEYOND_HEAD'),
    );
    assert.equal((await client.reactions.reset(RELAY, 'end')).position, (await client.reactions.get(RELAY)).log_head);
  });
});

test('a parked command is dismissed all at once with the others', async () => {
  await withServer(async (client) => {
    await park(client, ['a', 'b', 'c']);
    assert.equal(await client.reactions.dismissAll(RELAY, { reason: 'GATE_SHUT' }), 3);
    assert.deepEqual(await all(client.reactions.parked(RELAY)), []);
    assert.equal((await client.reactions.get(RELAY)).parked, 0);
  });
});

test('a refusal its on_refused ignores is counted ignored (a number), and not parked', async () => {
  await withServer(async (client) => {
    await client.submit('source', 'box.v1.ArchiveBox', {});
    await client.submit('source', 'box.v1.RenameBox', { name: 'harmless-1' }); // the relay ignores its refusal
    await eventually(async () => (await client.reactions.get(RELAY)).ignored === 1, 'the refusal ignored');
    const status = await client.reactions.get(RELAY);
    assert.deepEqual([status.refused, status.ignored, status.parked], [1, 1, 0]);
  });
});

test("a reaction's status comes typed: its last error's time a Date, its retry interval in seconds", async () => {
  await withServer(async (client, server) => {
    const before = Date.now();
    await client.submit('source', 'box.v1.ArchiveBox', {});
    await client.submit('source', 'box.v1.RenameBox', { name: 'fail-once' });
    await eventually(async () => {
      const status = await client.reactions.get(NOTES);
      return status.last_error !== '' && status.error === '' && status.position === status.log_head;
    }, 'notes.names failed once and went on');
    const notes = await client.reactions.get(NOTES);
    assert.ok(notes.last_error.includes('fail-once fails the first time'), notes.last_error);
    assert.ok(notes.last_error_time instanceof Date);
    assert.ok(before - 1000 <= notes.last_error_time.getTime() && notes.last_error_time.getTime() <= Date.now());
    assert.deepEqual(
      [notes.retry_interval, notes.on_failure, notes.max_attempts, notes.start_from, notes.start_position],
      [0.25, 'park', 2, 'beginning', 0],
    );
    assert.equal(notes.running, true);
    assert.equal(notes.runner, server.address);
    assert.equal(typeof notes.position, 'number');
    assert.ok(notes.position >= 2);

    // One that declared none of them: the defaults, and no error yet (null, not an empty Timestamp).
    const relay = await client.reactions.get(RELAY);
    assert.deepEqual(
      [relay.last_error, relay.last_error_time, relay.retry_interval, relay.on_failure, relay.max_attempts],
      ['', null, 5, 'stop', 0],
    );
    assert.deepEqual(
      (await client.reactions.list()).map((status) => [status.name, status.last_error_time instanceof Date]),
      [
        [RELAY, false],
        [NOTES, true],
      ], // by name
    );
  });
});

test("a process's state is dropped once; a key it does not keep and an empty one are refused", async () => {
  await withServer(async (client) => {
    await client.submit('source', 'box.v1.ArchiveBox', {});
    await client.submit('source', 'box.v1.RenameBox', { name: 'ann' });
    await eventually(async () => {
      const status = await client.reactions.get(NOTES);
      return status.position === status.log_head && status.error === '';
    }, 'notes.names caught up');
    await client.reactions.dropProcessState(NOTES, 'source');
    await assert.rejects(
      client.reactions.dropProcessState(NOTES, 'source'),
      (error) => refusedWith('NOT_FOUND', 'PROCESS_STATE_NOT_FOUND')(error) && error.metadata.state_key === 'source',
    );
    await assert.rejects(client.reactions.dropProcessState(NOTES, ''), (error) => {
      refusedWith('INVALID_ARGUMENT', 'INVALID_STATE_KEY')(error);
      assert.deepEqual(
        error.fieldViolations.map((violation) => violation.field),
        ['state_key'],
      );
      return true;
    });
  });
});

test("process states are read, listed and dropped several at once, all or none", async () => {
  await withServer(async (client) => {
    for (const [gate, name] of [
      ['source', 'ann'],
      ['gated', 'bob'],
    ]) {
      await client.submit(gate, 'box.v1.ArchiveBox', {}); // opened
      await client.submit(gate, 'box.v1.RenameBox', { name });
    }
    await eventually(async () => {
      const status = await client.reactions.get(NOTES);
      return status.position === status.log_head && status.error === '';
    }, 'notes.names caught up');
    const state = await client.reactions.processState(NOTES, 'source');
    assert.deepEqual(
      [state.state_key, state.state_type, JSON.parse(state.state_json), unpack(state.state).name, state.subjects],
      ['source', 'box.v1.Box', { name: 'ann' }, 'ann', ['source']],
    );
    assert.equal(state.position, (await client.reactions.get(NOTES)).position);
    // No deadlines; began and last changed at its events' commit times (one event: the same).
    assert.deepEqual(state.deadlines, []);
    assert.ok(state.started instanceof Date && state.updated instanceof Date, 'started and updated are Dates');
    assert.ok(state.started <= state.updated && state.updated <= new Date());
    const status = await client.reactions.get(NOTES);
    assert.deepEqual([status.deadlines, status.next_deadline], [0, null]);
    const keys = async (options) => (await all(client.reactions.processStates(NOTES, options))).map((s) => s.state_key);
    assert.deepEqual(await keys({ pageSize: 1 }), ['gated', 'source']);
    assert.deepEqual(await keys({ prefix: 'so' }), ['source']);
    await assert.rejects(
      client.reactions.processState(NOTES, 'nowhere'),
      refusedWith('NOT_FOUND', 'PROCESS_STATE_NOT_FOUND'),
    );
    await assert.rejects(
      client.reactions.dropProcessStates(NOTES, ['source', 'nowhere']),
      (error) =>
        refusedWith('NOT_FOUND', 'PROCESS_STATE_NOT_FOUND')(error) &&
        error.metadata.state_key === 'nowhere' &&
        error.metadata.missing === '1',
    );
    assert.deepEqual(await keys(), ['gated', 'source']); // none dropped
    assert.equal(await client.reactions.dropProcessStates(NOTES, ['source', 'gated']), 2);
    assert.deepEqual(await keys(), []);
  });
});

test("an operator's reaction calls take the admin grant", async () => {
  // Without --anonymous-admin, an anonymous caller reads but does not administer.
  await withServer(
    async (client) => {
      assert.equal((await client.reactions.get(RELAY)).name, RELAY);
      for (const call of [
        () => client.reactions.replayAll(RELAY),
        () => client.reactions.dismissAll(RELAY),
        () => client.reactions.dropProcessState(RELAY, 'k'),
        () => client.reactions.dropProcessStates(RELAY, ['k', 'l']),
        () => client.reactions.processState(NOTES, 'source'), // a state may hold personal data
      ]) {
        await assert.rejects(call(), (error) => error.code === 'PERMISSION_DENIED' && error.reason !== error.code);
      }
    },
    [...PLUGINS],
  );
});

test("a reaction's status counts the deadlines that fired and those pending, the soonest a Date", async () => {
  // tests/support/deadline_saga.py: an order named "after-N" is due N ms
  // after it is placed, and its deadline, when it fires, cancels the order.
  await withServer(
    async (client) => {
      const before = await client.reactions.get(SAGA);
      assert.deepEqual([before.deadlines, before.deadlines_fired, before.next_deadline], [0, 0, null]);
      await client.submit('o-1', 'box.v1.CreateBox', { name: 'after-1' }); // due at once
      await eventually(async () => (await client.reactions.get(SAGA)).deadlines_fired === 1, "o-1's deadline fired");
      const placed = Date.now();
      await client.submit('o-2', 'box.v1.CreateBox', { name: 'after-1200000' }); // due in 20 minutes
      await eventually(async () => (await client.reactions.get(SAGA)).deadlines === 1, "o-2's deadline scheduled");
      const status = await client.reactions.get(SAGA);
      assert.deepEqual([status.deadlines_fired, status.deadlines], [1, 1]); // o-2's pending, not fired
      assert.ok(status.next_deadline instanceof Date, 'next_deadline is a Date');
      const dueIn = status.next_deadline.getTime() - placed;
      assert.ok(19 * 60_000 < dueIn && dueIn <= 20 * 60_000 + 1000, `o-2's due in 20 minutes, not ${dueIn} ms`);
      const [listed] = (await client.reactions.list()).filter((one) => one.name === SAGA);
      assert.equal(listed.deadlines_fired, 1);
    },
    SAGA_SERVE,
  );
});
