// The walkthrough: open an account, deposit, be refused a withdrawal and
// act on the refusal's reason, read the account back.
//
//   make run                                   # in the repository root, one terminal
//   cd clients/node && npm ci && npm run example -- 127.0.0.1:50051
//
// `walkthrough` is also what the test runs, against a server it starts.

import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';

import { ChronicleClient, ChronicleError } from './chronicle.js';

export async function walkthrough(address, { accountId = `acc-${randomUUID()}`, log = console.log } = {}) {
  const client = new ChronicleClient(address, { origin: 'node-example' });
  try {
    const opened = await client.submit(accountId, 'bank.v1.OpenAccount', { owner: 'ann' });
    log(`opened ${accountId} (version ${opened.version})`);

    const deposited = await client.submit(accountId, 'bank.v1.Deposit', { amount: 100 });
    log(`deposited 100 (version ${deposited.version})`);

    let refusal = null;
    try {
      await client.submit(accountId, 'bank.v1.Withdraw', { amount: 500 });
    } catch (error) {
      if (!(error instanceof ChronicleError)) throw error;
      switch (error.reason) {
        case 'INSUFFICIENT_FUNDS': // a business refusal: tell the user, do not retry
          refusal = error;
          log(`withdrawal refused (${error.code} ${error.reason}): balance ${error.metadata.balance}`);
          break;
        default:
          throw error;
      }
    }

    const events = await client.read(accountId);
    for (const event of events) log(`  v${event.version} ${event.event_type} ${JSON.stringify(event.payload)}`);

    const account = await client.getAggregate(accountId);
    log(`account ${accountId}: owner ${account.state.owner}, balance ${account.state.balance}`);
    return { accountId, opened, deposited, refusal, events, account };
  } finally {
    client.close();
  }
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const address = process.argv[2] ?? process.env.CHRONICLE_SERVER ?? '127.0.0.1:50051';
  walkthrough(address).catch((error) => {
    console.error(error instanceof ChronicleError ? `${error.code} ${error.reason}: ${error.message}` : error);
    process.exit(1);
  });
}
