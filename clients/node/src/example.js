// The walkthrough: subscribe to the account's events, open it, deposit, be
// refused a withdrawal and act on the refusal's reason, read the account
// back, and see the same events arrive on the stream.
//
//   make run                                   # in the repository root, one terminal
//   cd clients/node && npm ci && npm run example -- 127.0.0.1:50051
//
// Against a server with --auth, CHRONICLE_TOKEN (a JWT or an API key, as for
// the chronicle CLI) is sent with every call.
//
// `walkthrough` is also what the test runs, against a server it starts.

import { randomUUID } from 'node:crypto';
import { pathToFileURL } from 'node:url';

import { ChronicleClient, ChronicleError } from './chronicle.js';

export async function walkthrough(
  address,
  { accountId = `acc-${randomUUID()}`, log = console.log, token = null } = {},
) {
  // A command is retried for 30 s by default (a server restarting, a
  // database away); an example run by hand says within seconds that
  // nothing answers.
  const client = new ChronicleClient(address, { origin: 'node-example', token, retry: { retryForSeconds: 5 } });
  // Subscribed before anything happens: the events arrive live as they commit.
  const subscription = client.subscribe({ aggregateId: accountId });
  const streamed = collectEvents(subscription, 2);
  // Awaited at the end. Until then a refused subscription (no credentials,
  // say) must not end the process as an unhandled rejection: the commands
  // below are refused for the same cause, and their refusal is what the
  // walkthrough throws; once they succeed, `await streamed` reports it.
  streamed.catch(() => {});
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

    const live = await streamed;
    for (const event of live) log(`  streamed: position ${event.position} ${event.event_type}`);
    return { accountId, opened, deposited, refusal, events, account, streamed: live };
  } finally {
    subscription.cancel();
    client.close();
  }
}

// The first `count` events of a subscription (a refused command adds none).
async function collectEvents(subscription, count, timeoutMs = 20_000) {
  const timer = setTimeout(() => subscription.cancel(), timeoutMs);
  const events = [];
  try {
    for await (const message of subscription.messages) {
      if (message.kind === 'event') events.push(message.event);
      if (events.length === count) break;
    }
  } finally {
    clearTimeout(timer);
  }
  if (events.length < count) throw new Error(`only ${events.length} of ${count} events arrived on the stream`);
  return events;
}

// What the command line prints when an example fails: the refusal's code,
// its reason when the server sent one, and the server's message
// (ChronicleError's toString); for a server that could not be reached, what
// to do about it, `usage` saying how to give the example another address.
// group_example.js prints its failures with it too.
export function describeFailure(error, address, { usage = 'npm run example -- HOST:PORT' } = {}) {
  if (!(error instanceof ChronicleError)) return String(error?.stack ?? error);
  const lines = [`error: ${error}`];
  if (error.code === 'UNAVAILABLE' && error.reason === error.code) {
    // The server's own UNAVAILABLE carries a reason: without one, nothing answered.
    lines.push(
      `  no Chronicle server answered at ${address}: start one (\`make run\` in the repository root),` +
        ` or give its address: ${usage}`,
    );
  }
  return lines.join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1]).href) {
  const address = process.argv[2] ?? process.env.CHRONICLE_SERVER ?? '127.0.0.1:50051';
  walkthrough(address, { token: process.env.CHRONICLE_TOKEN || null }).catch((error) => {
    console.error(describeFailure(error, address));
    process.exitCode = 1;
  });
}
