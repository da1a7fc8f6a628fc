// The Node.js client's default retry policy (src/retry.js) waits out a server
// restart and a database outage, as the Python client's does: a unary call
// or a read is tried again for 30 s (`retryForSeconds`), a subscription, a
// command stream and a group consumer are reopened for as long as they are
// iterated, the backoff growing to 2 s. Before, a unary call gave up after
// three attempts (about 0.3 s), a subscription after ten, a command stream
// after five: none outlasted a restart.
//
// Held here: the policy's numbers; against stand-in servers, a submit
// refused UNAVAILABLE for 1.5 s that succeeds with its one command id, a
// unary call given up once its budget is spent, a read broken mid-way
// (inside a version an upcaster split) resumed without a gap or a repeat,
// a group consumer's waits growing to the cap, reported to the logger; and
// against a real server process killed (SIGKILL) or stopped (SIGTERM) and
// started again on its port about three seconds later: a subscriber that
// receives every event once, in order, a submit made while the server was
// down that succeeds once it is back (its command run once), and a
// command stream whose unanswered commands are sent again, each appended
// once.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, pack, services } from '../src/chronicle.js';
import { standInServer } from './stand_in.js';

const repository = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const DOWN_MS = 3000; // longer than the old bounds and than a restart; short enough for the suite
const MOST_WAIT = 2 * 1.2; // the default backoff's cap, and its jitter
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const unavailable = (details = 'down (test)') => ({ code: grpc.status.UNAVAILABLE, details });

