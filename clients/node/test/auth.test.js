// Credentials from Node against a real server started with --auth
// (docs/security.md, "Credentials"): an API key, short-lived JWTs handed out
// by a token function across which streams go on, a string JWT whose expiry
// ends a stream; and the bearer interceptor against stand-in servers.

import assert from 'node:assert/strict';
import crypto, { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import grpc from '@grpc/grpc-js';

import { ChronicleClient, ChronicleError, services } from '../src/chronicle.js';
import { startServer } from './server.js';
import { recordMarks } from './routes.js';
import { standInServer } from './stand_in.js';

const ISSUER = 'https://issuer.test';
const POLICY = `
[roles.teller]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw"]
read = ["Account"]
subscribe = ["Account"]

[roles.operator]
admin = true

[principals."alice"]
roles = ["teller", "operator"]
`;

const signing = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
const apiKey = `chr_${crypto.randomBytes(32).toString('base64url')}`;
let directory;
let server;

/** An ES256 JWT for alice, expiring at `exp` (seconds since the epoch). */
function jwt(exp) {
  const encode = (part) => Buffer.from(JSON.stringify(part)).toString('base64url');
  const data = `${encode({ alg: 'ES256', typ: 'JWT' })}.${encode({ sub: 'alice', iss: ISSUER, exp })}`;
  const signature = crypto.sign('sha256', Buffer.from(data), { key: signing.privateKey, dsaEncoding: 'ieee-p1363' });
  return `${data}.${signature.toString('base64url')}`;
}

/** Writes `text` to `name` in the test's directory, readable by its owner only (the server insists). */
function privateFile(name, text) {
  const file = path.join(directory, name);
  fs.writeFileSync(file, text, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  return file;
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-node-auth-'));
  const digest = crypto.createHash('sha256').update(apiKey).digest('hex');
  const publicKey = signing.publicKey.export({ type: 'spki', format: 'pem' });
  server = await startServer({
    args: [
      '--auth',
      '--policy-file',
      privateFile('policy.toml', POLICY),
      '--api-keys-file',
      privateFile('keys.toml', `[[keys]]\nprincipal = "alice"\nsha256 = "${digest}"\nroles = []\n`),
      '--jwt-key-file',
      privateFile('jwt.pem', publicKey),
      '--jwt-issuer',
      ISSUER,
      '--jwt-leeway-seconds',
      '0',
      '--auth-reload-seconds',
      '0.05',
    ],
  });
});

after(async () => {
  await server?.stop();
  if (directory) fs.rmSync(directory, { recursive: true, force: true });
});

/** Counts the calls of `method` made on `stub` (a subscription or stream reopened is another). */
function countCalls(stub, method) {
  const counter = { calls: 0 };
  const original = stub[method].bind(stub);
  stub[method] = (...args) => {
    counter.calls += 1;
    return original(...args);
  };
  return counter;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The application's token holder: a JWT living 1 to 2 s, a new one once the
 * held one expired (`promised`: handed out as a promise). `issued` lists the
 * expiries of the tokens made.
 */
function shortLivedTokens({ promised = false } = {}) {
  const issued = [];
  let held = null;
  const current = () => {
    const now = Date.now() / 1000;
    if (held === null || held.exp <= now) {
      held = { exp: Math.floor(now) + 2 };
      held.jwt = jwt(held.exp);
      issued.push(held.exp);
    }
    return held.jwt;
  };
  return { token: promised ? async () => current() : current, issued };
}

/** Resolves once `condition()` holds, looked at every 20 ms; rejects after `timeoutMs`. */
async function until(condition, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`not within ${timeoutMs} ms: ${condition}`);
    await sleep(20);
  }
}

