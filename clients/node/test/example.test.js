// The Node example against a real server process.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, ChronicleError, pack, services, unpack } from '../src/chronicle.js';
import { walkthrough } from '../src/example.js';
import { startServer } from './server.js';
import { standInServer } from './stand_in.js';

let server;
let client;

before(async () => {
  server = await startServer();
  client = new ChronicleClient(server.address, { origin: 'node-tests' });
});

after(async () => {
  client?.close();
  await server?.stop();
});

test('the walkthrough opens, deposits, is refused by reason and reads the account back', async () => {
  const lines = [];
  const result = await walkthrough(server.address, { log: (line) => lines.push(line) });
  assert.equal(result.opened.version, 1);
  assert.equal(result.deposited.version, 2);
  assert.deepEqual(result.deposited.events[0].payload, { '@type': 'bank.v1.MoneyDeposited', amount: 100 });
  assert.equal(result.refusal.code, 'FAILED_PRECONDITION');
  assert.equal(result.refusal.reason, 'INSUFFICIENT_FUNDS');
  assert.deepEqual(result.refusal.metadata, { balance: '100', amount: '500' });
  assert.deepEqual(
    result.events.map((e) => [e.version, e.event_type]),
    [
      [1, 'bank.v1.AccountOpened'],
      [2, 'bank.v1.MoneyDeposited'],
    ],
  );
  assert.equal(result.events[0].origin, 'node-example');
  assert.equal(result.account.aggregate_type, 'Account');
  assert.equal(result.account.version, 2);
  assert.deepEqual(result.account.state, { '@type': 'bank.v1.Account', owner: 'ann', balance: 100, closed: false });
  assert.ok(lines.some((line) => line.includes('withdrawal refused (FAILED_PRECONDITION INSUFFICIENT_FUNDS)')));
  // The subscription saw the same two events, live, in order.
  assert.deepEqual(
    result.streamed.map((e) => [e.event_id, e.version]),
    result.events.map((e) => [e.event_id, e.version]),
  );
});

test('a subscription resumes after a position without a gap or a repeat', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'eve' });
  for (const amount of [1, 2, 3]) await client.submit(accountId, 'bank.v1.Deposit', { amount });
  const firstRun = client.subscribe({ aggregateId: accountId });
  const first = [];
  for await (const message of firstRun.messages) {
    if (message.kind === 'event') first.push(message.event);
    if (first.length === 2) break;
  }
  // A restarted subscriber passes back the position it had processed.
  const secondRun = client.subscribe({ aggregateId: accountId }, { afterPosition: firstRun.position });
  const second = [];
  for await (const message of secondRun.messages) {
    if (message.kind === 'event') second.push(message.event);
    if (second.length === 2) break;
  }
  assert.deepEqual(
    [...first, ...second].map((e) => e.version),
    [1, 2, 3, 4],
  );
});

test('a subscription filter naming an unknown event type is INVALID_ARGUMENT', async () => {
  const subscription = client.subscribe({ eventTypes: ['bank.v1.NoSuchEvent'] });
  await assert.rejects(subscription.messages.next(), (error) => {
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.equal(error.reason, 'INVALID_FILTER');
    return true;
  });
});

test('the same command id twice is executed once', async () => {
  const accountId = `acc-${randomUUID()}`;
  const commandId = randomUUID();
  const first = await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'bob' }, { commandId });
  const again = await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'bob' }, { commandId });
  assert.equal(first.replayed, false);
  assert.equal(again.replayed, true);
  assert.deepEqual(
    again.events.map((e) => e.event_id),
    first.events.map((e) => e.event_id),
  );
  assert.equal((await client.read(accountId)).length, 1);
});

test('bad input is INVALID_ARGUMENT naming the field', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'cy' });
  await assert.rejects(client.submit(accountId, 'bank.v1.Deposit', { amount: -5 }), (error) => {
    assert.ok(error instanceof ChronicleError);
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.equal(error.reason, 'INVALID_AMOUNT');
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ['command.payload.amount'],
    );
    return true;
  });
});