/** Resolves once `condition()` holds, looked at every 20 ms; rejects after `timeoutMs` (a broken build). */
async function until(condition, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms`);
    await sleep(20);
  }
}

/** Records what a promise came to, so a test can ask whether it has given up without awaiting it. */
function watched(promise) {
  const outcome = { settled: false, error: null, value: undefined };
  outcome.promise = promise.then(
    (value) => Object.assign(outcome, { settled: true, value }),
    (error) => Object.assign(outcome, { settled: true, error }),
  );
  return outcome;
}

/** A logger that keeps what it is told. */
function recordingLogger() {
  const lines = [];
  return { lines, info: (message) => lines.push(['info', message]), warn: (message) => lines.push(['warn', message]) };
}

// -- the policy ----------------------------------------------------------------------

test('the default policy bounds unary calls by 30 s, not by a count, and streams by nothing', async () => {
  const { DEFAULT_RETRY, retryDelay, retryPolicy } = await import('../src/retry.js');
  assert.deepEqual({ ...DEFAULT_RETRY }, {
    maxAttempts: Infinity,
    retryForSeconds: 30,
    initialBackoffSeconds: 0.05,
    maxBackoffSeconds: 2,
    multiplier: 2,
    jitter: 0.2,
  });
  const refusal = { code: 'UNAVAILABLE', retryDelaySeconds: null };
  const waits = Array.from({ length: 10_000 }, (_, index) => retryDelay(DEFAULT_RETRY, index + 1, refusal));
  assert.ok(waits.every((wait) => wait !== null && wait > 0 && wait <= MOST_WAIT), 'a stream reopens without end');
  assert.equal(retryDelay(DEFAULT_RETRY, 1, refusal, { elapsedSeconds: 29.99 }), null); // a unary call's budget
  assert.ok(retryDelay(DEFAULT_RETRY, 50, { code: 'UNAVAILABLE', retryDelaySeconds: 3 }) >= 3); // RetryInfo
  // A server going away asks for a second; this client reopens on a new connection, after its backoff alone.
  const going = { code: 'UNAVAILABLE', reason: 'SHUTTING_DOWN', retryDelaySeconds: 1 };
  const first = retryDelay(DEFAULT_RETRY, 1, going);
  assert.ok(first >= 0.05 && first <= 0.06, `waited ${first} s after SHUTTING_DOWN`);
  assert.equal(retryDelay(DEFAULT_RETRY, 1, { code: 'UNAVAILABLE', reason: 'STORE_UNAVAILABLE', retryDelaySeconds: 1 }), 1);
  assert.equal(retryDelay(DEFAULT_RETRY, 5, refusal, { stale: true }), null); // a stale token: 5 at most
  assert.equal(retryPolicy({ maxAttempts: null, retryForSeconds: null }).retryForSeconds, Infinity);
  assert.throws(() => retryPolicy({ maxAttempts: 0 }), RangeError);
});

// -- stand-in servers ------------------------------------------------------------------

test('a submit refused UNAVAILABLE for 1.5 s succeeds with the default policy, its command id the same each time', async () => {
  const ids = [];
  let upAt = null;
  const standIn = await standInServer(services.CommandService, {
    Submit(call, callback) {
      ids.push(call.request.command.command_id);
      upAt ??= Date.now() + 1500;
      if (Date.now() < upAt) callback(unavailable());
      else callback(null, { events: [], version: 1, replayed: false });
    },
  });
  const client = new ChronicleClient(standIn.address);
  try {
    const done = await client.submit('acc-1', 'bank.v1.Deposit', { amount: 1 });
    assert.equal(done.version, 1);
    assert.ok(ids.length > 5, `${ids.length} attempts`);
    assert.deepEqual(new Set(ids), new Set([done.command_id]));
  } finally {
    client.close();
    standIn.stop();
  }
});

test('a unary call is given up once retry.retryForSeconds is spent, whatever the count', async () => {
  let attempts = 0;
  const standIn = await standInServer(services.EventService, {
    GetAggregate(_call, callback) {
      attempts += 1;
      callback(unavailable());
    },
  });
  const logger = recordingLogger();
  const client = new ChronicleClient(standIn.address, { retry: { retryForSeconds: 1 }, logger });
  const started = Date.now();
  try {
    await assert.rejects(client.getAggregate('acc-1'), (error) => error.code === 'UNAVAILABLE');
    const took = Date.now() - started;
    assert.ok(took >= 700 && took < 1000 + MOST_WAIT * 1000, `${took} ms`);
    assert.ok(attempts > 3, `${attempts} attempts`);
    assert.deepEqual(
      logger.lines.map(([level]) => level),
      Array.from({ length: attempts - 1 }, (_, index) => (index < 3 ? 'info' : 'warn')),
    );
  } finally {
    client.close();
    standIn.stop();
  }
});

test('a read broken by UNAVAILABLE is resumed where it broke, inside a version an upcaster split', async () => {
  const state = pack('bank.v1.Account', { owner: 'ann', balance: 0 });
  const event = (version, n) => ({
    event_id: `e-${version}-${n}`,
    aggregate_id: 'acc-1',
    version,
    position: version * 10 + n,
    event_type: 'bank.v1.MoneyDeposited',
    payload: pack('bank.v1.MoneyDeposited', { amount: version * 10 + n }),
  });
  // Versions 1, 2, 2 (one stored event read as two), 3; the first three calls break.
  const all = [event(1, 0), event(2, 0), event(2, 1), event(3, 0)];
  const asked = [];
  const standIn = await standInServer(services.EventService, {
    ReadAggregatePages(call) {
      const from = Number(call.request.from_version);
      asked.push(from);
      const events = all.filter((one) => one.version >= from);
      if (asked.length === 1) {
        call.write({ events: events.slice(0, 2) }); // versions 1 and the first 2
        call.emit('error', unavailable('dropped (test)'));
      } else if (asked.length <= 3) {
        call.emit('error', unavailable('still away (test)'));
      } else {
        call.write({ events });
        call.end();
      }
    },
    GetAggregate(_call, callback) {
      callback(null, { aggregate_id: 'acc-1', aggregate_type: 'Account', version: 3, state });
    },
  });
  const client = new ChronicleClient(standIn.address);
  try {
    const events = await client.read('acc-1');
    assert.deepEqual(
      events.map((one) => one.event_id),
      all.map((one) => one.event_id),
    );
    assert.deepEqual(asked, [1, 2, 2, 2]); // again at the version where it broke
  } finally {
    client.close();
    standIn.stop();
  }
});

test("a group consumer's waits grow from reconnectDelaySeconds to the cap, the first few reported as info", async () => {
  let calls = 0;
  const standIn = await standInServer(services.SubscriptionGroupService, {
    Consume(call) {
      calls += 1;
      call.once('data', () => {
        if (calls <= 6) {
          call.emit('error', unavailable('connection refused (test)'));
          return;
        }
        call.write({ joined: { consumer: 'worker#1', segments: 1 } });
        const event = {
          event_id: 'e-1',
          aggregate_id: 'acc-1',
          version: 1,
          position: 1,
          event_type: 'bank.v1.AccountOpened',
          payload: pack('bank.v1.AccountOpened', { owner: 'ann' }),
        };
        call.write({ deliveries: { deliveries: [{ event, attempt: 1, replayed: false }] } });
      });
      call.on('end', () => call.end());
    },
  });
  const logger = recordingLogger();
  const client = new ChronicleClient(standIn.address, { retry: { maxBackoffSeconds: 0.08 }, logger });
  const worker = client.consume('ledger', 'worker', { reconnectDelaySeconds: 0.01 });
  try {
    const { value: delivery } = await worker.deliveries.next();
    assert.equal(delivery.event.event_id, 'e-1');
    const waits = logger.lines.map(([, message]) => Number(/in ([\d.]+) s$/.exec(message)[1]));
    assert.deepEqual(waits, [0.01, 0.02, 0.04, 0.08, 0.08, 0.08]);
    assert.deepEqual(
      logger.lines.map(([level]) => level),
      ['info', 'info', 'info', 'warn', 'warn', 'warn'],
    );
  } finally {
    await worker.close();
    client.close();
    standIn.stop();
  }
});

// -- a real server process, killed and started again -------------------------------------

function python() {
  if (process.env.CHRONICLE_PYTHON) return process.env.CHRONICLE_PYTHON;
  const venv = path.join(repository, '.venv', 'bin', 'python');
  return fs.existsSync(venv) ? venv : 'python3';
}

/** A loopback port nothing listens on now. */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/**
 * A server process on `address` over the SQLite database `url`, that a test
 * may stop (`stop(signal)`, resolving with how it exited) and start again on
 * the same address and database; resolves once it serves.
 */
async function startProcess(address, url, timeoutMs = 30_000) {
  const serve = ['-m', 'service', 'serve', '--listen', address, '--database-url', url, '--anonymous-admin'];
  const child = spawn(python(), serve, { cwd: repository, stdio: ['ignore', 'pipe', 'pipe'] });
  const output = [];
  child.stderr.on('data', (chunk) => output.push(chunk.toString()));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(signal ?? code)));
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no server after ${timeoutMs} ms: ${output.join('')}`)), timeoutMs);
    exited.then((how) => reject(new Error(`server exited (${how}): ${output.join('')}`)));
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.includes('Chronicle serving gRPC on')) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return {
    stop: (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      return exited;
    },
  };
}