test('an API key admits submits, reads and a routing client; no token is UNAUTHENTICATED NO_CREDENTIALS', async () => {
  // userId stays '' (the default): the server takes the principal, alice;
  // another user id would be impersonation, which alice may not do.
  const client = new ChronicleClient(server.address, { token: apiKey });
  const routed = new ChronicleClient(server.address, { token: apiKey, routing: true });
  const anonymous = new ChronicleClient(server.address);
  try {
    const accountId = `acc-${randomUUID()}`;
    await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    await client.submit(accountId, 'bank.v1.Deposit', { amount: 10 });
    const events = await client.read(accountId);
    assert.deepEqual(
      events.map((e) => [e.version, e.event_type, e.user_id]),
      [
        [1, 'bank.v1.AccountOpened', 'alice'],
        [2, 'bank.v1.MoneyDeposited', 'alice'],
      ],
    );
    assert.equal((await client.getAggregate(accountId)).state.balance, 10);

    // The routing client's own calls (GetTopology, WatchTopology, its
    // members' stubs) carry the key too.
    await routed.routes.ready;
    assert.ok(routed.routes.topology !== null, 'GetTopology was refused');
    assert.equal((await routed.submit(accountId, 'bank.v1.Deposit', { amount: 5 })).version, 3);
    const commands = [{ aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount: 1 } }];
    const streamed = [];
    for await (const result of routed.submitStream(commands)) streamed.push(result.submitted?.version ?? result.error);
    assert.deepEqual(streamed, [4]);

    const refusedAlike = (error) => {
      assert.ok(error instanceof ChronicleError);
      assert.equal(error.code, 'UNAUTHENTICATED');
      assert.equal(error.reason, 'NO_CREDENTIALS');
      return true;
    };
    await assert.rejects(anonymous.submit(accountId, 'bank.v1.Deposit', { amount: 1 }), refusedAlike);
    await assert.rejects(anonymous.read(accountId), refusedAlike);
    await assert.rejects(anonymous.subscribe({ aggregateId: accountId }).messages.next(), refusedAlike);
  } finally {
    client.close();
    routed.close();
    anonymous.close();
  }
});

test('a stale token is retried only when it comes from a function, a few times at most', async () => {
  const unknown = `chr_${crypto.randomBytes(32).toString('base64url')}`;
  const accountId = `acc-${randomUUID()}`;
  const fixed = new ChronicleClient(server.address, { token: unknown });
  let asked = 0;
  const renewed = new ChronicleClient(server.address, {
    // A revoked key first, then the current one: the retry heals the call.
    token: () => {
      asked += 1;
      return asked === 1 ? unknown : apiKey;
    },
  });
  let stale = 0;
  const stuck = new ChronicleClient(server.address, {
    token: () => {
      stale += 1;
      return unknown;
    },
  });
  try {
    const unknownKey = (error) => error.code === 'UNAUTHENTICATED' && error.reason === 'UNKNOWN_API_KEY';
    await assert.rejects(fixed.submit(accountId, 'bank.v1.OpenAccount', { owner: 'kim' }), unknownKey);
    assert.equal((await renewed.submit(accountId, 'bank.v1.OpenAccount', { owner: 'kim' })).version, 1);
    assert.equal(asked, 2);
    await assert.rejects(stuck.getAggregate(accountId), unknownKey);
    assert.equal(stale, 5); // STALE_TOKEN_ATTEMPTS (the retry policy sets no maxAttempts)
  } finally {
    fixed.close();
    renewed.close();
    stuck.close();
  }
});

test('a token whose signing key the key set no longer holds (UNKNOWN_SIGNING_KEY) is retried with the function\'s next', async () => {
  // A server of its own verifying with a JSON Web Key Set: a token whose kid
  // names a key it withdrew is UNKNOWN_SIGNING_KEY, not INVALID_TOKEN.
  const current = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const withdrawn = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const keySet = { keys: [{ ...current.publicKey.export({ format: 'jwk' }), kid: 'current', use: 'sig', alg: 'ES256' }] };
  const signed = (kid, { privateKey }) => {
    const encode = (part) => Buffer.from(JSON.stringify(part)).toString('base64url');
    const exp = Math.floor(Date.now() / 1000) + 300;
    const data = `${encode({ alg: 'ES256', typ: 'JWT', kid })}.${encode({ sub: 'alice', iss: ISSUER, exp })}`;
    const signature = crypto.sign('sha256', Buffer.from(data), { key: privateKey, dsaEncoding: 'ieee-p1363' });
    return `${data}.${signature.toString('base64url')}`;
  };
  const rotated = await startServer({
    args: [
      '--auth',
      '--policy-file',
      privateFile('jwks-policy.toml', POLICY),
      '--jwt-key-file',
      privateFile('jwks.json', JSON.stringify(keySet)),
      '--jwt-issuer',
      ISSUER,
    ],
  });
  const tokens = [signed('withdrawn', withdrawn), signed('current', current)];
  let asked = 0;
  const renewed = new ChronicleClient(rotated.address, { token: () => tokens[Math.min(asked++, 1)] });
  const fixed = new ChronicleClient(rotated.address, { token: tokens[0] });
  try {
    const accountId = `acc-${randomUUID()}`;
    assert.equal((await renewed.submit(accountId, 'bank.v1.OpenAccount', { owner: 'kim' })).version, 1);
    assert.equal(asked, 2); // the withdrawn key's token, then the current one's, for the same command
    await assert.rejects(
      fixed.getAggregate(accountId),
      (error) => error.code === 'UNAUTHENTICATED' && error.reason === 'UNKNOWN_SIGNING_KEY',
    );
  } finally {
    renewed.close();
    fixed.close();
    await rotated.stop();
  }
});