test('a refusal naming several fields lists each of them', async () => {
  const transferId = `t-${randomUUID()}`;
  const malformed = { target_account_id: 'acc-x', amount: -5 };
  await assert.rejects(client.submit(transferId, 'bank.v1.TransferMoney', malformed), (error) => {
    assert.equal(error.code, 'INVALID_ARGUMENT');
    assert.equal(error.reason, 'INVALID_TRANSFER');
    assert.deepEqual(
      error.fieldViolations.map((v) => v.field),
      ['command.payload.source_account_id', 'command.payload.amount'],
    );
    return true;
  });
});

test('a stale expected version is refused with the current version', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'dee' }, { expectedVersion: 0 });
  await assert.rejects(client.submit(accountId, 'bank.v1.Deposit', { amount: 1 }, { expectedVersion: 7 }), (error) => {
    assert.equal(error.reason, 'WRONG_EXPECTED_VERSION');
    assert.equal(error.metadata.current_version, '1');
    return true;
  });
});

test('an unknown aggregate is NOT_FOUND', async () => {
  await assert.rejects(client.getAggregate(`nobody-${randomUUID()}`), (error) => {
    assert.equal(error.code, 'NOT_FOUND');
    assert.equal(error.reason, 'AGGREGATE_NOT_FOUND');
    return true;
  });
});

/** A refusal as the server sends it: the code, the message and an ErrorInfo with `reason`. */
function refusal(code, reason, message) {
  const details = [pack('google.rpc.ErrorInfo', { reason, domain: 'chronicle', metadata: {} })];
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', pack('google.rpc.Status', { code, message, details }).value);
  return { code, details: message, metadata };
}

test('a refusal prints its code, and its reason only when the server sent one', async () => {
  // Without an ErrorInfo the reason is the code's name (as in the Python
  // client), which printing 'code reason' used to show twice.
  const answers = [
    { code: grpc.status.INTERNAL, details: 'the handler failed (test)' },
    refusal(grpc.status.PERMISSION_DENIED, '', 'no grant (test)'),
    refusal(grpc.status.FAILED_PRECONDITION, 'INSUFFICIENT_FUNDS', 'balance 0 (test)'),
  ];
  const standIn = await standInServer(services.CommandService, {
    Submit(call, callback) {
      callback(answers.shift());
    },
  });
  const refused = new ChronicleClient(standIn.address);
  try {
    const seen = [];
    for (let n = 0; n < 3; n += 1) {
      await assert.rejects(refused.submit('acc-1', 'bank.v1.Deposit', { amount: 1 }), (error) => {
        assert.ok(error instanceof ChronicleError);
        seen.push([error.code, error.reason, String(error)]);
        return true;
      });
    }
    assert.deepEqual(seen, [
      ['INTERNAL', 'INTERNAL', 'INTERNAL: the handler failed (test)'],
      ['PERMISSION_DENIED', 'PERMISSION_DENIED', 'PERMISSION_DENIED: no grant (test)'],
      ['FAILED_PRECONDITION', 'INSUFFICIENT_FUNDS', 'FAILED_PRECONDITION INSUFFICIENT_FUNDS: balance 0 (test)'],
    ]);
  } finally {
    refused.close();
    standIn.stop();
  }
});

/** `node src/example.js address`, as a user runs it: its exit code, stdout and stderr. */
async function runExample(address) {
  const example = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'example.js');
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [example, address], { timeout: 20_000 });
    return { code: 0, stdout, stderr };
  } catch (error) {
    return { code: error.code, stdout: error.stdout, stderr: error.stderr };
  }
}

test('the example run by hand prints a refused first command by its reason, though its subscription failed first', async () => {
  // As against a server with --auth and no token: the subscription is
  // refused at once, the first command a moment later. The subscription's
  // refusal used to end the process as an unhandled rejection (a stack
  // trace) before the command's reason could be printed.
  const standIn = await standInServer(
    services.CommandService,
    {
      Submit(call, callback) {
        const refused = refusal(grpc.status.PERMISSION_DENIED, 'SUBMIT_DENIED', 'bob may not submit (test)');
        setTimeout(() => callback(refused), 300);
      },
    },
    [
      [
        services.EventService,
        {
          Subscribe(call) {
            call.emit('error', refusal(grpc.status.UNAUTHENTICATED, 'NO_CREDENTIALS', 'credentials are required (test)'));
          },
        },
      ],
    ],
  );
  try {
    const ran = await runExample(standIn.address);
    assert.deepEqual(ran, {
      code: 1,
      stdout: '',
      stderr: 'error: PERMISSION_DENIED SUBMIT_DENIED: bob may not submit (test)\n',
    });
  } finally {
    standIn.stop();
  }
});

