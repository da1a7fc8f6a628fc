// Sending each command to the replica that owns its aggregate
// (chronicle.v1.ClusterService; docs/scaling.md in the repository).
//
// The replicas of a cluster share the aggregate ids out by partition:
//   partition = CRC-32(UTF-8 bytes of the aggregate id) mod partition_count
// and each partition has one owner, which keeps its aggregates warm. A
// routing client keeps the topology (members, the owner of each partition),
// a channel per member, and sends each command to its owner; to another
// member when the owner does not answer (every member executes every
// command: only the warm cache is lost), or to the address it was given
// while it knows no topology. It follows WatchTopology, and fetches the
// topology again when a response's trailing metadata says the member was
// not the owner and knows a newer epoch (or an older one: once a second at
// most; `adopt` says when an older topology is taken). A routed
// submitStream keeps a stream per member (routed_stream.js).

import grpc from '@grpc/grpc-js';

import { DEFAULT_RETRY, GOING_REASONS, retryDelay, sleepSeconds } from './retry.js';

const NOT_OWNER_KEY = 'chronicle-not-owner';
const TOPOLOGY_EPOCH_KEY = 'chronicle-topology-epoch';
// A member that did not answer is tried again after this long; each time a
// call sent to it after that (a probe) fails before it answered anything,
// twice as long, up to the most.
export const DOWN_MS = 1000;
export const MOST_DOWN_MS = 30000;
// A topology of the client's partition count with a lower epoch than its own
// is taken only once fetches returned a lower one this many times in a row,
// each at least BEHIND_MS after the one counted before (`adopt`); a hint
// with a lower epoch fetches the topology once per BEHIND_MS at most.
export const BEHIND_FETCHES = 3;
export const BEHIND_MS = 1000;