test(
  'short-lived JWTs from a token function: a subscription, a command stream and a group consumer go on across expiries',
  { timeout: 30_000 },
  async () => {
    // Each stream is ended by the server at its token's exp
    // (UNAUTHENTICATED TOKEN_EXPIRED) and reopened by the client.
    const { token, issued } = shortLivedTokens({ promised: true });
    const origin = `node-auth-${randomUUID()}`;
    const client = new ChronicleClient(server.address, { token, origin });
    const subscriptions = countCalls(client.events, 'Subscribe');
    const commandStreams = countCalls(client.commands, 'SubmitStreamPages');
    const consumerStreams = countCalls(client.groups, 'Consume');
    const accountId = `acc-${randomUUID()}`;
    const group = `auth-${randomUUID()}`;
    await client.createGroup(group, { aggregateTypes: ['Account'], origin, segments: 1 });

    // The subscription and the group's consumer read all along, as the
    // deposits commit: each of their streams crosses the expiries too.
    const subscription = client.subscribe({ aggregateId: accountId });
    const streamed = [];
    const subscribed = (async () => {
      for await (const message of subscription.messages) {
        if (message.kind === 'event') streamed.push(message.event);
      }
    })();
    const worker = client.consume(group, 'worker-1', { reconnectDelaySeconds: 0.05 });
    // Versions acked, and in the order of their first delivery (at least
    // once: one in flight when a stream ended may come again).
    const acked = new Set();
    const firsts = [];
    const consumed = (async () => {
      for await (const delivery of worker.deliveries) {
        delivery.ack();
        if (!acked.has(delivery.event.version)) firsts.push(delivery.event.version);
        acked.add(delivery.event.version);
      }
    })();
    const guard = setTimeout(() => {
      subscription.cancel();
      worker.close();
    }, 25_000);
    try {
      await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'jo' });
      // Deposits, one every 20 ms, until two tokens expired, then ten more.
      const ids = [];
      async function* deposits() {
        for (let afterThird = 0; afterThird < 10;) {
          if (issued.length >= 3) afterThird += 1;
          ids.push(randomUUID());
          yield { aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount: 1 }, commandId: ids.at(-1) };
          await sleep(20);
        }
      }
      const results = [];
      for await (const result of client.submitStream(deposits())) results.push(result);
      const last = ids.length + 1; // the account's version after the last deposit

      // Every deposit answered once, in order, none lost.
      assert.deepEqual(
        results.map((r) => r.error?.reason ?? null),
        results.map(() => null),
      );
      assert.deepEqual(
        results.map((r) => r.command_id),
        ids,
      );
      assert.deepEqual(
        results.map((r) => r.submitted.version),
        Array.from({ length: ids.length }, (_, i) => i + 2),
      );

      await until(() => streamed.length >= last && acked.size >= last);
      subscription.cancel();
      worker.close();
      await Promise.all([subscribed, consumed]);
      // The subscription: every event, in order, none twice.
      assert.deepEqual(
        streamed.map((e) => e.version),
        Array.from({ length: last }, (_, i) => i + 1),
      );
      assert.equal(new Set(streamed.map((e) => e.event_id)).size, last);
      // The group: every event acked, in order.
      assert.deepEqual(
        firsts,
        Array.from({ length: last }, (_, i) => i + 1),
      );

      assert.ok(issued.length >= 3, `${issued.length} tokens issued`);
      for (const [what, counter] of [
        ['subscription', subscriptions],
        ['command stream', commandStreams],
        ['consumer', consumerStreams],
      ]) {
        assert.ok(counter.calls >= 3, `the ${what} was opened ${counter.calls} times`);
      }
    } finally {
      clearTimeout(guard);
      subscription.cancel();
      worker.close();
      client.close();
    }
  },
);

