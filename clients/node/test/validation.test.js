// What pack() and submit refuse before anything is sent, and 64-bit
// integers kept exact both ways, against a real server.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import { ChronicleClient, ChronicleError, pack, setInt64Decoding, unpack } from '../src/chronicle.js';
import { startServer } from './server.js';

let server;
let client;

before(async () => {
  server = await startServer();
  client = new ChronicleClient(server.address, { retry: { retryForSeconds: 5 } });
});

after(async () => {
  client?.close();
  await server?.stop();
});

function caught(work) {
  try {
    work();
  } catch (error) {
    return error;
  }
  assert.fail('nothing thrown');
}

const refused = (reason, field) => (error) =>
  error instanceof ChronicleError &&
  error.code === 'INVALID_ARGUMENT' &&
  error.reason === reason &&
  (field === undefined || error.metadata.field === field);

test('a key that is no field is refused, naming it, and nothing is sent', async () => {
  const account = `acc-${randomUUID()}`;
  await assert.rejects(
    client.submit(account, 'bank.v1.OpenAccount', { ownr: 'ann' }),
    refused('UNKNOWN_FIELD', 'ownr'),
  );
  await assert.rejects(client.getAggregate(account), (error) => error.reason === 'AGGREGATE_NOT_FOUND');
  assert.throws(() => pack('bank.v1.FailTransfer', { reasn: 'typo' }), refused('UNKNOWN_FIELD', 'reasn'));
  assert.throws(() => pack('bank.v1.Nope', {}), refused('UNKNOWN_MESSAGE_TYPE'));
  assert.throws(() => pack('Deposit', { amount: 1 }), refused('UNKNOWN_MESSAGE_TYPE')); // bank.v1.Deposit: by full name
  assert.throws(() => pack(undefined, {}), refused('UNKNOWN_MESSAGE_TYPE'));
  assert.deepEqual(unpack(pack('users.v1.RegisterUser')), { '@type': 'users.v1.RegisterUser', email: '', name: '' });
  await assert.rejects(client.submitBatch({ aggregateId: account }), refused('INVALID_OPTION'));
  assert.throws(() => pack('bank.v1.Deposit', { amount: 'five' }), refused('INVALID_FIELD', 'amount'));
  assert.throws(() => pack('bank.v1.Deposit', { amount: 1.5 }), refused('INVALID_FIELD', 'amount'));
});

test('camelCase keys are the fields they name', () => {
  const fields = { sourceAccountId: 'a', targetAccountId: 'b', amount: 5 };
  assert.deepEqual(unpack(pack('bank.v1.TransferMoney', fields)), {
    '@type': 'bank.v1.TransferMoney',
    source_account_id: 'a',
    target_account_id: 'b',
    amount: 5,
  });
  assert.throws(
    () => pack('bank.v1.TransferMoney', { source_account_id: 'a', sourceAccountId: 'b' }),
    refused('INVALID_FIELD'),
  );
});

test('an expected version that is no version is refused, not sent as 0 or 1', async () => {
  const account = `acc-${randomUUID()}`;
  for (const version of [-1, 'abc', 1.5, NaN]) {
    await assert.rejects(
      client.submit(account, 'bank.v1.OpenAccount', { owner: 'ann' }, { expectedVersion: version }),
      refused('INVALID_EXPECTED_VERSION', 'expected_version'),
    );
  }
  await assert.rejects(client.getAggregate(account), (error) => error.reason === 'AGGREGATE_NOT_FOUND');
  const opened = await client.submit(account, 'bank.v1.OpenAccount', { owner: 'ann' }, { expectedVersion: '0' });
  assert.equal(opened.version, 1);
  const deposited = await client.submit(account, 'bank.v1.Deposit', { amount: 1 }, { expectedVersion: 1n });
  assert.equal(deposited.version, 2);
});

test('int64 fields: BigInt and decimal strings sent exactly; a Number is never rounded on decode', async () => {
  const account = `acc-${randomUUID()}`;
  await client.submit(account, 'bank.v1.OpenAccount', { owner: 'big' });
  // The bank refuses a balance over 10^15: its refusal quotes the amount it received.
  for (const amount of [9007199254740993n, '9007199254740993']) {
    await assert.rejects(
      client.submit(account, 'bank.v1.Deposit', { amount }),
      (error) => error.reason !== 'INVALID_FIELD' && /cannot deposit 9007199254740993:/.test(error.message),
    );
  }
  const opened = pack('bank.v1.AccountOpened', { owner: 'x' }); // no int64: decodes in every mode
  const deposited = pack('bank.v1.MoneyDeposited', { amount: 2n ** 63n - 1n });
  assert.throws(
    () => unpack(deposited),
    (error) => error.reason === 'INT64_PRECISION' && error.metadata.field === 'amount',
  );
  assert.throws(() => pack('bank.v1.Deposit', { amount: 2n ** 63n }), refused('INVALID_FIELD', 'amount'));
  try {
    setInt64Decoding('bigint');
    assert.equal(unpack(deposited).amount, 2n ** 63n - 1n);
    setInt64Decoding('string');
    assert.equal(unpack(deposited).amount, '9223372036854775807');
    assert.equal(unpack(opened).owner, 'x');
  } finally {
    setInt64Decoding('number');
  }
  assert.equal(unpack(pack('bank.v1.MoneyDeposited', { amount: 2 ** 53 - 1 })).amount, 2 ** 53 - 1);
  assert.throws(() => setInt64Decoding('long'), refused('INVALID_OPTION'));
  // Met in a stream's loop, which wraps what its call throws, it stays what it was.
  const wrapped = new ChronicleError(caught(() => unpack(deposited)));
  assert.deepEqual(
    [wrapped.code, wrapped.reason, wrapped.metadata],
    ['FAILED_PRECONDITION', 'INT64_PRECISION', { field: 'amount' }],
  );
});

test('the default origin is the package name', async () => {
  const result = await client.submit(`acc-${randomUUID()}`, 'bank.v1.OpenAccount', { owner: 'ann' });
  assert.equal(result.events[0].origin, '@chronicle/client');
});

test('wrong options are ChronicleErrors with a reason', () => {
  assert.throws(() => new ChronicleClient(server.address, { keepaliveSeconds: -1 }), refused('INVALID_OPTION'));
  const withCredentials = (credentials) => () => new ChronicleClient(server.address, { credentials });
  assert.throws(withCredentials({ ca: 'ca.pem' }), refused('INVALID_CREDENTIALS')); // a path, not PEM contents
  assert.throws(withCredentials(new (class OtherCopy {})()), refused('INVALID_CREDENTIALS'));
});
