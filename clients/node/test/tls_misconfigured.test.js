// A client whose TLS is misconfigured says so: against real server
// processes, a client speaking TLS to a plaintext server, one given a CA
// that did not sign the TLS server's certificate, a plaintext client at
// a TLS server, and at a mutual TLS server a client without a certificate
// and one whose certificate a CA the server does not take signed. Each
// stream warns (logger.warn) naming the TLS failure once per outage, and
// throws UNAVAILABLE TLS_HANDSHAKE_FAILED once the retry policy's window
// passed, instead of retrying UNAVAILABLE for ever in silence; a unary
// call throws it at its first attempt. A server that is merely away, or
// that closes connections at once, is still retried.

import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

import { ChronicleClient } from '../src/chronicle.js';
import { startServer } from './server.js';

const repository = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
let directory;
let pki;
let plain;
let secure;
let mutual; // TLS, taking clients whose certificate the first CA signed

/**
 * Two CAs of the repository's test PKI, a server certificate for 127.0.0.1
 * that the first signed, and a client certificate from each.
 */
function makePki() {
  const python = process.env.CHRONICLE_PYTHON ?? path.join(repository, '.venv', 'bin', 'python');
  const script = [
    'import sys',
    'from pathlib import Path',
    'from tests.support.security import Authority',
    'ca, other = Authority(), Authority()',
    'server = ca.issue("localhost", server=True)',
    'client, stranger = ca.issue("alice"), other.issue("mallory")',
    'folder = Path(sys.argv[1])',
    'for name, pem in [("ca.pem", ca.certificate), ("other.pem", other.certificate),',
    '                  ("server.pem", server.certificate), ("server.key", server.key),',
    '                  ("client.pem", client.certificate), ("client.key", client.key),',
    '                  ("stranger.pem", stranger.certificate), ("stranger.key", stranger.key)]:',
    '    (folder / name).write_bytes(pem)',
    '    (folder / name).chmod(0o600)',
  ].join('\n');
  const made = spawnSync(fs.existsSync(python) ? python : 'python3', ['-c', script, directory], { cwd: repository });
  assert.equal(made.status, 0, String(made.stderr));
  const read = (name) => fs.readFileSync(path.join(directory, name));
  return {
    ca: read('ca.pem'),
    other: read('other.pem'),
    client: { cert: read('client.pem'), key: read('client.key') },
    stranger: { cert: read('stranger.pem'), key: read('stranger.key') },
  };
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-node-tls-'));
  pki = makePki();
  const tls = ['--tls-cert-file', path.join(directory, 'server.pem')];
  tls.push('--tls-key-file', path.join(directory, 'server.key'));
  const clients = ['--tls-client-ca-file', path.join(directory, 'ca.pem')];
  [plain, secure, mutual] = await Promise.all([
    startServer({ args: ['--anonymous-admin'] }),
    startServer({ args: tls }),
    startServer({ args: [...tls, ...clients] }),
  ]);
});

after(async () => {
  await Promise.all([plain?.stop(), secure?.stop(), mutual?.stop()]);
  if (directory) fs.rmSync(directory, { recursive: true, force: true });
});

/** A logger keeping what it is told. */
function recording() {
  const lines = { info: [], warn: [] };
  return { lines, logger: { info: (line) => lines.info.push(line), warn: (line) => lines.warn.push(line) } };
}

/** Runs `loop` to its end; resolves to what it threw and how long it took (ms). */
async function ending(loop) {
  const started = Date.now();
  try {
    for await (const item of loop) void item;
  } catch (error) {
    return { error, ms: Date.now() - started };
  }
  return { error: null, ms: Date.now() - started };
}

// The misconfigurations, each with the server it is met at, the client's
// credentials, what the error and the warning say of it, and what the
// error tells to do. A plaintext client at a TLS server gets no TLS error
// (the server closes the connection): the client asks the address for a
// TLS handshake. Nor does a TLS client whose certificate (or its lack)
// a mutual TLS server refuses (the server closes the connection after the
// handshake, as grpc-js says of one at its connection limit): the client
// makes a handshake of its own.
const CHECK = /check the client's credentials/;
const MISCONFIGURED = [
  { name: 'TLS against a plaintext server', server: () => plain, credentials: () => ({ ca: pki.ca }), said: /wrong version number/, hint: CHECK },
  { name: 'a CA that did not sign the certificate', server: () => secure, credentials: () => ({ ca: pki.other }), said: /certificate/, hint: CHECK },
  {
    name: 'plaintext against a TLS server',
    server: () => secure,
    credentials: () => null,
    said: /the server speaks TLS and this client plaintext/,
    hint: /give the client credentials/,
  },
  {
    name: 'no client certificate at a mutual TLS server',
    server: () => mutual,
    credentials: () => ({ ca: pki.ca }),
    said: /the server requires a client certificate and this client gives none/,
    hint: /give the client its certificate and key/,
  },
  {
    name: 'a client certificate the mutual TLS server does not take',
    server: () => mutual,
    credentials: () => ({ ca: pki.ca, ...pki.stranger }),
    said: /it refused this client's certificate/,
    hint: /check the client's certificate/,
  },
];