test(
  'an idle command stream outlives more token expiries than its retries: a call that lived counts afresh',
  { timeout: 20_000 },
  async () => {
    const { token, issued } = shortLivedTokens();
    const client = new ChronicleClient(server.address, { token });
    const streams = countCalls(client.commands, 'SubmitStreamPages');
    const accountId = `acc-${randomUUID()}`;
    async function* commands() {
      yield { aggregateId: accountId, typeName: 'bank.v1.OpenAccount', fields: { owner: 'kim' } };
      await until(() => issued.length >= 4 && streams.calls >= 4, 15_000); // idle across three expiries
      yield { aggregateId: accountId, typeName: 'bank.v1.Deposit', fields: { amount: 5 } };
    }
    try {
      const versions = [];
      for await (const result of client.submitStream(commands(), { maxAttempts: 2, renewAfterSeconds: 1 })) {
        assert.equal(result.error, null);
        versions.push(result.submitted.version);
      }
      assert.deepEqual(versions, [1, 2]);
      assert.ok(streams.calls >= 4, `the stream was opened ${streams.calls} times`);
    } finally {
      client.close();
    }
  },
);

test(
  'a subscription opened with a string JWT ends at its expiry: UNAUTHENTICATED TOKEN_EXPIRED',
  { timeout: 15_000 },
  async () => {
    const exp = Math.floor(Date.now() / 1000) + 2;
    const client = new ChronicleClient(server.address, { token: jwt(exp) });
    const subscriptions = countCalls(client.events, 'Subscribe');
    const accountId = `acc-${randomUUID()}`;
    const subscription = client.subscribe({ aggregateId: accountId });
    try {
      await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'lee' });
      const seen = [];
      await assert.rejects(
        (async () => {
          for await (const message of subscription.messages) {
            if (message.kind === 'event') seen.push(message.event.version);
          }
        })(),
        (error) => {
          assert.ok(error instanceof ChronicleError);
          assert.equal(error.code, 'UNAUTHENTICATED');
          assert.equal(error.reason, 'TOKEN_EXPIRED');
          return true;
        },
      );
      assert.deepEqual(seen, [1]); // the stream was live until then
      assert.ok(Date.now() / 1000 >= exp - 0.1, 'ended before the token expired');
      assert.equal(subscriptions.calls, 1); // a string token is not asked again: no reopening
    } finally {
      subscription.cancel();
      client.close();
    }
  },
);

test('the token goes as authorization metadata on unary and streaming calls; a function is asked at each', async () => {
  const seen = [];
  const bearer = (call) => seen.push(call.metadata.get('authorization')[0] ?? null);
  const standIn = await standInServer(services.EventService, {
    GetAggregate(call, callback) {
      bearer(call);
      callback({ code: grpc.status.NOT_FOUND, details: 'none (test)' });
    },
    Subscribe(call) {
      bearer(call);
      call.write({ caught_up: { position: 0 } });
      call.end();
    },
  });
  let asked = 0;
  const fixed = new ChronicleClient(standIn.address, { token: 'key-1' });
  const sync = new ChronicleClient(standIn.address, { token: () => `sync-${(asked += 1)}` });
  const promised = new ChronicleClient(standIn.address, { token: async () => `async-${(asked += 1)}` });
  const none = new ChronicleClient(standIn.address);
  try {
    for (const client of [fixed, sync, promised, none]) {
      await assert.rejects(client.getAggregate('acc-1'), (error) => error.code === 'NOT_FOUND');
      for await (const message of client.subscribe().messages) assert.equal(message.kind, 'caught_up');
    }
    assert.deepEqual(seen, [
      'Bearer key-1',
      'Bearer key-1',
      'Bearer sync-1',
      'Bearer sync-2',
      'Bearer async-3',
      'Bearer async-4',
      null,
      null,
    ]);
  } finally {
    for (const client of [fixed, sync, promised, none]) client.close();
    standIn.stop();
  }
});

