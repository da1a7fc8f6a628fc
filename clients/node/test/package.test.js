// The client as another project uses it: `npm pack`'s tarball installed
// into a temporary project, imported by the package's name, typed with
// `tsc --strict`, loading the project's own .proto, calling a real server.

import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { BUNDLED_SOURCES } from '../src/proto_sources.js';
import { startServer } from './server.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const packageRoot = path.resolve(here, '..');
const repository = path.resolve(packageRoot, '..', '..');

let directory;
let tarball;
let app;
let server;

const SHOP_PROTO = `syntax = "proto3";
package shop.v1;
message PlaceOrder { string order_id = 1; int64 quantity = 2; }
`;

// A second copy of @grpc/grpc-js, as an application with its own has: this package's in the repository.
const OTHER_GRPC = path.join(packageRoot, 'node_modules', '@grpc', 'grpc-js', 'build', 'src', 'index.js');

// The project's own code: its domain loaded, a default-domain command sent,
// the client's grpc used for credentials, a grpc-js of its own refused clearly.
const MAIN = `
import { ChronicleClient, ChronicleError, grpc, loadProtos, pack, unpack } from '@chronicle/client';
import otherGrpc from ${JSON.stringify(OTHER_GRPC)};
const out = { resolved: import.meta.resolve('@chronicle/client') };
loadProtos({ includeDirs: ['protos'], files: ['shop/v1/shop.proto'] });
out.order = unpack(pack('shop.v1.PlaceOrder', { orderId: 'o-1', quantity: 2n }));
try {
  pack('shop.v1.PlaceOrder', { order_id: 'o-2', qty: 1 });
} catch (e) {
  out.unknown = [e instanceof ChronicleError, e.reason, e.metadata.field];
}
try { new ChronicleClient(process.argv[2], { credentials: otherGrpc.credentials.createInsecure() }); }
catch (e) { out.otherCopy = e.reason; }
const client = new ChronicleClient(process.argv[2], { credentials: grpc.credentials.createInsecure() });
const user = { email: 'ann@example.com', name: 'Ann' };
const result = await client.submit('user-' + Date.now(), 'users.v1.RegisterUser', user);
out.registered = { version: result.version, origin: result.events[0].origin, type: result.events[0].payload['@type'] };
client.close();
console.log(JSON.stringify(out));
`;

const USAGE_TS = `
import { ChronicleClient, ChronicleError, CLIENT_REASONS, loadProtos, pack, REASONS } from '@chronicle/client';
import type { ServerReason, SubmitResult } from '@chronicle/client';
loadProtos({ includeDirs: ['protos'], files: ['shop/v1/shop.proto'] });
const client = new ChronicleClient('127.0.0.1:1', { credentials: { ca: 'pem' }, retry: { retryForSeconds: 1 } });
async function run(): Promise<number> {
  try {
    const order = { order_id: 'o', quantity: 10n };
    const result: SubmitResult = await client.submit('a', 'shop.v1.PlaceOrder', order, { expectedVersion: 0 });
    for await (const one of client.submitStream([{ aggregateId: 'a', typeName: 'shop.v1.PlaceOrder', fields: {} }])) {
      if (one.error !== null) console.log(one.error.reason);
    }
    const consumer = client.consume('g', 'c');
    for await (const delivery of consumer.deliveries) delivery.ack();
    const bounds = { signal: AbortSignal.timeout(5000), timeoutSeconds: 10 };
    for await (const doc of client.projections.documents('p', { keyPrefix: 'k', ...bounds })) console.log(doc.key);
    console.log((await client.projections.document('p', 'k', bounds)).position, await client.reactions.dismissAll('r', bounds));
    for await (const one of client.submitStream([], { window: 8, ...bounds })) console.log(one.command_id);
    console.log((await client.reactions.list()).map((r) => r.name), pack('shop.v1.PlaceOrder', {}).type_url);
    const fired: number = (await client.reactions.get('r', bounds)).deadlines_fired ?? 0;
    console.log(fired);
    const settings = { ackTimeoutSeconds: 30, maxDeliveryAttempts: null };
    const group = await client.updateGroup('g', settings, { timeoutSeconds: 5 });
    console.log(group.name);
    const [event] = await client.read('a');
    console.log(event.origin, event.payload?.['@type'], event.version + 1);
    return result.version;
  } catch (error) {
    if (error instanceof ChronicleError && error.reason === CLIENT_REASONS.UNKNOWN_FIELD) return -1;
    const stale: ServerReason = REASONS.WRONG_EXPECTED_VERSION;
    if (error instanceof ChronicleError && error.reason === stale) return -2;
    throw error;
  }
}
void run();
`;

