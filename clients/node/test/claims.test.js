// Promises clients/node/README.md (and docs/clients.md's Node section) makes
// that no other test held the client to: every code a unary call is tried
// again after, with its bound and the RetryInfo delay, a routing client's
// too; a command stream reopened after each code worth it and given up past
// its attempts, every result renewing them; a single refused command not
// sent again; leaving the loop; the window; a dry run; the example's line for
// a server with --auth and no token; a read a stale token failed; TLS, mutual
// TLS and a routing client over TLS against a real server.

import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import crypto, { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, ChronicleError, pack, services, unpack } from '../src/chronicle.js';
import { recordMarks } from './routes.js';
import { startServer } from './server.js';
import { standInServer } from './stand_in.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repository = path.resolve(here, '..', '..', '..');

const POLICY = `
[roles.teller]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw"]
read = ["Account"]
subscribe = ["Account"]

[principals."alice"]
roles = ["teller"]

[principals."CN=batch,O=Chronicle Tests"]
roles = ["teller"]
`;
const apiKey = `chr_${crypto.randomBytes(32).toString('base64url')}`;
let directory;
let guarded; // a plaintext server with --auth and alice's API key
let secure; // a TLS server with --auth and alice's API key
let mutual; // the same with client certificates (which every client must then present)
let pki; // { ca, server, serverKey, batch, batchKey }: PEM buffers

/** Writes `text` to `name` in the test's directory, readable by its owner only (the server insists). */
function privateFile(name, text) {
  const file = path.join(directory, name);
  fs.writeFileSync(file, text, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  return file;
}

/** A CA, a server certificate for 127.0.0.1 and a client certificate for CN=batch, made by the repository's test PKI. */
function makePki() {
  const python = process.env.CHRONICLE_PYTHON ?? path.join(repository, '.venv', 'bin', 'python');
  const script = [
    'import sys',
    'from pathlib import Path',
    'from tests.support.security import Authority',
    'ca = Authority()',
    'server, batch = ca.issue("localhost", server=True), ca.issue("batch")',
    'folder = Path(sys.argv[1])',
    'for name, pem in [("ca.pem", ca.certificate), ("server.pem", server.certificate), ("server.key", server.key),',
    '                  ("batch.pem", batch.certificate), ("batch.key", batch.key)]:',
    '    (folder / name).write_bytes(pem)',
    '    (folder / name).chmod(0o600)',
  ].join('\n');
  const made = spawnSync(fs.existsSync(python) ? python : 'python3', ['-c', script, directory], { cwd: repository });
  assert.equal(made.status, 0, String(made.stderr));
  const read = (name) => fs.readFileSync(path.join(directory, name));
  return {
    ca: read('ca.pem'),
    server: read('server.pem'),
    serverKey: read('server.key'),
    batch: read('batch.pem'),
    batchKey: read('batch.key'),
  };
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-node-claims-'));
  pki = makePki();
  const digest = crypto.createHash('sha256').update(apiKey).digest('hex');
  const auth = [
    '--auth',
    '--policy-file',
    privateFile('policy.toml', POLICY),
    '--api-keys-file',
    privateFile('keys.toml', `[[keys]]\nprincipal = "alice"\nsha256 = "${digest}"\nroles = []\n`),
  ];
  const tls = ['--tls-cert-file', path.join(directory, 'server.pem'), '--tls-key-file', path.join(directory, 'server.key')];
  const clientCa = ['--tls-client-ca-file', path.join(directory, 'ca.pem')];
  [guarded, secure, mutual] = await Promise.all([
    startServer({ args: auth }),
    startServer({ args: [...auth, ...tls] }),
    startServer({ args: [...auth, ...tls, ...clientCa] }),
  ]);
});