// CRC-32 of IEEE 802.3 / zlib / PNG: reflected polynomial 0xEDB88320,
// initial value and final XOR 0xFFFFFFFF; crc32('123456789') === 0xcbf43926.
const TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n += 1) {
    let c = n;
    for (let k = 0; k < 8; k += 1) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

/** The CRC-32 of `bytes` (a Buffer or Uint8Array), as an unsigned number. */
export function crc32(bytes) {
  let crc = 0xffffffff;
  for (const byte of bytes) crc = TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/** The partition of `aggregateId` among `partitionCount` (a power of two). */
export function partitionOf(aggregateId, partitionCount) {
  return crc32(Buffer.from(aggregateId, 'utf8')) % partitionCount;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// How a call ends when its member is gone or going (killed, the connection
// lost, a server stopping): the member is marked down, so a routed stream's
// lane reopens on another one, and unary sends step around it too (see
// memberGone for the statuses of a live member's that end a call so).
const MEMBER_GONE = new Set(['UNAVAILABLE', 'CANCELLED']);
// The status gRPC itself (the server's core, so every client sees the same
// grpc-message) ends a call with once the call's connection outlived the
// server's --max-connection-age-seconds and its grace: the member closed an
// old connection (it sent GOAWAY at the age, and the channel opened a new
// one for new calls meanwhile), and is as alive as before.
const CONNECTION_AGED = 'max connection age';

/**
 * Whether the member whose call `broken` (a ChronicleError) ended is gone or
 * going: it is marked down, and a routed stream's lane moves to another
 * member; otherwise the lane reopens on the same one, with the stream's
 * backoff and attempts as for any break, and a unary send tries it again
 * (the Python client's service/client/routing.py, member_gone, is the same).
 *
 * A status that carries Chronicle's ErrorInfo was sent by a running member,
 * which said why it ended the call (CREDENTIALS_CHANGED: its key or policy
 * files were read again and the caller's grants changed; the caller is to
 * open the call again there): the member is gone only if its reason says it
 * is going. A status without one (the reason is then the code) is gRPC's
 * own: the connection broke or was refused, or the server stopped and
 * cancelled its calls, and the member counts as gone: it cannot be told from
 * one that was killed without trying it again, and a call to try it first
 * would hold up every failover (a member that is only unlucky is tried again
 * after a second). Except CONNECTION_AGED, which only a live server sends.
 * Should a gRPC release word that status otherwise, a lane ended by a
 * connection's age moves for a second as it did before: a warm cache lost,
 * never a command.
 */
export function memberGone(broken) {
  if (!MEMBER_GONE.has(broken.code)) return false;
  if (broken.reason !== broken.code) return GOING_REASONS.has(broken.reason); // an ErrorInfo: the member answered
  return (broken.cause?.details ?? broken.message) !== CONNECTION_AGED;
}

/**
 * Whether a server ended a call saying it is going (UNAVAILABLE
 * SHUTTING_DOWN: it drains before it stops). The client then leaves that
 * connection for a new one (ChronicleClient, #reconnect): the Python
 * client's service/client/going_away.py.
 */
export function goingAway(broken) {
  return broken.code === 'UNAVAILABLE' && GOING_REASONS.has(broken.reason);
}

/**
 * Whether `refusal` is the client's own deadline passing on a routed command
 * (DEADLINE_EXCEEDED with no ErrorInfo: no member said it): the member did
 * not answer within the attempt's time, as one the client can no longer
 * reach does not (its connection silently dead, or a new one not getting
 * through). It is marked down and the retry goes elsewhere; a member that
 * was only slow loses its warm cache for a moment, never a command (a retry
 * keeps the command's id). The Python client's `unanswered` is the same.
 */
export function unanswered(refusal) {
  return refusal.code === 'DEADLINE_EXCEEDED' && refusal.reason === refusal.code;
}

/** The port of `host:port` (`[v6]:port` too); '' without one. */
function portOf(address) {
  const colon = address.lastIndexOf(':');
  const port = colon < 0 ? '' : address.slice(colon + 1);
  return /^[0-9]+$/.test(port) ? port : '';
}

export class Routes {
  /**
   * `seed`: the address the client was given; `api`: the loaded
   * chronicle.v1 package; `credentials`, `interceptors` (the bearer
   * token's, credentials.js) and `channelOptions` (keepalive's): for every
   * member's channel and stubs;
   * `callError`: a failed call's error as the caller sees it;
   * `staleToken(refusal)`: whether that error came of a stale token that a
   * retry, asking the token function again, may cure; `retryable(refusal)`:
   * whether a command it failed may succeed when sent again (ABORTED, say);
   * `tlsRefusal(refusal, address, method)`: the error to throw at once,
   * not retried, when that error came of a misconfigured TLS (handshake.js),
   * else null;
   * `retry`: the retry policy (retry.js) of `send`; `logRetry(attempt,
   * message)`: reports a retry; `clock`: milliseconds, as Date.now (a
   * test's own).
   */
  constructor(
    seed,
    {
      api,
      credentials,
      interceptors = [],
      channelOptions = {},
      callError = (error) => error,
      staleToken = () => false,
      retryable = () => false,
      tlsRefusal = () => null,
      retry = DEFAULT_RETRY,
      logRetry = () => {},
      clock = Date.now,
    },
  ) {
    this.seed = seed;
    // The member id of the replica `seed` reaches, as it says itself
    // (Topology.answered_by of what came from `seed`); '' until one said.
    // That member goes by `seed` here, however it advertises itself (`take`).
    this.seedMember = '';
    this.api = api;
    this.credentials = credentials;
    this.interceptors = interceptors;
    this.channelOptions = channelOptions;
    this.callError = callError;
    this.staleToken = staleToken;
    this.retryable = retryable;
    this.tlsRefusal = tlsRefusal;
    this.retry = retry;
    this.logRetry = logRetry;
    this.clock = clock;
    this.stubs = new Map(); // address → { commands, cluster }
    this.topology = null;
    this.owners = []; // address by partition, '' for none
    this.addresses = [];
    // address → when its latest down period ends (ms), kept once it has
    // ended: `unreachable` tells a probe's failure from an older call's by it.
    this.down = new Map();
    this.strikes = new Map(); // address → down periods since it last answered
    // Fetched topologies in a row of the held partition count with a lower
    // epoch than the held one (counted at most once per BEHIND_MS), when the
    // last was counted, and when a lower hint may fetch again.
    this.behind = 0;
    this.behindAt = -Infinity;
    this.behindHintAt = -Infinity;
    this.turn = 0;
    this.closed = false;
    this.watchCall = null;
    this.refreshing = null;
    this.waiters = new Set();
    this.unsupported = false;
    this.notOwner = 0; // responses whose member said it was not the owner
    // Commands routed submitStreams gave to a member's lane, by the address
    // its call was on then (routed_stream.js; a command sent again after a
    // break is not counted again): where the streams' commands went.
    this.streamed = new Map();
    // The first topology, asked for at once; commands wait for it briefly.
    this.ready = this.refresh().catch(() => {});
    this.watching = this.watch();
  }

  stubsOf(address) {
    let stubs = this.stubs.get(address);
    if (!stubs) {
      const { interceptors } = this;
      const commands = new this.api.CommandService(address, this.credentials, {
        interceptors,
        ...this.channelOptions,
      });
      // One connection per member for every service: the reads a routing
      // client sends to a live member (chronicle.js) share it. (A service
      // the given `api` lacks, as a test's, has no stub.)
      const onChannel = (Service) =>
        Service && new Service(address, this.credentials, { channelOverride: commands.getChannel(), interceptors });
      stubs = {
        commands,
        cluster: onChannel(this.api.ClusterService),
        events: onChannel(this.api.EventService),
        groups: onChannel(this.api.SubscriptionGroupService),
        reactions: onChannel(this.api.ReactionService),
        projections: onChannel(this.api.ProjectionService),
      };
      this.stubs.set(address, stubs);
    }
    return stubs;
  }

  isDown(address) {
    return (this.down.get(address) ?? -Infinity) > this.clock();
  }

  /** The routes' clock (ms): what `unreachable` is told a call was sent at. */
  now() {
    return this.clock();
  }

  /** The owner's address of `aggregateId`'s partition, or null. */
  ownerOf(aggregateId) {
    if (this.owners.length === 0) return null;
    return this.owners[partitionOf(aggregateId, this.owners.length)] || null;
  }

  /**
   * Where a read goes now (any member serves reads: they share the store):
   * the address given while it is not marked down, else another live
   * member, in turn. `unreachable` and `answered` keep the same books for
   * reads as for commands.
   */
  reader() {
    return this.memberFor(this.seed);
  }

  /** Where to send `aggregateId`'s command now. */
  route(aggregateId) {
    return this.memberFor(this.ownerOf(aggregateId));
  }

  /**
   * Member `address` unless it is down (or null), else another live member,
   * in turn (the seed while none is known): where a command goes, and where
   * a routed stream's lane for that member opens its call.
   */
  memberFor(address) {
    if (address && !this.isDown(address)) return address;
    const live = this.addresses.filter((member) => !this.isDown(member));
    if (live.length === 0) return this.seed;
    this.turn = (this.turn + 1) % live.length;
    return live[this.turn];
  }

  /**
   * A unary command call (Submit, SubmitBatch) on the owner's channel; sent
   * again with the same command ids (the server runs each command id once):
   * at once to another member when the owner is gone (`memberGone`; each
   * known member once in a row at most), else after a backoff, at least the
   * server's RetryInfo delay, when what failed it may pass (`retryable`:
   * UNAVAILABLE from a live member, ABORTED, …) or a stale token failed it
   * (`staleToken`); never after a misconfigured TLS (`tlsRefusal`); for
   * the retry policy's `retryForSeconds` (30 by default) and `maxAttempts`
   * (`attempts`: another bound, none by default).
   */
  async send(method, request, aggregateId, { timeoutSeconds = 10, attempts = Infinity } = {}) {
    await this.ready;
    const started = Date.now();
    let atOnce = 0; // failovers sent at once, without a backoff
    for (let attempt = 1; ; attempt += 1) {
      const address = this.route(aggregateId);
      const sent = this.now();
      try {
        const { response, trailers } = await unaryWithTrailers(
          this.stubsOf(address).commands,
          method,
          request,
          timeoutSeconds,
        );
        this.answered(address);
        this.hinted(trailers);
        return response;
      } catch (error) {
        const refusal = this.callError(error);
        // Every member has the client's credentials: a misconfigured TLS
        // fails them all, and is said at once rather than retried.
        const tls = await this.tlsRefusal(refusal, address, method);
        if (tls !== null) throw tls;
        const gone = memberGone(refusal) || unanswered(refusal);
        if (gone) this.unreachable(address, sent);
        if (attempt >= attempts) throw refusal;
        const stale = this.staleToken(refusal);
        if (!gone && !this.retryable(refusal) && !stale) throw refusal;
        if (gone && atOnce < this.addresses.length && attempt < this.retry.maxAttempts) {
          atOnce += 1;
          continue; // to another member, at once
        }
        const elapsedSeconds = (Date.now() - started) / 1000;
        const wait = retryDelay(this.retry, attempt, refusal, { stale, elapsedSeconds });
        if (wait === null) throw refusal;
        this.logRetry(
          attempt,
          `${method} to ${address}: attempt ${attempt} failed with ${refusal}; again in ${wait.toFixed(3)} s`,
        );
        await sleepSeconds(wait);
      }
    }
  }

  /**
   * A call to `address` ended as memberGone or unanswered say a call to a
   * member gone, going or out of reach does. `sent` (`now()`; undefined:
   * now) is when the call was sent, or for a stream, the later of its
   * opening and its last answer.
   *
   * A call sent after the member's latest down period ended (or when it had
   * none) marks it down: for DOWN_MS, doubled for each earlier down period
   * since it last answered, up to MOST_DOWN_MS. A call sent before that
   * period ended adds nothing: it was in flight when the member was marked
   * down, or sent to it all the same while it was (a lane's call, the
   * address given), and its failure is the outage already counted. So one
   * outage seen by many calls at once is one second down, and only probes,
   * the calls sent once the member is no longer marked down, double it: a
   * member the client cannot reach but that keeps its partitions (it is
   * alive to the database) costs one attempt now and then. The Python
   * client's Routes.unreachable is the same.
   */
  unreachable(address, sent = undefined) {
    if (address === this.seed && this.addresses.length === 0) return;
    const now = this.clock();
    if ((sent ?? now) < (this.down.get(address) ?? -Infinity)) return;
    const strikes = (this.strikes.get(address) ?? 0) + 1;
    this.strikes.set(address, strikes);
    this.down.set(address, now + Math.min(DOWN_MS * 2 ** (strikes - 1), MOST_DOWN_MS));
    this.refreshSoon();
  }

  /** A call to `address` was answered: its next failure marks it down for DOWN_MS again. */
  answered(address) {
    if (this.strikes.size > 0) this.strikes.delete(address);
  }

  /**
   * Trailing metadata of a command: refresh on a hint with a newer epoch,
   * and on one with an older epoch once per BEHIND_MS at most (the member's
   * view may lag, or the epochs went back: `adopt`).
   */
  hinted(trailers) {
    if (!trailers || trailers.get(NOT_OWNER_KEY).length === 0) return;
    this.notOwner += 1;
    const [epoch] = trailers.get(TOPOLOGY_EPOCH_KEY);
    const known = this.topology ? Number(this.topology.epoch) : -1;
    if (Number(epoch) > known) {
      this.refreshSoon();
    } else if (Number(epoch) < known && this.clock() >= this.behindHintAt) {
      this.behindHintAt = this.clock() + BEHIND_MS;
      this.refreshSoon();
    }
  }

  /**
   * Use `topology` unless the client knows a newer one.
   *
   * Epochs order the topologies of one partition group only (an epoch is
   * the sum of the group's lease epochs): a topology with another partition
   * count is another group's (the replicas were restarted with another
   * --partitions) and is taken whatever its epoch. Of the client's group,
   * one with a lower epoch is a view behind the client's: a member's view
   * lags the database by up to a heartbeat, and a client that took whatever
   * the member it asked last answered would flip between two members'
   * views; it is not taken. Unless the database's epochs went back (a fresh
   * or restored database), when every member's view is lower for good: a
   * lower topology that a fetch (`fetched`: GetTopology, not the watch)
   * returned is counted, once per BEHIND_MS at most, and the
   * BEHIND_FETCHES-th in a row (with nothing of the held epoch or newer
   * between them) is taken. They span two seconds at least: a view a
   * heartbeat behind (a second, at the default lease time) has caught up by
   * then, and answers the held epoch or a newer one, which ends the count.
   * A client that a lower epoch's hint tells it routed wrong fetches
   * (`hinted`), so it gets there.
   *
   * `fromSeed`: it came from the seed, so its `answered_by` is the member
   * the seed reaches (`seedMember`), learnt whether the topology is taken
   * or not. That member goes by `seed` in `ownerOf`, the members and the
   * books (`unreachable`, `isDown`), so a seed spelt otherwise than the
   * member advertises itself (`localhost:50051` for `127.0.0.1:50051`, a
   * host name for its IP address) is one member, not two: a replica that
   * died is marked down once, and no attempt is spent on it under its
   * other name. The Python client's Routes.adopt is the same.
   */
  adopt(topology, { fetched = false, fromSeed = false } = {}) {
    if (fromSeed && topology.answered_by && topology.answered_by !== this.seedMember) {
      this.seedMember = topology.answered_by;
      if (this.topology) this.take(this.topology);
    }
    const count = topology.partition_count;
    if (count < 1 || count & (count - 1) || topology.partition_owners.length !== count) return;
    if (topology.hash !== 'PARTITION_HASH_CRC32') return;
    const held = this.topology;
    if (held && count === held.partition_count && Number(topology.epoch) < Number(held.epoch)) {
      if (!fetched) return;
      if (this.clock() - this.behindAt >= BEHIND_MS) {
        this.behind += 1;
        this.behindAt = this.clock();
      }
      if (this.behind < BEHIND_FETCHES) return;
    }
    this.behind = 0;
    this.behindAt = -Infinity;
    this.take(topology);
    for (const waiter of this.waiters) waiter();
  }

  /** Route by `topology`: its members' addresses, the seed's member by `seed` (`adopt`). */
  take(topology) {
    const addresses = new Map(topology.members.map((member) => [member.member_id, member.address]));
    // Only the same port under another spelling of the host: a seed on
    // another port is a front (a load balancer, or the port `--processes N`
    // share) that reaches any member, not that one.
    const seedMember = addresses.get(this.seedMember);
    if (seedMember !== undefined && portOf(seedMember) === portOf(this.seed)) {
      addresses.set(this.seedMember, this.seed);
    }
    this.topology = topology;
    this.owners = topology.partition_owners.map((owner) => addresses.get(owner) ?? '');
    this.addresses = [...addresses.values()].sort();
  }

  /** Resolves once a topology satisfying `check` is adopted. */
  waitFor(check, { timeoutMs = 20_000 } = {}) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiters.delete(test);
        reject(new Error(`no such topology within ${timeoutMs} ms`));
      }, timeoutMs);
      const test = () => {
        if (this.topology && check(this.topology)) {
          clearTimeout(timer);
          this.waiters.delete(test);
          resolve(this.topology);
        }
      };
      this.waiters.add(test);
      test();
    });
  }

  candidates() {
    return [this.seed, ...this.addresses.filter((address) => address !== this.seed && !this.isDown(address))];
  }

  refreshSoon() {
    if (!this.refreshing && !this.unsupported) {
      this.refreshing = this.refresh()
        .catch(() => {})
        .finally(() => {
          this.refreshing = null;
        });
    }
  }

  /** GetTopology from the seed, or any member that answers. */
  async refresh() {
    let last = null;
    for (const address of this.candidates()) {
      try {
        const { response } = await unaryWithTrailers(this.stubsOf(address).cluster, 'GetTopology', {}, 2);
        this.adopt(response.topology, { fetched: true, fromSeed: address === this.seed });
        return;
      } catch (error) {
        if (error.code === grpc.status.UNIMPLEMENTED) this.unsupported = true;
        last = error;
      }
    }
    throw last;
  }

  async watch() {
    let delay = 200;
    for (let turn = 0; !this.closed && !this.unsupported; turn += 1) {
      const candidates = this.candidates();
      const address = candidates[turn % candidates.length];
      this.watchCall = this.stubsOf(address).cluster.WatchTopology({});
      try {
        for await (const message of this.watchCall) {
          this.adopt(message.topology, { fromSeed: address === this.seed });
          delay = 200;
        }
      } catch (error) {
        if (error.code === grpc.status.UNIMPLEMENTED) this.unsupported = true;
      }
      if (this.closed) return;
      await sleep(delay);
      delay = Math.min(delay * 2, 5000);
    }
  }

  close() {
    this.closed = true;
    this.watchCall?.cancel();
    for (const { commands } of this.stubs.values()) commands.close();
    this.stubs.clear();
  }
}

// A unary call that resolves with the response and the trailing metadata.
function unaryWithTrailers(stub, method, request, timeoutSeconds) {
  return new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + timeoutSeconds * 1000);
    let response;
    let trailers;
    let failed = false;
    const settle = () => {
      if (response !== undefined && trailers !== undefined) resolve({ response, trailers });
    };
    const call = stub[method](request, { deadline }, (error, answer) => {
      if (error) {
        failed = true;
        reject(error);
        return;
      }
      response = answer;
      settle();
    });
    call.on('status', (status) => {
      if (failed) return;
      trailers = status.metadata;
      settle();
    });
  });
}