test('the example run by hand against no server says so and what to do', async () => {
  const nobody = await standInServer(services.CommandService, {});
  nobody.stop(); // a port nothing listens on now
  const ran = await runExample(nobody.address);
  assert.equal(ran.code, 1);
  assert.equal(ran.stdout, '');
  const [first, hint, ...rest] = ran.stderr.split('\n');
  assert.match(first, /^error: UNAVAILABLE: /);
  assert.equal(
    hint,
    `  no Chronicle server answered at ${nobody.address}: start one (\`make run\` in the repository root),` +
      ' or give its address: npm run example -- HOST:PORT',
  );
  assert.deepEqual(rest, ['']);
});

test('a subscription the server cancels (as a stopping server does) is reopened after the last position', async () => {
  // A stand-in server: the first stream sends a checkpoint, then ends with
  // CANCELLED; the second answers caught_up.
  const asked = [];
  const standIn = await standInServer(services.EventService, {
    Subscribe(call) {
      asked.push(Number(call.request.after_position));
      if (asked.length === 1) {
        call.write({ checkpoint: { position: 7 } });
        setImmediate(() => call.emit('error', { code: grpc.status.CANCELLED, details: 'stopping (test)' }));
      } else {
        call.write({ caught_up: { position: 9 } });
      }
    },
  });
  const subscriber = new ChronicleClient(standIn.address);
  try {
    const subscription = subscriber.subscribe();
    const seen = [];
    for await (const message of subscription.messages) {
      seen.push([message.kind, message.position]);
      if (message.kind === 'caught_up') break;
    }
    assert.deepEqual(seen, [
      ['checkpoint', 7],
      ['caught_up', 9],
    ]);
    assert.deepEqual(asked, [0, 7]);
  } finally {
    subscriber.close();
    standIn.stop();
  }
});

function deposited(position) {
  return {
    event_id: randomUUID(),
    aggregate_id: 'acc-1',
    aggregate_type: 'Account',
    version: position,
    position,
    event_type: 'bank.v1.MoneyDeposited',
    payload: pack('bank.v1.MoneyDeposited', { amount: position }),
  };
}

test('a subscription asks for pages and hands out their events one by one, resuming after the last one', async () => {
  const asked = [];
  const standIn = await standInServer(services.EventService, {
    Subscribe(call) {
      asked.push({ after: Number(call.request.after_position), pages: call.request.pages });
      if (asked.length === 1) {
        // As a server does when the page's last event ends its position (no split event's piece follows).
        call.write({ page: { events: [deposited(1), deposited(2), deposited(3)] }, completes_position: true });
        setImmediate(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'dropped (test)' }));
      } else {
        call.write({ page: { events: [deposited(4)] } });
      }
    },
  });
  const subscriber = new ChronicleClient(standIn.address);
  try {
    const subscription = subscriber.subscribe();
    const seen = [];
    for await (const message of subscription.messages) {
      seen.push([message.event.position, message.event.payload.amount]);
      if (seen.length === 4) break;
    }
    assert.deepEqual(seen, [
      [1, 1],
      [2, 2],
      [3, 3],
      [4, 4],
    ]);
    assert.deepEqual(asked, [
      { after: 0, pages: true },
      { after: 3, pages: true },
    ]);
  } finally {
    subscriber.close();
    standIn.stop();
  }
});