for (const { name, server, credentials, said, hint } of MISCONFIGURED) {
  test(`a subscription with ${name} warns naming the TLS failure, then throws TLS_HANDSHAKE_FAILED`, { timeout: 60_000 }, async () => {
    const { lines, logger } = recording();
    const address = server().address;
    const client = new ChronicleClient(address, { credentials: credentials(), logger, retry: { retryForSeconds: 2 } });
    try {
      const { error, ms } = await ending(client.subscribe({}, { fromEnd: true }).messages);
      assert.ok(error !== null, 'the subscription did not end');
      assert.equal(`${error.name} ${error.code} ${error.reason}`, 'ChronicleError UNAVAILABLE TLS_HANDSHAKE_FAILED');
      assert.match(error.message, said);
      assert.match(error.message, hint);
      assert.equal(error.metadata.address, address);
      assert.match(error.metadata.tls_error, said);
      assert.equal(error.cause.code, 'UNAVAILABLE'); // gRPC's own status, as it came
      assert.ok(ms >= 1900 && ms < 15_000, `it ended after ${ms} ms, the window being 2 s`);
      // Said once for the outage (not once per retry), as a warning, naming the address and the TLS error.
      const told = lines.warn.filter((line) => line.includes('TLS handshake'));
      assert.equal(told.length, 1, lines.warn.join('\n'));
      assert.ok(told[0].includes(address), told[0]);
      assert.match(told[0], said);
    } finally {
      await client.close();
    }
  });
}

test('a consumer and a command stream with TLS against a plaintext server say so and throw too', { timeout: 60_000 }, async () => {
  const { lines, logger } = recording();
  const retry = { retryForSeconds: 1 };
  const client = new ChronicleClient(plain.address, { credentials: { ca: pki.ca }, logger, retry });
  try {
    const consumer = await ending(client.consume('g', 'w').deliveries);
    const commands = [{ aggregateId: 'acc-1', typeName: 'bank.v1.OpenAccount', fields: { owner: 'ann' } }];
    const stream = await ending(client.submitStream(commands));
    for (const [what, { error }] of Object.entries({ consumer, stream })) {
      assert.equal(`${error?.code} ${error?.reason}`, 'UNAVAILABLE TLS_HANDSHAKE_FAILED', what);
      assert.match(error.message, /wrong version number/, what);
    }
    assert.equal(lines.warn.filter((line) => line.includes('TLS handshake')).length, 2, lines.warn.join('\n'));
  } finally {
    await client.close();
  }
});

test('a client with its certificate reads and submits at a mutual TLS server, with no TLS warning', { timeout: 60_000 }, async () => {
  const { lines, logger } = recording();
  const client = new ChronicleClient(mutual.address, { credentials: { ca: pki.ca, ...pki.client }, logger });
  try {
    const done = await client.submit(`acc-${Date.now()}`, 'bank.v1.OpenAccount', { owner: 'ann' });
    assert.equal(done.version, 1);
    for await (const message of client.subscribe({}, { fromEnd: true }).messages) {
      if (message.kind === 'caught_up') break;
    }
    assert.deepEqual(lines.info.concat(lines.warn), []);
  } finally {
    await client.close();
  }
});

test('a subscription with its TLS right reads; one whose server is away keeps waiting, with no TLS warning', { timeout: 60_000 }, async () => {
  const { lines, logger } = recording();
  const retry = { retryForSeconds: 1 };
  const right = new ChronicleClient(secure.address, { credentials: { ca: pki.ca }, logger, retry });
  // Nothing listens there: connection refused, not a handshake.
  const away = new ChronicleClient('127.0.0.1:1', { credentials: { ca: pki.ca }, logger, retry });
  try {
    for await (const message of right.subscribe({}, { fromEnd: true }).messages) {
      if (message.kind === 'caught_up') break;
    }
    const waiting = away.subscribe({});
    const ended = ending(waiting.messages);
    await new Promise((resolve) => setTimeout(resolve, 3000)); // three windows
    waiting.cancel();
    assert.equal((await ended).error, null); // cancelled, not thrown
    assert.deepEqual(
      lines.warn.filter((line) => line.includes('TLS')),
      [],
    );
  } finally {
    await Promise.all([right.close(), away.close()]);
  }
});

