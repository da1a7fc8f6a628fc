// A principal over its commands-per-second limit (docs/security.md, "Commands
// per second"), from Node against a real server started with --auth: the
// refusal carries RESOURCE_EXHAUSTED PRINCIPAL_RATE_LIMITED and the delay until
// its tokens (RetryInfo), and the default retry policy waits it out.

import assert from 'node:assert/strict';
import crypto, { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ChronicleClient, ChronicleError } from '../src/chronicle.js';
import { startServer } from './server.js';

const POLICY = `
[roles.tenant]
submit = ["bank.v1.OpenAccount"]
commands_per_second = 2
burst = 1

[principals."acme"]
roles = ["tenant"]
`;

const apiKey = `chr_${crypto.randomBytes(32).toString('base64url')}`;
let directory;
let server;

function privateFile(name, text) {
  const file = path.join(directory, name);
  fs.writeFileSync(file, text, { mode: 0o600 });
  fs.chmodSync(file, 0o600);
  return file;
}

before(async () => {
  directory = fs.mkdtempSync(path.join(os.tmpdir(), 'chronicle-node-rate-'));
  const digest = crypto.createHash('sha256').update(apiKey).digest('hex');
  server = await startServer({
    args: [
      '--auth',
      '--policy-file',
      privateFile('policy.toml', POLICY),
      '--api-keys-file',
      privateFile('keys.toml', `[[keys]]\nprincipal = "acme"\nsha256 = "${digest}"\nroles = []\n`),
    ],
  });
});

after(async () => {
  await server?.stop();
  if (directory) fs.rmSync(directory, { recursive: true, force: true });
});

test('a Submit over the rate is PRINCIPAL_RATE_LIMITED with the delay until its token, and retried after it', async () => {
  const once = new ChronicleClient(server.address, { token: apiKey, retry: { maxAttempts: 1 } });
  const retrying = new ChronicleClient(server.address, { token: apiKey });
  try {
    await once.submit(`acc-${randomUUID()}`, 'bank.v1.OpenAccount', { owner: 'ann' }); // the burst: one
    const refused = await once.submit(`acc-${randomUUID()}`, 'bank.v1.OpenAccount', { owner: 'ann' }).then(
      () => null,
      (error) => error,
    );
    assert.ok(refused instanceof ChronicleError, String(refused));
    assert.equal(refused.code, 'RESOURCE_EXHAUSTED');
    assert.equal(refused.reason, 'PRINCIPAL_RATE_LIMITED');
    assert.ok(refused.retryDelaySeconds > 0 && refused.retryDelaySeconds <= 0.5, String(refused.retryDelaySeconds));
    for (let n = 0; n < 3; n += 1) {
      // Each waits for its token (a refusal's RetryInfo first, where it gets one): none fails.
      const done = await retrying.submit(`acc-${randomUUID()}`, 'bank.v1.OpenAccount', { owner: 'ann' });
      assert.equal(done.version, 1);
    }
  } finally {
    once.close();
    retrying.close();
  }
});