test('read takes the events from pages, and from single events where the server has no pages', async () => {
  const paged = await standInServer(services.EventService, {
    ReadAggregatePages(call) {
      call.write({ events: [deposited(1), deposited(2)] });
      call.write({ events: [deposited(3)] });
      call.end();
    },
  });
  const older = await standInServer(services.EventService, {
    ReadAggregate(call) {
      for (const position of [1, 2, 3]) call.write(deposited(position));
      call.end();
    },
  });
  const reader = new ChronicleClient(paged.address);
  const olderReader = new ChronicleClient(older.address);
  try {
    const versions = (events) => events.map((e) => [e.version, e.payload.amount]);
    const expected = [
      [1, 1],
      [2, 2],
      [3, 3],
    ];
    assert.deepEqual(versions(await reader.read('acc-1')), expected);
    assert.equal(reader.pagedReads, true);
    assert.deepEqual(versions(await olderReader.read('acc-1')), expected); // UNIMPLEMENTED, then ReadAggregate
    assert.equal(olderReader.pagedReads, false);
    assert.deepEqual(versions(await olderReader.read('acc-1')), expected);
  } finally {
    reader.close();
    olderReader.close();
    paged.stop();
    older.stop();
  }
});

test('a history of sixty events reads back whole and in order from a real server, through ReadAggregatePages', async () => {
  const accountId = `acc-${randomUUID()}`;
  await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'pam' });
  for (let amount = 1; amount <= 60; amount += 1) await client.submit(accountId, 'bank.v1.Deposit', { amount });
  const events = await client.read(accountId, { fromVersion: 2 });
  assert.deepEqual(
    events.map((e) => e.version),
    Array.from({ length: 60 }, (_, i) => i + 2),
  );
  assert.equal(client.pagedReads, true);
});

const deposit = (amount, more = {}) => ({ aggregateId: 'acc-1', typeName: 'bank.v1.Deposit', fields: { amount }, ...more });
const accepted = (request, version) => ({
  command_id: request.command.command_id,
  ok: { events: [], version, replayed: false },
});
const amountOf = (request) => unpack(request.command.payload).amount;

test('a command stream runs its commands on a real server, a refusal among them, through SubmitStreamPages', async () => {
  const accountId = `acc-${randomUUID()}`;
  const commands = [
    { aggregateId: accountId, typeName: 'bank.v1.OpenAccount', fields: { owner: 'sal' } },
    { aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount: 10 } },
    { aggregateId: accountId, typeName: 'bank.v1.Withdraw', fields: { amount: 500 } },
    { aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount: 5 }, commandId: randomUUID() },
  ];
  const results = [];
  for await (const result of client.submitStream(commands)) results.push(result);
  assert.deepEqual(
    results.map((r) => [r.submitted?.version ?? null, r.error?.reason ?? null]),
    [
      [1, null],
      [2, null],
      [null, 'INSUFFICIENT_FUNDS'],
      [3, null],
    ],
  );
  assert.equal(results[2].error.code, 'FAILED_PRECONDITION');
  assert.deepEqual(results[2].error.metadata, { balance: '10', amount: '500' });
  assert.equal(results[3].command_id, commands[3].commandId);
  assert.deepEqual(results[3].command, commands[3]);
  assert.equal(results[0].command_id, results[0].command.commandId); // generated
  assert.deepEqual(results[3].submitted.events[0].payload, { '@type': 'bank.v1.MoneyDeposited', amount: 5 });
  assert.equal(client.pagedStreams, true);
  assert.equal((await client.getAggregate(accountId)).state.balance, 15);
});

test('a command stream longer than its window takes its commands as results come back, on a real server', async () => {
  const accountId = `acc-${randomUUID()}`;
  async function* commands() {
    yield { aggregateId: accountId, typeName: 'bank.v1.OpenAccount', fields: { owner: 'win' } };
    for (let amount = 1; amount <= 120; amount += 1) {
      yield { aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount } };
    }
  }
  const versions = [];
  for await (const result of client.submitStream(commands(), { window: 8 })) versions.push(result.submitted.version);
  assert.deepEqual(
    versions,
    Array.from({ length: 121 }, (_, i) => i + 1),
  );
  assert.equal((await client.getAggregate(accountId)).state.balance, (120 * 121) / 2);
});