// Errors a typed usage file must give: a wrong option, a number where a result's string is.
const MISUSE_TS = `
import { ChronicleClient, REASONS } from '@chronicle/client';
const client = new ChronicleClient('x', { keepaliveSecond: 5 });
const id: number = (await client.getAggregate('a')).aggregate_id;
await client.updateGroup('g', { ackTimeout: 5 });
console.log(REASONS.WRONG_EXPECTED_VERSON);
`;

function run(command, args, options) {
  const done = spawnSync(command, args, { encoding: 'utf8', ...options });
  return { status: done.status, output: `${done.stdout}${done.stderr}` };
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-node-package-'));
  const packed = execFileSync('npm', ['pack', '--silent', '--pack-destination', directory], {
    cwd: packageRoot,
    encoding: 'utf8',
  });
  tarball = path.join(directory, packed.trim().split('\n').at(-1));
  app = path.join(directory, 'app');
  fs.mkdirSync(path.join(app, 'protos', 'shop', 'v1'), { recursive: true });
  fs.writeFileSync(path.join(app, 'protos', 'shop', 'v1', 'shop.proto'), SHOP_PROTO);
  fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","type":"module","private":true}');
  const installed = run('npm', ['install', tarball, '--prefer-offline', '--no-audit', '--no-fund'], { cwd: app });
  assert.equal(installed.status, 0, installed.output);
  server = await startServer();
});

after(async () => {
  await server?.stop();
  if (directory) fs.rmSync(directory, { recursive: true, force: true });
});

test("npm pack leaves the repository as it was; the tarball's protos are the repository's, byte for byte", () => {
  assert.equal(fs.existsSync(path.join(packageRoot, 'protos')), false); // postpack removed the copy
  const listed = execFileSync('tar', ['-tzf', tarball], { encoding: 'utf8' }).trim().split('\n');
  const packedProtos = listed.filter((name) => name.startsWith('package/protos/')).map((name) => name.slice(15));
  const expected = BUNDLED_SOURCES.flatMap((source) =>
    fs
      .readdirSync(path.join(repository, source), { recursive: true })
      .filter((name) => name.endsWith('.proto'))
      .map((name) => [name, path.join(repository, source, name)]),
  );
  assert.deepEqual(packedProtos.sort(), expected.map(([name]) => name).sort());
  for (const [name, source] of expected) {
    const inPackage = fs.readFileSync(path.join(app, 'node_modules', '@chronicle', 'client', 'protos', name));
    assert.ok(inPackage.equals(fs.readFileSync(source)), `${name} differs from ${source}`);
  }
  assert.ok(!listed.includes('package/src/example.js'));
  assert.ok(listed.includes('package/types/index.d.ts'));
});

test("an installed tarball imports by name, loads the app's own .proto and calls a real server", () => {
  const main = path.join(app, 'main.mjs');
  fs.writeFileSync(main, MAIN);
  const ran = run(process.execPath, [main, server.address], { cwd: app });
  assert.equal(ran.status, 0, ran.output);
  const out = JSON.parse(ran.output.trim().split('\n').at(-1));
  assert.ok(out.resolved.startsWith(`file://${fs.realpathSync(app)}/node_modules/@chronicle/client/`), out.resolved);
  assert.deepEqual(out.order, { '@type': 'shop.v1.PlaceOrder', order_id: 'o-1', quantity: 2 });
  assert.deepEqual(out.unknown, [true, 'UNKNOWN_FIELD', 'qty']);
  assert.equal(out.otherCopy, 'INVALID_CREDENTIALS');
  assert.deepEqual(out.registered, { version: 1, origin: '@chronicle/client', type: 'users.v1.UserRegistered' });
});

test('the shipped types check a typed usage file with tsc --strict, and catch misuse', () => {
  const tsc = path.join(packageRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  const tsconfig = {
    compilerOptions: { strict: true, noEmit: true, module: 'nodenext', moduleResolution: 'nodenext', target: 'es2022' },
  };
  fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({ ...tsconfig, files: ['usage.ts'] }));
  fs.writeFileSync(path.join(app, 'usage.ts'), USAGE_TS);
  const typed = run(process.execPath, [tsc, '-p', app], { cwd: app });
  assert.equal(typed.status, 0, typed.output);
  fs.writeFileSync(path.join(app, 'tsconfig.json'), JSON.stringify({ ...tsconfig, files: ['misuse.ts'] }));
  fs.writeFileSync(path.join(app, 'misuse.ts'), MISUSE_TS);
  const misuse = run(process.execPath, [tsc, '-p', app], { cwd: app });
  assert.notEqual(misuse.status, 0);
  assert.match(misuse.output, /keepaliveSecond/);
  assert.match(misuse.output, /misuse\.ts\(4,7\).*not assignable to type 'number'/);
  assert.match(misuse.output, /misuse\.ts\(5,.*'ackTimeout' does not exist in type 'GroupSettings'/);
  assert.match(misuse.output, /misuse\.ts\(6,.*'WRONG_EXPECTED_VERSON' does not exist/); // a misspelt reason
});