after(async () => {
  await Promise.all([guarded?.stop(), secure?.stop(), mutual?.stop()]);
  if (directory) fs.rmSync(directory, { recursive: true, force: true });
});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Resolves once `condition()` holds, looked at every 10 ms; rejects after `timeoutMs` (a broken build). */
async function until(condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${condition}`);
    await sleep(10);
  }
}

/** A status as the server sends it: the code, the message and, in the details trailer, an ErrorInfo and a RetryInfo. */
function rich(code, message, { reason, retryDelaySeconds } = {}) {
  const details = [];
  if (reason) details.push(pack('google.rpc.ErrorInfo', { reason, domain: 'chronicle', metadata: {} }));
  if (retryDelaySeconds !== undefined) {
    const retry_delay = { seconds: Math.floor(retryDelaySeconds), nanos: Math.round((retryDelaySeconds % 1) * 1e9) };
    details.push(pack('google.rpc.RetryInfo', { retry_delay }));
  }
  const metadata = new grpc.Metadata();
  metadata.set('grpc-status-details-bin', pack('google.rpc.Status', { code, message, details }).value);
  return { code, details: message, metadata };
}

// The codes after which a call is worth making again, as the README lists them.
const WORTH_RETRYING = [
  ['ABORTED', () => rich(grpc.status.ABORTED, 'conflict (test)', { reason: 'CONCURRENCY_CONFLICT' })],
  ['DEADLINE_EXCEEDED', () => ({ code: grpc.status.DEADLINE_EXCEEDED, details: 'late (test)' })],
  ['CANCELLED', () => ({ code: grpc.status.CANCELLED, details: 'Cancelling all calls (test)' })],
  [
    'RESOURCE_EXHAUSTED with a RetryInfo',
    () => rich(grpc.status.RESOURCE_EXHAUSTED, 'queue full (test)', { reason: 'OVERLOADED', retryDelaySeconds: 0.01 }),
  ],
];
const TOO_LARGE = () => ({ code: grpc.status.RESOURCE_EXHAUSTED, details: 'Received message larger than max (test)' });

const deposit = (amount, { aggregateId = 'acc-1', commandId = randomUUID() } = {}) => ({
  aggregateId,
  typeName: 'bank.v1.Deposit',
  fields: { amount },
  commandId,
});
const accepted = (request, version) => ({
  command_id: request.command.command_id,
  ok: { events: [], version, replayed: false },
});
const amountOf = (request) => unpack(request.command.payload).amount;

/** A stand-in Submit answering with `failures` in turn (null: accepted), recording each command id. */
async function standInSubmits(failures) {
  const ids = [];
  const times = [];
  const server = await standInServer(services.CommandService, {
    Submit(call, callback) {
      ids.push(call.request.command.command_id);
      const failure = failures.shift() ?? null;
      times.push(Date.now());
      if (failure) callback(failure);
      else callback(null, accepted(call.request, amountOf(call.request)).ok);
    },
  });
  return { ...server, ids, times };
}

test('a submit is sent again with the same command id after each code the README names', async () => {
  for (const [name, failure] of WORTH_RETRYING) {
    const standIn = await standInSubmits([failure()]);
    const client = new ChronicleClient(standIn.address);
    try {
      const done = await client.submit('acc-1', 'bank.v1.Deposit', { amount: 3 });
      assert.equal(done.version, 3, name);
      assert.deepEqual(standIn.ids, [done.command_id, done.command_id], name);
    } finally {
      client.close();
      standIn.stop();
    }
  }
});

test('a subscription is reopened after its last position after each code the README names, and not after a message too large', async () => {
  for (const [name, failure] of WORTH_RETRYING) {
    const asked = [];
    const standIn = await standInServer(services.EventService, {
      Subscribe(call) {
        asked.push(Number(call.request.after_position));
        if (asked.length === 1) {
          call.write({ checkpoint: { position: 7 } });
          setImmediate(() => call.emit('error', failure()));
        } else {
          call.write({ caught_up: { position: 9 } });
        }
      },
    });
    const client = new ChronicleClient(standIn.address);
    try {
      const seen = [];
      for await (const message of client.subscribe().messages) {
        seen.push([message.kind, message.position]);
        if (message.kind === 'caught_up') break;
      }
      assert.deepEqual(seen, [['checkpoint', 7], ['caught_up', 9]], name);
      assert.deepEqual(asked, [0, 7], name);
    } finally {
      client.close();
      standIn.stop();
    }
  }
  const standIn = await standInServer(services.EventService, {
    Subscribe(call) {
      call.emit('error', TOO_LARGE());
    },
  });
  const client = new ChronicleClient(standIn.address);
  try {
    await assert.rejects(async () => {
      for await (const message of client.subscribe().messages) assert.fail(`no message expected: ${message.kind}`);
    }, (error) => error.code === 'RESOURCE_EXHAUSTED');
  } finally {
    client.close();
    standIn.stop();
  }
});

test("a unary call waits the server's RetryInfo delay, is tried retry.maxAttempts times in all, and RESOURCE_EXHAUSTED without a delay is final", async () => {
  const waited = rich(grpc.status.RESOURCE_EXHAUSTED, 'queue full (test)', { retryDelaySeconds: 0.5 });
  const away = () => ({ code: grpc.status.UNAVAILABLE, details: 'away (test)' });
  const conflict = () => rich(grpc.status.ABORTED, 'conflict (test)', { reason: 'CONCURRENCY_CONFLICT', retryDelaySeconds: 0.01 });
  const standIn = await standInSubmits([waited, null, away(), away(), away(), TOO_LARGE(), conflict(), conflict(), conflict()]);
  // A bound on the count (by default there is none: a unary call is retried
  // for 30 s, test/default_retries.test.js).
  const client = new ChronicleClient(standIn.address, { retry: { maxAttempts: 3 } });
  try {
    await client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 });
    // The second attempt came at least the delay after the first was refused
    // (the backoff of its own is 0.1 s; a timer may fire a little early).
    assert.ok(standIn.times[1] - standIn.times[0] >= 400, `${standIn.times[1] - standIn.times[0]} ms`);
    await assert.rejects(client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 }), (error) => error.code === 'UNAVAILABLE');
    assert.equal(standIn.ids.length, 2 + 3);
    await assert.rejects(client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 }), (error) => error.code === 'RESOURCE_EXHAUSTED');
    assert.equal(standIn.ids.length, 5 + 1);
    await assert.rejects(client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 }), (error) => {
      assert.ok(error instanceof ChronicleError);
      assert.deepEqual([error.code, error.reason, error.retryDelaySeconds], ['ABORTED', 'CONCURRENCY_CONFLICT', 0.01]);
      return true;
    });
    assert.equal(standIn.ids.length, 6 + 3);
  } finally {
    client.close();
    standIn.stop();
  }
});

test('getAggregate and the group calls are sent again too', async () => {
  const asked = { GetAggregate: 0, ListGroups: 0 };
  const state = pack('bank.v1.Account', { owner: 'ann', balance: 5 });
  const once = (method, answer) => (call, callback) => {
    asked[method] += 1;
    if (asked[method] === 1) callback({ code: grpc.status.UNAVAILABLE, details: 'away (test)' });
    else callback(null, answer);
  };
  const standIn = await standInServer(
    services.EventService,
    { GetAggregate: once('GetAggregate', { aggregate_id: 'acc-1', aggregate_type: 'Account', version: 2, state }) },
    [[services.SubscriptionGroupService, { ListGroups: once('ListGroups', { groups: [{ name: 'billing' }] }) }]],
  );
  const client = new ChronicleClient(standIn.address);
  try {
    assert.equal((await client.getAggregate('acc-1')).state.balance, 5);
    assert.deepEqual(
      (await client.listGroups()).map((group) => group.name),
      ['billing'],
    );
    assert.deepEqual(asked, { GetAggregate: 2, ListGroups: 2 });
  } finally {
    client.close();
    standIn.stop();
  }
});

/** A stand-in server that is a whole cluster: ClusterService naming it the only member, and `commands` (handlers). */
async function standInCluster(commands) {
  const topology = { epoch: 1, partition_count: 1, hash: 'PARTITION_HASH_CRC32', members: [], partition_owners: ['only'] };
  const server = await standInServer(services.CommandService, commands, [
    [
      services.ClusterService,
      {
        GetTopology(_call, callback) {
          callback(null, { topology });
        },
        WatchTopology(call) {
          call.write({ topology });
        },
      },
    ],
  ]);
  topology.members.push({ member_id: 'only', address: server.address });
  return server;
}

test('a routed submit is sent again with the same command id after each code the README names, as an unrouted one', async () => {
  for (const [name, failure] of WORTH_RETRYING) {
    const failures = [failure()];
    const ids = [];
    const standIn = await standInCluster({
      Submit(call, callback) {
        ids.push(call.request.command.command_id);
        const failing = failures.shift();
        if (failing) callback(failing);
        else callback(null, accepted(call.request, 1).ok);
      },
    });
    const client = new ChronicleClient(standIn.address, { routing: true });
    try {
      await client.routes.ready;
      assert.equal(client.routes.ownerOf('acc-1'), standIn.address);
      const done = await client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 });
      assert.equal(done.version, 1, name);
      assert.deepEqual(ids, [done.command_id, done.command_id], name);
    } finally {
      client.close();
      standIn.stop();
    }
  }
});

/**
 * A stand-in SubmitStreamPages: `respond(call, index, request)` for each
 * command of each call (numbered from 1), in order: a SubmitStreamResponse,
 * a status that ends the call, or null to leave it unanswered for now
 * (`answerHeld()` asks again). Records every request, by call.
 */
async function standInStreams(respond) {
  const calls = [];
  const waiting = new Set();
  let cancelled = 0;
  const server = await standInServer(services.CommandService, {
    SubmitStreamPages(call) {
      const requests = [];
      const number = calls.push(requests);
      let answered = 0;
      let ended = false;
      const answer = () => {
        while (!ended && answered < requests.length) {
          const outcome = respond(number, answered, requests[answered]);
          if (outcome === null) return;
          answered += 1;
          if (outcome.command_id === undefined) {
            ended = true;
            waiting.delete(answer);
            call.emit('error', outcome);
            return;
          }
          call.write({ results: [outcome] });
        }
      };
      waiting.add(answer);
      call.on('data', (page) => {
        requests.push(...page.requests);
        answer();
      });
      call.on('end', () => {
        if (!ended) call.end();
      });
      call.on('cancelled', () => {
        cancelled += 1;
        ended = true;
        waiting.delete(answer);
      });
    },
  });
  return {
    ...server,
    calls,
    received: () => calls.flat().map((request) => request.command.command_id),
    cancelled: () => cancelled,
    answerHeld: () => {
      for (const answer of waiting) answer();
    },
  };
}

async function resultsOf(stream) {
  const results = [];
  for await (const result of stream) results.push(result);
  return results;
}

test('a command stream broken by each code the README names is opened again; RESOURCE_EXHAUSTED without a delay ends it', async () => {
  for (const [name, failure] of WORTH_RETRYING) {
    // The first call ends as it receives its commands; the second answers them.
    const standIn = await standInStreams((call, _index, request) => (call === 1 ? failure() : accepted(request, amountOf(request))));
    const client = new ChronicleClient(standIn.address);
    try {
      const commands = [1, 2, 3].map((amount) => deposit(amount));
      const results = await resultsOf(client.submitStream(commands));
      assert.deepEqual(
        results.map((r) => [r.command_id, r.submitted.version]),
        commands.map((c) => [c.commandId, c.fields.amount]),
        name,
      );
      assert.equal(standIn.calls.length, 2, name);
      assert.deepEqual(
        standIn.calls[1].map((request) => request.command.command_id),
        commands.map((c) => c.commandId),
        name,
      );
    } finally {
      client.close();
      standIn.stop();
    }
  }
  const standIn = await standInStreams(() => TOO_LARGE());
  const client = new ChronicleClient(standIn.address);
  try {
    await assert.rejects(resultsOf(client.submitStream([deposit(1)])), (error) => error.code === 'RESOURCE_EXHAUSTED');
    assert.equal(standIn.calls.length, 1);
  } finally {
    client.close();
    standIn.stop();
  }
});

test("every result renews a command stream's attempts; past maxAttempts it throws the stream's error", async () => {
  const dropped = () => rich(grpc.status.UNAVAILABLE, 'dropped (test)', { reason: 'SHUTTING_DOWN' });
  // Each call answers one command, then breaks: more breaks than attempts.
  const answering = await standInStreams((_call, index, request) => (index === 0 ? accepted(request, amountOf(request)) : dropped()));
  const breaking = await standInStreams(() => dropped());
  const first = new ChronicleClient(answering.address);
  const second = new ChronicleClient(breaking.address);
  try {
    const commands = [1, 2, 3, 4, 5].map((amount) => deposit(amount));
    const results = await resultsOf(first.submitStream(commands, { maxAttempts: 2 }));
    assert.deepEqual(
      results.map((r) => r.command_id),
      commands.map((c) => c.commandId),
    );
    assert.ok(answering.calls.length >= 5, `${answering.calls.length} calls`);
    await assert.rejects(resultsOf(second.submitStream([deposit(1)], { maxAttempts: 3 })), (error) => {
      assert.ok(error instanceof ChronicleError);
      assert.deepEqual([error.code, error.reason], ['UNAVAILABLE', 'SHUTTING_DOWN']);
      return true;
    });
    assert.equal(breaking.calls.length, 3);
  } finally {
    first.close();
    second.close();
    answering.stop();
    breaking.stop();
  }
});

test('a single command refused with a code worth retrying is not sent again by the stream', async () => {
  const standIn = await standInStreams((_call, index, request) =>
    index === 0
      ? {
          command_id: request.command.command_id,
          error: {
            code: grpc.status.ABORTED,
            message: 'conflict (test)',
            reason: 'CONCURRENCY_CONFLICT',
            metadata: {},
            field_violations: [],
            retry_after: { seconds: 0, nanos: 50_000_000 },
          },
        }
      : accepted(request, amountOf(request)),
  );
  const client = new ChronicleClient(standIn.address);
  try {
    const commands = [1, 2, 3].map((amount) => deposit(amount));
    const [refused, ...others] = await resultsOf(client.submitStream(commands));
    assert.ok(refused.error instanceof ChronicleError);
    assert.deepEqual(
      [refused.error.code, refused.error.reason, refused.error.retryDelaySeconds, refused.submitted],
      ['ABORTED', 'CONCURRENCY_CONFLICT', 0.05, null],
    );
    assert.deepEqual(
      others.map((r) => r.submitted.version),
      [2, 3],
    );
    assert.equal(standIn.calls.length, 1);
    assert.deepEqual(
      standIn.received(),
      commands.map((c) => c.commandId),
    );
  } finally {
    client.close();
    standIn.stop();
  }
});

test('leaving the loop ends the call and stops taking commands', async () => {
  const standIn = await standInStreams((_call, _index, request) => accepted(request, amountOf(request)));
  const client = new ChronicleClient(standIn.address);
  let closed = false;
  async function* endless() {
    try {
      for (let amount = 1; ; amount += 1) {
        yield deposit(amount);
        await sleep(1);
      }
    } finally {
      closed = true; // asked for no more: the client called return()
    }
  }
  try {
    for await (const result of client.submitStream(endless())) {
      assert.equal(result.submitted.version, 1);
      break;
    }
    await until(() => closed && standIn.cancelled() === 1);
    assert.equal(standIn.calls.length, 1);
  } finally {
    client.close();
    standIn.stop();
  }
});

test('a command stream takes no command beyond its window until a result frees a place', async () => {
  let release = 0;
  const standIn = await standInStreams((_call, index, request) => (index < release ? accepted(request, 1) : null));
  const client = new ChronicleClient(standIn.address);
  let taken = 0;
  async function* endless() {
    for (;;) {
      taken += 1;
      yield deposit(taken);
    }
  }
  const stream = client.submitStream(endless(), { window: 8 });
  try {
    const first = stream.next();
    await until(() => standIn.received().length === 8);
    assert.equal(taken, 8);
    release = 1;
    standIn.answerHeld();
    assert.equal((await first).value.submitted.version, 1);
    await until(() => standIn.received().length === 9);
    assert.equal(taken, 9);
  } finally {
    await stream.return();
    client.close();
    standIn.stop();
  }
});

// -- against real servers ------------------------------------------------------------

test('a dry run decides every command of a stream and writes nothing', async () => {
  const client = new ChronicleClient(guarded.address, { token: apiKey });
  try {
    const accountId = `acc-${randomUUID()}`;
    const commands = [
      { aggregateId: accountId, typeName: 'bank.v1.OpenAccount', fields: { owner: 'ann' } },
      { aggregateId: accountId, typeName: 'bank.v1.Withdraw', fields: { amount: 5 } },
    ];
    const [opened, withdrawn] = await resultsOf(client.submitStream(commands, { dryRun: true }));
    assert.equal(opened.submitted.version, 1);
    assert.equal(opened.submitted.events[0].payload.owner, 'ann');
    assert.ok(withdrawn.error instanceof ChronicleError); // decided on the state as it is: no account
    // Nothing was written: the account can still be opened as new.
    const opening = await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'bob' }, { expectedVersion: 0 });
    assert.deepEqual([opening.version, opening.events[0].payload.owner], [1, 'bob']);
  } finally {
    client.close();
  }
});

test('the example against a server with --auth and no CHRONICLE_TOKEN prints the refusal the README shows', async () => {
  const example = path.join(here, '..', 'src', 'example.js');
  const environment = { ...process.env };
  delete environment.CHRONICLE_TOKEN;
  const ran = await promisify(execFile)(process.execPath, [example, guarded.address], {
    timeout: 20_000,
    env: environment,
  }).then(
    () => ({ code: 0 }),
    (error) => ({ code: error.code, stdout: error.stdout, stderr: error.stderr }),
  );
  assert.deepEqual(ran, {
    code: 1,
    stdout: '',
    stderr: "error: UNAUTHENTICATED NO_CREDENTIALS: credentials are required: send 'authorization: Bearer <token>'\n",
  });
});

test('a read a stale token failed is taken up again with the token the function gives then', async () => {
  const writer = new ChronicleClient(guarded.address, { token: apiKey });
  let asked = 0;
  const revoked = `chr_${crypto.randomBytes(32).toString('base64url')}`;
  const reader = new ChronicleClient(guarded.address, {
    token: () => {
      asked += 1;
      return asked === 1 ? revoked : apiKey;
    },
  });
  try {
    const accountId = `acc-${randomUUID()}`;
    await writer.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    const events = await reader.read(accountId);
    assert.deepEqual(
      events.map((e) => e.event_type),
      ['bank.v1.AccountOpened'],
    );
    assert.equal(asked, 2);
  } finally {
    writer.close();
    reader.close();
  }
});

test('TLS with createSsl(ca) and a token; plaintext is refused there', async () => {
  const tls = new ChronicleClient(secure.address, { credentials: grpc.credentials.createSsl(pki.ca), token: apiKey });
  const plaintext = new ChronicleClient(secure.address, { token: apiKey });
  try {
    const accountId = `acc-${randomUUID()}`;
    const opened = await tls.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    assert.deepEqual([opened.version, opened.events[0].user_id], [1, 'alice']);
    assert.equal((await tls.read(accountId)).length, 1);
    await assert.rejects(plaintext.getAggregate(accountId), (error) => error.code === 'UNAVAILABLE');
  } finally {
    tls.close();
    plaintext.close();
  }
});

test('credentials as PEM contents: { ca } speaks TLS, { ca, cert, key } mutual TLS, with the client\'s own grpc-js', async () => {
  const tls = new ChronicleClient(secure.address, { credentials: { ca: pki.ca }, token: apiKey });
  const certified = new ChronicleClient(mutual.address, {
    credentials: { ca: pki.ca.toString(), cert: pki.batch, key: pki.batchKey },
  });
  const uncertified = new ChronicleClient(mutual.address, { credentials: { ca: pki.ca }, retry: { retryForSeconds: 0 } });
  try {
    const accountId = `acc-${randomUUID()}`;
    const opened = await tls.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    const mutuallyOpened = await certified.submit(accountId, 'bank.v1.OpenAccount', { owner: 'bob' }); // another server
    assert.deepEqual(
      [opened, mutuallyOpened].map((done) => done.events[0].user_id),
      ['alice', 'CN=batch,O=Chronicle Tests'],
    );
    await assert.rejects(uncertified.getAggregate(accountId), (error) => error.code === 'UNAVAILABLE');
    assert.throws(
      () => new ChronicleClient(mutual.address, { credentials: { ca: pki.ca, cert: pki.batch } }),
      (error) => error.reason === 'INVALID_CREDENTIALS',
    );
  } finally {
    for (const client of [tls, certified, uncertified]) client.close();
  }
});

test("mutual TLS names the certificate's subject unless a token is sent too; a routing client's channels use it", async () => {
  const credentials = grpc.credentials.createSsl(pki.ca, pki.batchKey, pki.batch);
  const certified = new ChronicleClient(mutual.address, { credentials });
  const both = new ChronicleClient(mutual.address, { credentials, token: apiKey });
  const routed = new ChronicleClient(mutual.address, { credentials, routing: true });
  const marked = recordMarks(routed.routes);
  try {
    const accountId = `acc-${randomUUID()}`;
    const byCertificate = await certified.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    const byToken = await both.submit(accountId, 'bank.v1.Deposit', { amount: 1 });
    await routed.routes.ready;
    assert.ok(routed.routes.topology !== null, 'no topology over mutual TLS');
    assert.notEqual(routed.routes.ownerOf(accountId), null);
    const byRoute = await routed.submit(accountId, 'bank.v1.Deposit', { amount: 1 });
    const [streamed] = await resultsOf(routed.submitStream([deposit(1, { aggregateId: accountId })]));
    assert.deepEqual(
      [byCertificate, byToken, byRoute, streamed.submitted].map((done) => [done.version, done.events[0].user_id]),
      [
        [1, 'CN=batch,O=Chronicle Tests'],
        [2, 'alice'],
        [3, 'CN=batch,O=Chronicle Tests'],
        [4, 'CN=batch,O=Chronicle Tests'],
      ],
    );
    assert.deepEqual(marked, []); // the member's own channel spoke mutual TLS too: it never failed
  } finally {
    for (const client of [certified, both, routed]) client.close();
  }
});