test('a submit that meets UNAVAILABLE is sent again with the same command id; a refusal is not', async () => {
  const ids = [];
  let failures = 2;
  const standIn = await standInServer(services.CommandService, {
    Submit(call, callback) {
      ids.push(call.request.command.command_id);
      if (call.request.command.aggregate_id === 'refused') {
        callback({ code: grpc.status.FAILED_PRECONDITION, details: 'no (test)' });
      } else if (failures-- > 0) {
        callback({ code: grpc.status.UNAVAILABLE, details: 'away (test)' });
      } else {
        callback(null, { version: 1, events: [] });
      }
    },
  });
  const client = new ChronicleClient(standIn.address);
  try {
    const done = await client.submit('acc-1', 'bank.v1.OpenAccount', { owner: 'ann' });
    assert.equal(done.version, 1);
    assert.deepEqual(ids, [done.command_id, done.command_id, done.command_id]);
    ids.length = 0;
    await assert.rejects(
      client.submit('refused', 'bank.v1.OpenAccount', { owner: 'ann' }),
      (error) => error.code === 'FAILED_PRECONDITION',
    );
    assert.equal(ids.length, 1);
  } finally {
    client.close();
    standIn.stop();
  }
});

test('commands taken at once leave as one SubmitPage, and the results come back one by one, in order', async () => {
  const pages = [];
  const standIn = await standInServer(services.CommandService, {
    SubmitStreamPages(call) {
      const requests = [];
      call.on('data', (page) => {
        pages.push(page.requests.map(amountOf));
        requests.push(...page.requests);
        if (requests.length < 5) return;
        // Result pages need not match request pages: two, then three.
        call.write({ results: [accepted(requests[0], 1), accepted(requests[1], 2)] });
        const refused = {
          command_id: requests[3].command.command_id,
          error: { code: grpc.status.FAILED_PRECONDITION, message: 'no (test)', reason: 'ACCOUNT_CLOSED', metadata: {} },
        };
        call.write({ results: [accepted(requests[2], 3), refused, accepted(requests[4], 4)] });
      });
      call.on('end', () => call.end());
    },
  });
  const streamer = new ChronicleClient(standIn.address);
  try {
    const commands = [1, 2, 3, 4, 5].map((amount) => deposit(amount));
    const results = [];
    for await (const result of streamer.submitStream(commands)) results.push(result);
    assert.deepEqual(pages, [[1, 2, 3, 4, 5]]);
    assert.deepEqual(
      results.map((r) => [r.command.fields.amount, r.submitted?.version ?? r.error.reason]),
      [
        [1, 1],
        [2, 2],
        [3, 3],
        [4, 'ACCOUNT_CLOSED'],
        [5, 4],
      ],
    );
    assert.ok(results[3].error instanceof ChronicleError);
    assert.equal(results[3].error.code, 'FAILED_PRECONDITION');
    assert.deepEqual(
      results.map((r) => r.command_id),
      results.map((r) => r.command.commandId),
    );
  } finally {
    streamer.close();
    standIn.stop();
  }
});

test('a command given once the one before is answered leaves at once, alone', async () => {
  const pages = [];
  const standIn = await standInServer(services.CommandService, {
    SubmitStreamPages(call) {
      let version = 0;
      call.on('data', (page) => {
        pages.push(page.requests.map(amountOf));
        call.write({ results: page.requests.map((request) => accepted(request, (version += 1))) });
      });
      call.on('end', () => call.end());
    },
  });
  const streamer = new ChronicleClient(standIn.address);
  try {
    let answered = () => {};
    async function* oneAtATime() {
      for (const amount of [1, 2, 3]) {
        yield deposit(amount);
        await new Promise((resolve) => {
          answered = resolve;
        });
      }
    }
    const versions = [];
    for await (const result of streamer.submitStream(oneAtATime())) {
      versions.push(result.submitted.version);
      answered();
    }
    assert.deepEqual(versions, [1, 2, 3]);
    assert.deepEqual(pages, [[1], [2], [3]]);
  } finally {
    streamer.close();
    standIn.stop();
  }
});

