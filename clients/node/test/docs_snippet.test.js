// The error-decoding snippet of docs/clients.md ("Anything else") runs as
// printed, against a real server, on refusals a plain @grpc/grpc-js client
// gets.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

import grpc from '@grpc/grpc-js';

import { pack, services } from '../src/chronicle.js';
import { startServer } from './server.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const repository = path.resolve(here, '..', '..', '..');

// The doc's only js block, saved where its imports resolve (this package's
// node_modules), and imported with GOOGLEAPIS pointing at the vendored files.
async function snippet() {
  const doc = fs.readFileSync(path.join(repository, 'docs', 'clients.md'), 'utf8');
  const blocks = [...doc.matchAll(/^```js\n(.*?)^```$/gms)].map((m) => m[1]);
  assert.equal(blocks.length, 1);
  const folder = path.join(here, '..', 'node_modules', '.cache', 'chronicle-docs');
  fs.mkdirSync(folder, { recursive: true });
  const file = path.join(folder, `describe-${randomUUID()}.mjs`);
  fs.writeFileSync(file, blocks[0]);
  process.env.GOOGLEAPIS = path.join(here, '..', 'third_party', 'googleapis');
  try {
    return await import(pathToFileURL(file).href);
  } finally {
    fs.rmSync(file);
  }
}

let server;
let commands;
let describe;

before(async () => {
  server = await startServer();
  const Commands = grpc.makeGenericClientConstructor(services.CommandService, 'CommandService');
  commands = new Commands(server.address, grpc.credentials.createInsecure());
  ({ describe } = await snippet());
});

after(async () => {
  commands?.close();
  await server?.stop();
});

function submit(command) {
  return new Promise((resolve) => {
    commands.Submit({ command }, (error, response) => resolve({ error, response }));
  });
}

function deposit(accountId, amount) {
  return { command_id: randomUUID(), aggregate_id: accountId, payload: pack('bank.v1.Deposit', { amount }) };
}

test('the snippet decodes the reason, the domain and the field paths of a refusal', async () => {
  const accountId = `acc-${randomUUID()}`;
  const opened = await submit({ command_id: randomUUID(), aggregate_id: accountId, payload: pack('bank.v1.OpenAccount', { owner: 'ann' }) });
  assert.equal(opened.error, null);
  const { error } = await submit(deposit(accountId, -1));
  const described = describe(error);
  assert.equal(described.code, grpc.status.INVALID_ARGUMENT);
  assert.equal(described.reason, 'INVALID_AMOUNT');
  assert.equal(described.domain, 'chronicle');
  assert.deepEqual(described.fields, ['command.payload.amount']);
  assert.equal(described.metadata.field, 'amount');
  assert.equal(described.retryAfterSeconds, undefined);
  const missing = describe((await submit(deposit(`acc-${randomUUID()}`, 1))).error);
  assert.equal(missing.code, grpc.status.NOT_FOUND);
  assert.equal(missing.reason, 'ACCOUNT_NOT_FOUND');
  assert.deepEqual(missing.fields, []);
});

test('the snippet leaves gRPC own refusals as a code and a message', async () => {
  const Unknown = grpc.makeGenericClientConstructor(
    { Nope: { ...services.CommandService.Submit, path: '/chronicle.v1.CommandService/Nope' } },
    'Unknown',
  );
  const unknown = new Unknown(server.address, grpc.credentials.createInsecure());
  const error = await new Promise((resolve) => unknown.Nope({}, (e) => resolve(e)));
  unknown.close();
  const described = describe(error);
  assert.equal(described.code, grpc.status.UNIMPLEMENTED);
  assert.equal(described.reason, '');
  assert.deepEqual(described.fields, []);
});