// A unary call (and a read) fails at once: a handshake the TLS library
// refused does not cure itself, so retrying it for the policy's 30 s would
// only hide it. The routing client's commands too (every member has the
// client's credentials).
for (const { name, server, credentials, said, hint } of MISCONFIGURED) {
  test(`unary calls with ${name} throw TLS_HANDSHAKE_FAILED at once, not after retries`, { timeout: 60_000 }, async () => {
    const { lines, logger } = recording();
    const address = server().address;
    const options = { credentials: credentials(), logger }; // the default policy: 30 s of retries
    const direct = new ChronicleClient(address, options);
    const routed = new ChronicleClient(address, { ...options, routing: true });
    const calls = {
      getAggregate: () => direct.getAggregate('acc-1'),
      submit: () => direct.submit('acc-1', 'bank.v1.OpenAccount', { owner: 'ann' }),
      read: () => direct.read('acc-1'),
      listGroups: () => direct.listGroups(),
      'routed submit': () => routed.submit('acc-1', 'bank.v1.OpenAccount', { owner: 'ann' }),
    };
    try {
      for (const [what, run] of Object.entries(calls)) {
        const started = Date.now();
        const error = await run().then(
          () => null,
          (thrown) => thrown,
        );
        const ms = Date.now() - started;
        assert.equal(`${error?.code} ${error?.reason}`, 'UNAVAILABLE TLS_HANDSHAKE_FAILED', `${what}: ${error}`);
        assert.match(error.message, said, what);
        assert.match(error.message, hint, what);
        assert.equal(error.metadata.address, address, what);
        assert.match(error.metadata.tls_error, said, what);
        assert.equal(error.cause.code, 'UNAVAILABLE', what); // gRPC's own status, as it came
        assert.ok(ms < 5000, `${what} took ${ms} ms (the retry window is 30 s)`);
      }
      assert.deepEqual(lines.info.concat(lines.warn), [], 'no attempt was retried');
    } finally {
      await Promise.all([direct.close(), routed.close()]);
    }
  });
}

test('a unary call whose server is away is still retried for its window, and is not called a TLS failure', { timeout: 60_000 }, async () => {
  const { lines, logger } = recording();
  const away = new ChronicleClient('127.0.0.1:1', { credentials: { ca: pki.ca }, logger, retry: { retryForSeconds: 1 } });
  try {
    const started = Date.now();
    const error = await away.getAggregate('acc-1').then(
      () => null,
      (thrown) => thrown,
    );
    assert.equal(`${error?.code} ${error?.reason}`, 'UNAVAILABLE UNAVAILABLE');
    assert.ok(Date.now() - started >= 500, 'it was not retried');
    assert.ok(lines.info.length >= 2, lines.info.join('\n'));
  } finally {
    await away.close();
  }
});

// A server that closes every connection as it accepts it, as one at its
// --max-connections does: it never completes a TLS handshake either, so
// neither a plaintext client's TLS probe nor a TLS client's handshake of
// its own mistakes it for a TLS server refusing the client.
for (const [kind, credentials, said] of [
  ['plaintext', () => null, /Failed to connect/],
  ['TLS', () => ({ ca: pki.ca }), /Failed to connect|disconnected before secure TLS connection/],
]) {
  test(`a ${kind} client whose server closes connections at once (at its limit) is retried, not called a TLS failure`, { timeout: 60_000 }, async () => {
    const closing = net.createServer((socket) => socket.destroy());
    await new Promise((resolve) => closing.listen(0, '127.0.0.1', resolve));
    const { lines, logger } = recording();
    const address = `127.0.0.1:${closing.address().port}`;
    const client = new ChronicleClient(address, { credentials: credentials(), logger, retry: { retryForSeconds: 1 } });
    try {
      const started = Date.now();
      const error = await client.getAggregate('acc-1').then(
        () => null,
        (thrown) => thrown,
      );
      assert.equal(`${error?.code} ${error?.reason}`, 'UNAVAILABLE UNAVAILABLE');
      assert.match(error.message, said);
      assert.ok(Date.now() - started >= 500, 'it was not retried');
      assert.deepEqual(
        lines.warn.filter((line) => line.includes('TLS handshake')), // the retries' own lines quote grpc-js
        [],
      );
    } finally {
      await client.close();
      closing.close();
    }
  });
}