test('a SubmitPage holds about 64 KiB of commands at most; a larger command goes alone', async () => {
  const pages = [];
  const standIn = await standInServer(services.CommandService, {
    SubmitStreamPages(call) {
      call.on('data', (page) => {
        pages.push(page.requests.map((request) => unpack(request.command.payload).owner.length));
        call.write({ results: page.requests.map((request) => accepted(request, 1)) });
      });
      call.on('end', () => call.end());
    },
  });
  const streamer = new ChronicleClient(standIn.address);
  try {
    const sizes = [30_000, 30_000, 100_000, 10, 10];
    const commands = sizes.map((size) => ({
      aggregateId: `acc-${size}`,
      typeName: 'bank.v1.OpenAccount',
      fields: { owner: 'x'.repeat(size) },
    }));
    let answered = 0;
    for await (const result of streamer.submitStream(commands)) answered += result.submitted ? 1 : 0;
    assert.equal(answered, 5);
    assert.deepEqual(pages, [[30_000, 30_000], [100_000], [10, 10]]);
  } finally {
    streamer.close();
    standIn.stop();
  }
});

test('a server without SubmitStreamPages gets the commands over SubmitStream, and so does the next stream', async () => {
  let pagedCalls = 0;
  const streamed = [];
  const standIn = await standInServer(services.CommandService, {
    SubmitStreamPages(call) {
      pagedCalls += 1;
      call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: 'an older server (test)' });
    },
    SubmitStream(call) {
      const calls = streamed.push([]);
      let version = 0;
      call.on('data', (request) => {
        streamed[calls - 1].push(amountOf(request));
        call.write(accepted(request, (version += 1)));
      });
      call.on('end', () => call.end());
    },
  });
  const streamer = new ChronicleClient(standIn.address);
  try {
    const versions = async (commands, options) => {
      const seen = [];
      for await (const result of streamer.submitStream(commands, options)) seen.push(result.submitted.version);
      return seen;
    };
    // UNIMPLEMENTED is not an attempt: one attempt is enough.
    assert.deepEqual(await versions([deposit(1), deposit(2), deposit(3)], { maxAttempts: 1 }), [1, 2, 3]);
    assert.equal(streamer.pagedStreams, false);
    assert.deepEqual(await versions([deposit(4), deposit(5)]), [1, 2]);
    assert.equal(pagedCalls, 1);
    assert.deepEqual(streamed, [
      [1, 2, 3],
      [4, 5],
    ]);
  } finally {
    streamer.close();
    standIn.stop();
  }
});

test('a paged stream broken by UNAVAILABLE after some results sends only the unanswered commands again, in order', async () => {
  const calls = [];
  const standIn = await standInServer(services.CommandService, {
    SubmitStreamPages(call) {
      const received = [];
      calls.push(received);
      const first = calls.length === 1;
      call.on('data', (page) => {
        received.push(...page.requests);
        if (first && received.length === 5) {
          call.write({ results: [accepted(received[0], 1), accepted(received[1], 2)] });
          setImmediate(() => call.emit('error', { code: grpc.status.UNAVAILABLE, details: 'shutting down (test)' }));
        } else if (!first) {
          call.write({ results: page.requests.map((request) => accepted(request, amountOf(request))) });
        }
      });
      if (!first) call.on('end', () => call.end()); // the first ends with UNAVAILABLE, not on the client's end
    },
  });
  const streamer = new ChronicleClient(standIn.address);
  try {
    const commands = [1, 2, 3, 4, 5].map((amount) => deposit(amount, { commandId: `deposit-${amount}` }));
    const results = [];
    for await (const result of streamer.submitStream(commands)) results.push(result);
    assert.deepEqual(
      results.map((r) => [r.command_id, r.submitted.version]),
      [
        ['deposit-1', 1],
        ['deposit-2', 2],
        ['deposit-3', 3],
        ['deposit-4', 4],
        ['deposit-5', 5],
      ],
    );
    assert.equal(calls.length, 2);
    assert.deepEqual(
      calls[1].map((request) => request.command.command_id),
      ['deposit-3', 'deposit-4', 'deposit-5'],
    );
  } finally {
    streamer.close();
    standIn.stop();
  }
});