test('a failing token function fails the call; a call awaiting its token still ends at its deadline or cancel', async () => {
  let called = 0;
  const standIn = await standInServer(services.EventService, {
    GetAggregate(call, callback) {
      called += 1;
      callback({ code: grpc.status.NOT_FOUND, details: 'none (test)' });
    },
  });
  const throwing = new ChronicleClient(standIn.address, {
    token: () => {
      throw new Error('no token at hand');
    },
  });
  const rejecting = new ChronicleClient(standIn.address, {
    token: async () => Promise.reject(new Error('issuer down')),
  });
  const empty = new ChronicleClient(standIn.address, { token: () => '' });
  const late = new ChronicleClient(standIn.address, { token: () => new Promise(() => {}) });
  try {
    const failed = (message) => (error) => {
      assert.ok(error instanceof ChronicleError);
      assert.equal(error.code, 'UNKNOWN');
      assert.match(error.message, message);
      return true;
    };
    await assert.rejects(throwing.getAggregate('acc-1'), failed(/Getting the token failed: no token at hand/));
    await assert.rejects(rejecting.getAggregate('acc-1'), failed(/Getting the token failed: issuer down/));
    await assert.rejects(empty.getAggregate('acc-1'), failed(/an empty string/));
    assert.equal(called, 0); // nothing was sent without a token
    await assert.rejects(
      new Promise((resolve, reject) =>
        late.events.GetAggregate({ aggregate_id: 'acc-1' }, { deadline: Date.now() + 50 }, (error) =>
          error ? reject(error) : resolve(),
        ),
      ),
      (error) => error.code === grpc.status.DEADLINE_EXCEEDED,
    );
    const subscription = late.subscribe();
    const ended = subscription.messages.next();
    setTimeout(() => subscription.cancel(), 50);
    assert.deepEqual(await ended, { value: undefined, done: true });
    assert.throws(
      () => new ChronicleClient(standIn.address, { token: 42 }),
      (error) => error instanceof ChronicleError && error.code === 'INVALID_ARGUMENT' && error.reason === 'INVALID_OPTION',
    );
  } finally {
    for (const client of [throwing, rejecting, empty, late]) client.close();
    standIn.stop();
  }
});

// Alice may read boxes too: her grants change, her submits stay.
const WIDER_POLICY = POLICY.replace('read = ["Account"]', 'read = ["Account", "Box"]');

/**
 * Runs `change()` once a SubmitStreamPages call on `stub` is open (the
 * server answered it: it is registered as a live stream) and resolves with
 * the ChronicleError the server ends that call with.
 */
function endOfACallAcross(stub, change) {
  return new Promise((resolve) => {
    const call = stub.SubmitStreamPages();
    call.on('metadata', () => change());
    call.on('data', () => {});
    call.on('error', (error) => resolve(new ChronicleError(error)));
  });
}

test(
  'a routed command stream whose call a changed grant ended opens it again on the same replica, which stays up',
  { timeout: 20_000 },
  async () => {
    const client = new ChronicleClient(server.address, { token: apiKey, routing: true });
    const probe = new ChronicleClient(server.address, { token: apiKey });
    const marked = recordMarks(client.routes);
    try {
      await client.routes.ready;
      const [member] = client.routes.topology.members; // the lone server
      const streams = countCalls(client.routes.stubsOf(member.address).commands, 'SubmitStreamPages');
      const accountId = `acc-${randomUUID()}`;
      const ids = [];
      const next = (typeName, fields) => {
        ids.push(randomUUID());
        return { aggregateId: accountId, typeName, fields, commandId: ids.at(-1) };
      };
      let ended = null;
      async function* commands() {
        yield next('bank.v1.OpenAccount', { owner: 'ann' });
        // The server reads the policy again within 50 ms and ends alice's
        // streams (UNAVAILABLE CREDENTIALS_CHANGED, with a RetryInfo of a
        // second), the probe's and the lane's; deposits go on meanwhile, and
        // one more once the lane's call was opened again.
        ended = endOfACallAcross(probe.commands, () => privateFile('policy.toml', WIDER_POLICY));
        for (let n = 0; n < 500 && streams.calls < 2; n += 1) {
          yield next('bank.v1.Deposit', { amount: 1 });
          await sleep(20);
        }
        yield next('bank.v1.Deposit', { amount: 1 });
      }
      const results = [];
      for await (const result of client.submitStream(commands())) results.push(result);

      const why = await ended;
      assert.deepEqual([why.code, why.reason], ['UNAVAILABLE', 'CREDENTIALS_CHANGED']);
      assert.equal(streams.calls, 2); // opened again on its own replica
      assert.deepEqual(marked, []); // which was never marked down
      assert.equal(client.routes.isDown(member.address), false);
      // Every command answered once, in order.
      assert.deepEqual(
        results.filter((r) => r.error).map((r) => r.error.reason),
        [],
      );
      assert.deepEqual(
        results.map((r) => r.command_id),
        ids,
      );
      assert.deepEqual(
        results.map((r) => r.submitted.version),
        ids.map((_, i) => i + 1),
      );
    } finally {
      // The policy as before, read again (a probe's stream ended by it) before the next test.
      await endOfACallAcross(probe.commands, () => privateFile('policy.toml', POLICY));
      client.close();
      probe.close();
    }
  },
);