/** A server on a port and database of its own, for `run(server)`; stopped whatever happened. */
async function withRestartableServer(run) {
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-node-retries-'));
  const url = `sqlite:///${path.join(directory, 'events.db')}`;
  const address = `127.0.0.1:${await freePort()}`;
  const server = {
    address,
    process: await startProcess(address, url),
    async restart() {
      this.process = await startProcess(address, url);
    },
  };
  try {
    await run(server);
  } finally {
    await server.process.stop('SIGKILL');
    fs.rmSync(directory, { recursive: true, force: true });
  }
}

test('a subscriber and a submit with the default policy outlast a killed server started again', { timeout: 60_000 }, async () => {
  await withRestartableServer(async (server) => {
    const client = new ChronicleClient(server.address); // the default retry policy
    const accountId = `acc-${randomUUID()}`;
    const subscription = client.subscribe({ aggregateId: accountId });
    const received = [];
    const following = watched(
      (async () => {
        for await (const message of subscription.messages) if (message.kind === 'event') received.push(message.event);
      })(),
    );
    try {
      await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
      for (const amount of [1, 2, 3]) await client.submit(accountId, 'bank.v1.Deposit', { amount });
      await until(() => received.length === 4 || following.settled, 'the events before the kill');

      assert.equal(await server.process.stop('SIGKILL'), 'SIGKILL');
      const commandId = randomUUID();
      const submitting = watched(client.submit(accountId, 'bank.v1.Deposit', { amount: 10 }, { commandId }));
      await sleep(DOWN_MS);
      const gaveUp = Object.entries({ subscriber: following, submit: submitting })
        .filter(([, outcome]) => outcome.settled)
        .map(([name, outcome]) => `${name}: ${outcome.error}`);
      assert.deepEqual(gaveUp, [], 'gave up while the server was down');
      await server.restart(); // the same port and database

      await submitting.promise;
      assert.equal(submitting.error, null);
      assert.deepEqual([submitting.value.version, submitting.value.replayed], [5, false]);
      await client.submit(accountId, 'bank.v1.Deposit', { amount: 11 });
      await until(() => received.length === 6 || following.settled, 'the events after the restart');
      assert.equal(following.error, null);
      const again = await client.submit(accountId, 'bank.v1.Deposit', { amount: 10 }, { commandId });
      assert.deepEqual([again.version, again.replayed], [5, true]); // the same command id: run once
      const history = await client.read(accountId);
      assert.deepEqual(
        history.map((event) => event.version),
        [1, 2, 3, 4, 5, 6],
      );
      assert.equal(history.filter((event) => event.command_id === commandId).length, 1);
    } finally {
      subscription.cancel();
      client.close();
    }
    // Every event once, in order.
    assert.deepEqual(
      received.map((event) => event.version),
      [1, 2, 3, 4, 5, 6],
    );
  });
});

test('a command stream with the default policy outlasts a stopped server started again', { timeout: 60_000 }, async () => {
  await withRestartableServer(async (server) => {
    const client = new ChronicleClient(server.address); // the default retry policy
    const accountId = `acc-${randomUUID()}`;
    let release;
    const later = new Promise((resolve) => (release = resolve));
    async function* commands() {
      yield { aggregateId: accountId, typeName: 'bank.v1.OpenAccount', fields: { owner: 'ann' } };
      for (let amount = 1; amount <= 10; amount += 1) {
        if (amount === 5) await later; // the rest while the server is down
        yield { aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount } };
      }
    }
    const results = [];
    const streaming = watched(
      (async () => {
        for await (const result of client.submitStream(commands())) results.push(result);
      })(),
    );
    try {
      await until(() => results.length === 5 || streaming.settled, 'the first results');
      assert.equal(await server.process.stop('SIGTERM'), 0); // its streams end UNAVAILABLE (SHUTTING_DOWN)
      release();
      await sleep(DOWN_MS);
      assert.equal(streaming.settled ? String(streaming.error) : null, null, 'gave up while the server was down');
      await server.restart();
      await streaming.promise;
      assert.equal(streaming.error, null);
      const history = await client.read(accountId);
      assert.deepEqual(
        results.map((result) => result.submitted?.version ?? String(result.error)),
        Array.from({ length: 11 }, (_, index) => index + 1),
      );
      assert.deepEqual(
        history.map((event) => event.command_id),
        results.map((result) => result.command_id),
      ); // each appended once
    } finally {
      release();
      client.close();
    }
  });
});
