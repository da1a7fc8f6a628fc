// Chronicle from Node.js: the small reusable part of the example.
//
// Services come from @grpc/proto-loader; payload messages (packed into
// google.protobuf.Any) and the google.rpc error details are encoded and
// decoded with protobufjs, from the same .proto files (protos.js: the
// public API, the users, bank and box domains, the google.rpc error model;
// an application's own domain with loadProtos).

import { randomUUID } from 'node:crypto';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

import { CallLimit } from './call_limit.js';
import { bearerToken, channelCredentials, REFRESHABLE } from './credentials.js';
import { checkedFields, exactLongs, setInt64Decoding as setInt64Mode } from './fields.js';
import { HandshakeWatch, tlsRefusal } from './handshake.js';
import { Problem } from './problem.js';
import { API_FILES, loadProtos as loadProtoFiles, messages, protoIncludeDirs } from './protos.js';
import { logRetry, retryDelay, retryPolicy, serverDelaySeconds, STALE_TOKEN_ATTEMPTS } from './retry.js';
import { date, Projections } from './projections.js';
import { Reactions } from './reactions.js';
import { REASONS } from './reasons.js';
import { RoutedStream } from './routed_stream.js';
import { goingAway, memberGone, Routes, unanswered } from './routing.js';
import { Signal } from './signal.js';

// The client's own @grpc/grpc-js: an application that has a copy of its own
// makes credentials with this one (grpc-js checks them with instanceof).
export { grpc };
export { crc32, partitionOf } from './routing.js';
export { DEFAULT_RETRY, retryPolicy, STALE_TOKEN_ATTEMPTS } from './retry.js';
export { Projections, projectionStatus } from './projections.js';
export { Reactions, reactionStatus } from './reactions.js';
export { REASONS } from './reasons.js';

// Field names stay as in the .proto (aggregate_id, not aggregateId), so the
// code reads like the API reference. 64-bit integers of the API (versions,
// positions) arrive as JS numbers: exact up to 2^53, far beyond any real
// version; a payload's are decoded as setInt64Decoding says (fields.js).
const LOADER_OPTIONS = { keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true };

// How long a connection left for a new one (#reconnect) keeps its calls in
// flight before it is closed (a draining server ends its own within its grace).
const RETIRE_GRACE_MS = 60_000;

const definition = protoLoader.loadSync(API_FILES, { ...LOADER_OPTIONS, includeDirs: protoIncludeDirs() });
const api = grpc.loadPackageDefinition(definition).chronicle.v1;

const TYPE_URL_PREFIX = 'type.googleapis.com/';

// The service definitions, for tests that stand in for a server.
export const services = {
  CommandService: api.CommandService.service,
  EventService: api.EventService.service,
  ClusterService: api.ClusterService.service,
  SubscriptionGroupService: api.SubscriptionGroupService.service,
  ReactionService: api.ReactionService.service,
  ProjectionService: api.ProjectionService.service,
};

// How a subscription, a command stream or a group consumer may end and be
// opened again (a subscription after its last position, a command stream
// with its unanswered commands sent again with their ids, a consumer joining
// the group again): a server stopping (UNAVAILABLE; CANCELLED, for a call it
// had not started), and what a retried command may get past (RESOURCE_EXHAUSTED
// too, when the server sent a RetryInfo delay: too many calls or
// subscriptions, not a message over gRPC's limit: `reopenable`).
const STREAM_RETRYABLE = new Set(['UNAVAILABLE', 'CANCELLED', 'ABORTED', 'DEADLINE_EXCEEDED']);

/** Whether a stream that `refusal` ended is worth opening again (STREAM_RETRYABLE). */
function reopenable(refusal) {
  return (
    STREAM_RETRYABLE.has(refusal.code) || (refusal.code === 'RESOURCE_EXHAUSTED' && refusal.retryDelaySeconds !== null)
  );
}
// A unary call (and a read) is tried again after what a retry may get past
// (UNARY_RETRYABLE, and RESOURCE_EXHAUSTED when the server sent a RetryInfo
// delay), and after a stale token when the token is a function
// (credentials.js), for the retry policy's retryForSeconds (retry.js). A
// command keeps its id across attempts, so one whose answer was lost comes
// back replayed.
const UNARY_RETRYABLE = new Set(['UNAVAILABLE', 'ABORTED', 'DEADLINE_EXCEEDED', 'CANCELLED']);
// A command stream that had been open this long (seconds) when it broke
// counts its attempts afresh (results renew them too; an idle stream has none).
const RENEW_AFTER_SECONDS = 10;
// Commands of a stream sent and not yet answered: what a broken stream sends
// again. The server starts up to 256 of one stream at once; more would queue.
const STREAM_WINDOW = 256;
// A SubmitPage is closed before its requests pass this many encoded bytes
// (a larger command goes alone): far below any message limit a server would
// set, and still a window's worth of ordinary commands.
const PAGE_BYTES = 64 * 1024;
// What a request adds to a page besides its own bytes: its tag and length.
const FRAMING_BYTES = 6;
const SubmitRequest = messages.lookupType('chronicle.v1.SubmitRequest');

/**
 * Packs a message given as a plain object into a google.protobuf.Any. Keys
 * are the .proto's field names or their camelCase forms; a 64-bit integer
 * is a safe integer Number, a BigInt or a decimal string. Anything else is
 * refused before it is sent (ChronicleError INVALID_ARGUMENT): a type no
 * loaded .proto declares UNKNOWN_MESSAGE_TYPE, a key that is no field
 * UNKNOWN_FIELD (metadata `field` names it), a value of the wrong kind
 * INVALID_FIELD.
 */
export function pack(typeName, fields = {}) {
  return clientSide(() => {
    // By its full name only: protobufjs would also find 'Deposit' as
    // bank.v1.Deposit, and the server be sent a type URL naming no type.
    const type = typeof typeName === 'string' ? messages.lookup(typeName) : null;
    if (!(type instanceof protobuf.Type) || type.fullName !== `.${typeName}`) {
      throw new Problem(
        'UNKNOWN_MESSAGE_TYPE',
        `no .proto loaded declares ${String(typeName)} (a full name, e.g. bank.v1.Deposit; loadProtos)`,
        { type: String(typeName) },
      );
    }
    const checked = checkedFields(type, fields);
    const problem = type.verify(checked);
    if (problem) throw new Problem('INVALID_FIELD', `${typeName}: ${problem}`, { field: problem.split(':')[0] });
    return { type_url: TYPE_URL_PREFIX + typeName, value: Buffer.from(type.encode(type.fromObject(checked)).finish()) };
  });
}

/**
 * Loads an application's own domain .proto files (protos.js), so that pack()
 * and the decoding of events and states know its types:
 * loadProtos({ includeDirs: ['protos'], files: ['shop/v1/shop.proto'] }).
 * Refused as a ChronicleError: PROTO_NOT_FOUND, PROTO_INVALID.
 */
export function loadProtos(options) {
  clientSide(() => loadProtoFiles(options));
}

/** How payloads' 64-bit integers are decoded: 'number' (default), 'bigint' or 'string' (fields.js). */
export function setInt64Decoding(mode) {
  clientSide(() => setInt64Mode(mode));
}

/**
 * The message inside a google.protobuf.Any, as a plain object with its type
 * name; of a type this client has no .proto for (another plugin's, or one
 * the server hands over as stored because no loaded plugin declares it any
 * more: docs/subscriptions.md), its type name and bytes as they came,
 * `{ '@type', value }`, rather than an error that would end the stream.
 * None at all (a forgotten aggregate's redacted event): null.
 */
export function unpack(any) {
  if (any === null || any === undefined) return null;
  const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
  const type = messages.lookup(typeName);
  if (!(type instanceof protobuf.Type) || type.fullName !== `.${typeName}`) {
    return { '@type': typeName, value: Buffer.from(any.value) };
  }
  const fields = type.toObject(type.decode(any.value), { longs: String, enums: String, defaults: true });
  return { '@type': typeName, ...clientSide(() => exactLongs(type, fields)) };
}

/**
 * A refused call as the server described it: the gRPC code, the ErrorInfo's
 * machine-readable reason and metadata, the fields at fault (BadRequest) and
 * the delay before a retry may succeed (RetryInfo), all decoded from the
 * google.rpc.Status in the grpc-status-details-bin trailer.
 *
 * `reason` is the code's name when the status carried no ErrorInfo (a
 * transport failure, say), as in the Python client (service/client/errors.py):
 * a switch on `reason` then still has a value to match. To print one, use
 * `String(error)` (`toString`), which names the code and the reason only once
 * when they are the same: 'PERMISSION_DENIED SUBMIT_DENIED: …', 'UNAVAILABLE: …'.
 */
export class ChronicleError extends Error {
  constructor(grpcError) {
    super(grpcError.details || grpcError.message);
    this.name = 'ChronicleError';
    if (grpcError instanceof ChronicleError) {
      // One the client made (a payload it cannot decode exactly, say) met
      // where a call's errors are wrapped: kept as it is, reason and all.
      Object.assign(this, grpcError);
      return;
    }
    // e.g. 'FAILED_PRECONDITION'; an error that carries no gRPC code at all is UNKNOWN, never 'undefined'.
    this.code = grpcError.code === undefined ? 'UNKNOWN' : (grpc.status[grpcError.code] ?? String(grpcError.code));
    this.reason = this.code; // replaced by ErrorInfo.reason below, when sent
    this.metadata = {};
    this.fieldViolations = [];
    this.retryDelaySeconds = null;
    this.commandIds = []; // set by submit and submitBatch: the ids sent, to send again after an unknown outcome
    this.cause = grpcError;
    const [encoded] = grpcError.metadata?.get('grpc-status-details-bin') ?? [];
    if (encoded === undefined) return; // no rich status: a transport failure, say
    const status = messages.lookupType('google.rpc.Status').decode(encoded);
    for (const detail of status.details) {
      const fields = unpack(detail);
      switch (fields['@type']) {
        case 'google.rpc.ErrorInfo':
          this.reason = fields.reason || this.code; // an empty reason is none, as in the Python client
          this.metadata = fields.metadata;
          break;
        case 'google.rpc.BadRequest':
          this.fieldViolations = fields.field_violations.map((v) => ({ field: v.field, description: v.description }));
          break;
        case 'google.rpc.RetryInfo':
          this.retryDelaySeconds = Number(fields.retry_delay.seconds) + fields.retry_delay.nanos / 1e9;
          break;
        default:
          break; // details this client does not know: ignore them
      }
    }
  }

  /** The code, the reason when the server sent one, and the message: 'CODE REASON: message'. */
  toString() {
    const reason = this.reason && this.reason !== this.code ? ` ${this.reason}` : '';
    return `${this.code}${reason}: ${this.message}`;
  }
}

// The reasons of refusals made in this client, before anything is sent (a
// ChronicleError with code INVALID_ARGUMENT), and of a decoded value that
// would lose precision (FAILED_PRECONDITION: setInt64Decoding).
export const CLIENT_REASONS = Object.freeze({
  UNKNOWN_MESSAGE_TYPE: 'UNKNOWN_MESSAGE_TYPE',
  UNKNOWN_FIELD: 'UNKNOWN_FIELD',
  INVALID_FIELD: 'INVALID_FIELD',
  INVALID_EXPECTED_VERSION: 'INVALID_EXPECTED_VERSION',
  INVALID_OPTION: 'INVALID_OPTION',
  INVALID_CREDENTIALS: 'INVALID_CREDENTIALS',
  PROTO_NOT_FOUND: 'PROTO_NOT_FOUND',
  PROTO_INVALID: 'PROTO_INVALID',
  INT64_PRECISION: 'INT64_PRECISION',
});

/**
 * Runs `work`, handing a failure of the client's own checks over as a
 * ChronicleError, as a server's refusal would be: a Problem with its reason,
 * a TypeError or RangeError (a wrong option) as INVALID_OPTION.
 */
function clientSide(work) {
  try {
    return work();
  } catch (error) {
    if (error instanceof ChronicleError) throw error;
    if (!(error instanceof Problem || error instanceof TypeError || error instanceof RangeError)) throw error;
    throw refusedHere(error);
  }
}

/** A wrong option of a call, as a ChronicleError INVALID_ARGUMENT INVALID_OPTION. */
function invalidOption(message) {
  return refusedHere(new Problem(CLIENT_REASONS.INVALID_OPTION, message));
}

/** The ChronicleError for a failure of the client's own checks (clientSide). */
function refusedHere(error) {
  const reason = error instanceof Problem ? error.reason : CLIENT_REASONS.INVALID_OPTION;
  const precision = reason === CLIENT_REASONS.INT64_PRECISION;
  const code = precision ? grpc.status.FAILED_PRECONDITION : grpc.status.INVALID_ARGUMENT;
  const refusal = new ChronicleError({ code, details: error.message });
  refusal.reason = reason;
  refusal.metadata = error.metadata ?? {};
  if (refusal.metadata.field) {
    refusal.fieldViolations = [{ field: refusal.metadata.field, description: error.message }];
  }
  refusal.cause = error;
  return refusal;
}

/**
 * A ChronicleError of this client's own making (no server said it): `code`
 * a gRPC code's name, `reason` the machine-readable reason.
 */
export function clientError(code, reason, message, metadata = {}) {
  const error = new ChronicleError({ code: grpc.status[code], details: message });
  error.reason = reason;
  error.metadata = metadata;
  return error;
}

/**
 * `error` as a ChronicleError: one already is; a gRPC status becomes one;
 * anything else (a payload that does not decode, a bug) is INTERNAL
 * CLIENT_FAILURE with the original as its `cause`, so whatever a stream or a
 * call surfaces has a code and a reason to switch on.
 */
/**
 * FAILED_PRECONDITION LOG_REWOUND: the log no longer holds what a
 * subscription had read up to `metadata.position` (its end is now
 * `metadata.log_head`): the database was restored from an older copy, or
 * failed over to a standby that lost its last commits, and events written
 * since may sit at reused positions. Resuming would skip them, so the
 * subscription stops (never retried): re-sync deliberately
 * (docs/subscriptions.md, "When the log goes back"). A ChronicleError.
 */
export class LogRewoundError extends ChronicleError {
  constructor(grpcError) {
    super(grpcError);
    this.name = 'LogRewoundError';
  }
}

export function asChronicleError(error) {
  if (error instanceof ChronicleError) return error;
  if (typeof error?.code === 'number') {
    const made = new ChronicleError(error);
    return made.reason === REASONS.LOG_REWOUND ? new LogRewoundError(error) : made;
  }
  const wrapped = clientError('INTERNAL', 'CLIENT_FAILURE', String(error?.message ?? error));
  wrapped.cause = error;
  return wrapped;
}

/** The bound of a call given `{ signal, timeoutSeconds }`. */
function limitOf({ signal = null, timeoutSeconds = null } = {}) {
  return new CallLimit({ signal, timeoutSeconds }, clientError);
}

/**
 * Whether a unary call that `refusal` failed may succeed when made again
 * (UNARY_RETRYABLE, and RESOURCE_EXHAUSTED when the server sent a RetryInfo
 * delay: a full queue, not a message over gRPC's limit). A routed send
 * (routing.js) asks the same.
 */
function worthRetrying(refusal) {
  return (
    UNARY_RETRYABLE.has(refusal.code) || (refusal.code === 'RESOURCE_EXHAUSTED' && refusal.retryDelaySeconds !== null)
  );
}

/**
 * One attempt of a unary call, bounded by `timeoutSeconds` (null: none) and
 * by what is left of `limit` (the caller's signal and deadline): stopped by
 * the limit, the call is cancelled and this rejects at once.
 */
function call(stub, method, request, { timeoutSeconds = 10, limit = limitOf() } = {}) {
  let handle = null;
  const attempt = new Promise((resolve, reject) => {
    const ms = Math.min(timeoutSeconds === null ? Infinity : timeoutSeconds * 1000, limit.remainingMs());
    const options = Number.isFinite(ms) ? { deadline: new Date(Date.now() + ms) } : {};
    handle = stub[method](request, options, (error, response) =>
      error ? reject(new ChronicleError(error)) : resolve(response),
    );
  });
  return limit.race(attempt, () => handle?.cancel());
}

// A command's origin when the client is given none: the package's name.
export const DEFAULT_ORIGIN = '@chronicle/client';
export const DEFAULT_KEEPALIVE_SECONDS = 10;
export const DEFAULT_KEEPALIVE_TIMEOUT_SECONDS = 10;

/**
 * grpc-js's channel options for pinging every `seconds` while calls are open
 * (null: never), a ping unanswered for `timeoutSeconds` dropping the
 * connection and ending its calls UNAVAILABLE.
 */
export function keepaliveOptions(seconds, timeoutSeconds) {
  if (seconds === null) return {};
  if (!(seconds > 0) || !(timeoutSeconds > 0)) {
    throw new RangeError('keepaliveSeconds and keepaliveTimeoutSeconds must be positive (null: no pings)');
  }
  return {
    'grpc.keepalive_time_ms': Math.round(seconds * 1000),
    'grpc.keepalive_timeout_ms': Math.round(timeoutSeconds * 1000),
  };
}

/**
 * grpc-js's channel options for connecting again at most `seconds` apart
 * (at least 0.1 s) after the server went away: its own backoff grows from
 * 1 s to 2 minutes, and every call on a channel waiting to connect again
 * fails UNAVAILABLE at once, so after a long outage a subscriber would find
 * the server back only minutes later. The Python client's channels.py
 * does the same.
 */
export function reconnectOptions(seconds) {
  const most = Math.max(seconds, 0.1);
  return {
    'grpc.initial_reconnect_backoff_ms': Math.round(Math.min(1, most) * 1000),
    'grpc.max_reconnect_backoff_ms': Math.round(most * 1000),
  };
}

/** Resolves once `signal` is notified, or after `ms` (null: only then). */
function arrivedOrAfter(signal, ms) {
  if (ms === null) return signal.wait();
  let timer;
  return Promise.race([signal.wait(), new Promise((resolve) => (timer = setTimeout(resolve, ms)))]).finally(() =>
    clearTimeout(timer),
  );
}

/**
 * Waits `seconds` between a stream's attempts, or less: until `done()`
 * holds when `wake` is notified (the stream was cancelled, closed or
 * stopped by its signal or deadline), so that its loop ends at once rather
 * than after the backoff.
 */
async function pauseUnless(seconds, wake, done) {
  const until = Date.now() + seconds * 1000;
  while (!done() && Date.now() < until) await arrivedOrAfter(wake, until - Date.now());
}

// How long a consumer that leaves waits for the server to end its stream.
const LEAVE_TIMEOUT_MS = 5000;

/**
 * Ends a group consumer's live stream as a consumer leaving: the acks and
 * nacks written go out first, then the client's half of the call; the
 * server ends the call (giving the consumer's segments to the others) and
 * this resolves. A stream the server has not ended within LEAVE_TIMEOUT_MS
 * is cancelled. Cancelling at once, as before, could drop the acks written
 * just before (the RST_STREAM overtaking them): their events would come
 * again to another consumer. The Python client (groups.py) does the same.
 */
function leave(stream) {
  if (stream.leaving === undefined) {
    stream.leaving = new Promise((resolve) => {
      const timer = setTimeout(() => {
        stream.cancel();
        resolve();
      }, LEAVE_TIMEOUT_MS);
      stream.ended.then(() => {
        clearTimeout(timer);
        resolve();
      });
      stream.on('error', () => {}); // its status is what ends the wait
      stream.resume(); // deliveries still coming are not wanted: read on to the status
      stream.end();
    });
  }
  return stream.leaving;
}

/**
 * A client of Chronicle; every call returns a promise. With `routing: true`
 * each command goes to the replica that owns its aggregate (routing.js),
 * found from `address` and followed; every other call (reads,
 * subscriptions, group, projection and reaction calls) goes to any live
 * replica: `address` while it is not marked down, else another (#target).
 *
 * `origin` (DEFAULT_ORIGIN, '@chronicle/client') and `userId` ('') go with
 * every command. `credentials`: the channels' ChannelCredentials (default
 * plaintext), made with this package's `grpc` export
 * (`grpc.credentials.createSsl(ca)` for TLS, `createSsl(ca, key, cert)` for
 * mutual TLS), or as plain PEM contents: `{ ca }` for TLS, `{ ca, cert, key }`
 * for mutual TLS (credentials.js). `token`: a JWT or an API
 * key, sent as `authorization: Bearer <token>` with every call (unary and
 * streaming, the routing client's too), or a function returning one or a
 * promise of one, asked again at every call and every reopened stream
 * (credentials.js). With a function, a call or stream that a stale token
 * failed (UNAUTHENTICATED: TOKEN_EXPIRED, INVALID_TOKEN, UNKNOWN_SIGNING_KEY, UNKNOWN_API_KEY) is
 * tried again with the token the function returns then, up to
 * STALE_TOKEN_ATTEMPTS (5) times in a row: a unary call or a read retried, a
 * subscription, a command stream or a group consumer reopened and resumed as
 * after UNAVAILABLE. With a string, that is an error like any other.
 *
 * `retry` (retry.js; fields left out keep DEFAULT_RETRY's): a unary call
 * (`submit`, `getAggregate`, the group and reaction calls, a routed send) and a `read`
 * are tried again, with the same command id, for `retryForSeconds` (30;
 * null: no bound) and `maxAttempts` attempts (Infinity by default); a
 * subscription, a command stream and a group consumer are reopened without
 * a bound (their own `maxAttempts` option sets one), so a server restart
 * or a database outage is waited out; the backoff grows from 0.05 s to
 * `maxBackoffSeconds` (2), never shorter than the server's RetryInfo.
 * `logger` (null: silent; `console` will do): each retry and reopening is
 * reported, to `logger.info` for the first three in a row, then to
 * `logger.warn`. A channel whose server went away connects again at most
 * `maxBackoffSeconds` apart (grpc-js's own backoff grows to 2 minutes), so
 * a server that is back is found within that.
 *
 * `keepaliveSeconds` (10; null: none): while calls are open, ping the server
 * this often, and drop a connection whose ping goes unanswered for
 * `keepaliveTimeoutSeconds` (10): a connection that died silently (a
 * replica's host gone, a network cut) then ends its calls UNAVAILABLE, which
 * is retried, resumed or routed elsewhere, instead of holding them for ever.
 * Chronicle's servers accept pings every 5 s or more
 * (--min-client-ping-seconds). `attemptTimeoutSeconds` (10; null: none)
 * bounds each attempt of a unary call, and in a command stream the wait for
 * an answer while commands are unanswered (a server that hung): the stream
 * is reopened as a broken one is. A routed command, or a routed stream's
 * lane, whose member did not answer within it goes to another member, the
 * member marked down (routing.js).
 */
export class ChronicleClient {
  #tokenFunction;
  #address;
  #plaintext;
  #secureContext;
  #closed = false;
  // This client's read stubs, by the name Routes.stubsOf gives a member's (#target).
  #readServices = new Map();
  // The subscriptions, group consumers and command streams open now: close() ends them.
  #streams = new Set();
  // Makes this client's own channel and its stubs (again, in #reconnect).
  #openStubs;
  // Channels left by #reconnect, closed once their calls had time to end.
  #retiring = new Set();

  constructor(
    address,
    {
      origin = DEFAULT_ORIGIN,
      userId = '',
      routing = false,
      credentials = null,
      token = null,
      keepaliveSeconds = DEFAULT_KEEPALIVE_SECONDS,
      keepaliveTimeoutSeconds = DEFAULT_KEEPALIVE_TIMEOUT_SECONDS,
      attemptTimeoutSeconds = 10,
      retry = {},
      logger = null,
    } = {},
  ) {
    // A wrong option is a ChronicleError (INVALID_OPTION, INVALID_CREDENTIALS) like any other refusal.
    const interceptors = clientSide(() => (token === null ? [] : [bearerToken(token)]));
    credentials = clientSide(() => channelCredentials(credentials));
    this.#plaintext = !credentials._isSecure(); // a connection closed at once may then be a TLS server's (handshake.js)
    // grpc-js keeps the TLS settings of credentials made by createSsl (and
    // so of { ca, cert, key }) there: a connection closed at once is then
    // asked whether the server refuses this client's certificate, or its
    // lack of one (handshake.js). Credentials of another kind are not asked.
    this.#secureContext = credentials.secureContext ?? null;
    this.retry = clientSide(() => retryPolicy(retry));
    this.logger = logger;
    const channelOptions = clientSide(() => ({
      ...keepaliveOptions(keepaliveSeconds, keepaliveTimeoutSeconds),
      ...reconnectOptions(this.retry.maxBackoffSeconds),
    }));
    this.#tokenFunction = typeof token === 'function';
    this.#address = address;
    this.#openStubs = () => {
      // A connection of its own (grpc-js otherwise shares one among the
      // channels of a process to the same address): #reconnect's new channel
      // must not get the very connection it leaves.
      const own = { interceptors, ...channelOptions, 'grpc.use_local_subchannel_pool': 1 };
      this.commands = new api.CommandService(address, credentials, own);
      // One connection for all the services.
      const shared = { channelOverride: this.commands.getChannel(), interceptors };
      this.events = new api.EventService(address, credentials, shared);
      this.groups = new api.SubscriptionGroupService(address, credentials, shared);
      this.reactionService = new api.ReactionService(address, credentials, shared);
      this.projectionService = new api.ProjectionService(address, credentials, shared);
      this.#readServices = new Map([
        [this.events, 'events'],
        [this.groups, 'groups'],
        [this.reactionService, 'reactions'],
        [this.projectionService, 'projections'],
      ]);
    };
    this.#openStubs();
    // ReactionService (reactions.js): its calls retried as every unary call.
    const bound = (options) => clientSide(() => limitOf(options));
    this.reactions = new Reactions(
      (method, request, limit) => this.#call(this.reactionService, method, request, limit),
      bound,
    );
    // ProjectionService (projections.js): read models, documents decoded as payloads are.
    this.projections = new Projections(
      (method, request, limit) => this.#call(this.projectionService, method, request, limit),
      unpack,
      bound,
    );
    this.origin = origin;
    this.userId = userId;
    this.attemptTimeoutSeconds = attemptTimeoutSeconds;
    // Whether the server has ReadAggregatePages: undefined until known.
    this.pagedReads = undefined;
    // Whether it has SubmitStreamPages: undefined until known; command
    // streams use SubmitStream once it answered UNIMPLEMENTED.
    this.pagedStreams = undefined;
    this.routes = routing
      ? new Routes(address, {
          api,
          credentials,
          interceptors,
          channelOptions,
          callError: (error) => new ChronicleError(error),
          staleToken: (refusal) => this.#staleToken(refusal),
          retryable: worthRetrying,
          tlsRefusal: (refusal, address, method) => this.#tlsRefusal(refusal, address, method),
          retry: this.retry,
          logRetry: (attempt, message) => logRetry(this.logger, attempt, message),
        })
      : null;
  }

  /**
   * Where the next attempt of a call on `stub` (one of this client's own:
   * `events`, `groups`, `reactionService`, `projectionService`) goes:
   * { stub, address, sent }. Without routing, and for a command, on this
   * client's channel (address null). With routing, a read goes to one live
   * member (they share the store): the address given while it is not
   * marked down, else another (Routes.reader; not spread: on one member
   * a client's reads never go back in the log, docs/scaling.md), so the seed's death does not
   * end reads, subscriptions or consumers that other members can serve.
   */
  #target(stub) {
    const service = this.#readServices.get(stub);
    if (this.routes === null || service === undefined) return { stub, address: null, sent: null };
    const address = this.routes.reader();
    // The address given keeps this client's own channel (no second connection to it).
    const on = address === this.routes.seed ? stub : this.routes.stubsOf(address)[service];
    return { stub: on, address, sent: this.routes.now() };
  }

  /**
   * A call to `target` answered (`refusal` null) or failed: the routes'
   * books, as for a routed command (a member gone or unanswered is marked
   * down; one that answered starts afresh). `target.sent`: when the call was
   * sent or (a stream) last heard from.
   */
  #heard(target, refusal = null) {
    if (refusal !== null && goingAway(refusal)) this.#reconnect(target.stub);
    if (target.address === null) return;
    if (refusal === null) this.routes.answered(target.address);
    else if (memberGone(refusal) || unanswered(refusal)) this.routes.unreachable(target.address, target.sent);
  }

  /**
   * A call on `stub` ended SHUTTING_DOWN: its server drains before it stops.
   * If `stub` is on this client's own channel, the next calls go on a new
   * one, on a new connection: reopened on the old one, behind an L4
   * balancer (which chose the server per connection), a subscription or a
   * consumer would reach the draining server again, refused until it
   * stopped. The old channel's calls in flight go on; it is closed after
   * RETIRE_GRACE_MS (or by close()).
   */
  #reconnect(stub) {
    if (this.#closed || stub.getChannel() !== this.commands.getChannel()) return; // another's, or replaced already
    const channel = this.commands.getChannel();
    this.#openStubs();
    const timer = setTimeout(() => {
      this.#retiring.delete(retired);
      channel.close();
    }, RETIRE_GRACE_MS);
    timer.unref();
    const retired = { channel, timer };
    this.#retiring.add(retired);
  }

  /** Throws FAILED_PRECONDITION CLIENT_CLOSED once `close()` was called: its channels are gone. */
  #checkOpen() {
    if (this.#closed) throw clientError('FAILED_PRECONDITION', 'CLIENT_CLOSED', 'this ChronicleClient was closed');
  }

  /** Whether `refusal` came of a stale token, which asking the token function again may cure. */
  #staleToken(refusal) {
    return this.#tokenFunction && refusal.code === 'UNAUTHENTICATED' && REFRESHABLE.has(refusal.reason);
  }

  /**
   * A unary call, tried again while it fails with what a retry may get
   * past, or a stale token the token function may replace, for the retry
   * policy's `retryForSeconds` (and `maxAttempts`); the request (a command's
   * id with it) is the same each time.
   */
  async #call(stub, method, request, limit = limitOf()) {
    this.#checkOpen();
    const started = Date.now();
    for (let attempt = 1; ; attempt += 1) {
      limit.check();
      const target = this.#target(stub);
      try {
        const response = await call(target.stub, method, request, { timeoutSeconds: this.attemptTimeoutSeconds, limit });
        this.#heard(target);
        return response;
      } catch (refusal) {
        const stopped = limit.stopped();
        if (stopped !== null) throw stopped;
        const tls = await this.#tlsRefusal(refusal, target.address, method);
        if (tls !== null) throw tls; // not retried: a misconfiguration does not cure itself
        this.#heard(target, refusal);
        const stale = this.#staleToken(refusal);
        const elapsedSeconds = (Date.now() - started) / 1000;
        const retryable = worthRetrying(refusal) || stale;
        const wait = retryable ? retryDelay(this.retry, attempt, refusal, { stale, elapsedSeconds }) : null;
        if (wait === null) throw refusal;
        this.#logRetry(attempt, `${method}: attempt ${attempt} failed with ${refusal}; again in ${wait.toFixed(3)} s`);
        await limit.sleep(wait);
      }
    }
  }

  #logRetry(retry, message) {
    logRetry(this.logger, retry, message);
  }

  /**
   * What a unary call or a read that `refusal` ended on `address` (null:
   * the address given) throws at once instead of retrying: UNAVAILABLE
   * TLS_HANDSHAKE_FAILED when its TLS is misconfigured (handshake.js,
   * tlsRefusal), else null.
   */
  #tlsRefusal(refusal, address, what) {
    const [plaintext, secureContext] = [this.#plaintext, this.#secureContext];
    address ??= this.#address;
    return tlsRefusal(refusal, { what, address, refuse: clientError, plaintext, secureContext });
  }

  /** A stream's watch for TLS failures (handshake.js): `what` names the stream in what it says. */
  #handshakeWatch(what) {
    const { retryForSeconds } = this.retry;
    const [plaintext, secureContext] = [this.#plaintext, this.#secureContext];
    const logger = this.logger;
    return new HandshakeWatch({ what, retryForSeconds, logger, refuse: clientError, plaintext, secureContext });
  }

  /**
   * Runs a command: `typeName` is its full message name (e.g.
   * 'bank.v1.Deposit'), `fields` its content. A new command id is generated
   * unless one is given; submitting the same id again is safe (the server
   * returns the original result with `replayed: true`). Resolves to
   * { command_id, version, replayed, events, position } with each event's
   * payload decoded; `position` is the log position of its last event (0
   * when it appended nothing): pass it as `minPosition` to read your own
   * write (`projections.document`, `read`, `getAggregate`). `dryRun`: the
   * server decides on the current state and writes nothing (the events it
   * would append, position 0; a refusal rejects as it would).
   * `correlationId`, `causationId`: carried into the events' envelopes.
   * Rejects with a ChronicleError; its `commandIds` names the id sent, so
   * after one that leaves the outcome unknown (DEADLINE_EXCEEDED,
   * UNAVAILABLE once the retries are spent) the same id sent again runs the
   * command at most once and answers what it did. FAILED_PRECONDITION
   * AGGREGATE_FORGOTTEN for an aggregate that was forgotten, TENANT_SHREDDED
   * for a new aggregate of a tenant whose master keys were destroyed
   * (`metadata.aggregate_id`, `metadata.tenant`). RESOURCE_EXHAUSTED with a
   * RetryInfo, retried after its delay as long as `retryForSeconds` allows:
   * the server's, the caller's or its tenant's calls in flight at their most
   * (TOO_MANY_REQUESTS, PRINCIPAL_TOO_MANY_REQUESTS, TENANT_TOO_MANY_REQUESTS),
   * the caller's or its tenant's commands per second spent
   * (PRINCIPAL_RATE_LIMITED, TENANT_RATE_LIMITED), the aggregate's queue
   * full (AGGREGATE_QUEUE_FULL).
   */
  async submit(
    aggregateId,
    typeName,
    fields,
    {
      commandId = randomUUID(),
      expectedVersion,
      metadata = {},
      dryRun = false,
      correlationId,
      causationId,
      signal,
      timeoutSeconds,
    } = {},
  ) {
    const limit = limitOf({ signal, timeoutSeconds });
    const command = this.command({
      aggregateId,
      typeName,
      fields,
      commandId,
      expectedVersion,
      metadata,
      correlationId,
      causationId,
    });
    const response = await naming(
      [commandId],
      this.#commandCall('Submit', { command, dry_run: dryRun }, aggregateId, limit),
    );
    return submitted(commandId, response);
  }

  /**
   * Runs `commands` (1 to 100, all for one aggregate; each { aggregateId,
   * typeName, fields, commandId, expectedVersion, metadata }, a command id
   * generated unless given) as one unit: each sees the state the ones before
   * it left, and all their events are appended in one transaction, or none
   * is. Resolves to { version, replayed, results, position }: one result
   * per command, in order, as `submit` resolves, `position` the batch's last
   * event's. A refusal of any command refuses the batch, the error's
   * `metadata` naming it (`batch_index`, `command_id`); a malformed batch is
   * INVALID_ARGUMENT (EMPTY_BATCH, BATCH_TOO_LARGE, MIXED_AGGREGATES,
   * MIXED_AGGREGATE_TYPES, DUPLICATE_COMMAND_ID). Retried as `submit` is,
   * with the same command ids: a batch that ran comes back whole
   * (`replayed`). `dryRun`: the server decides and writes nothing (the
   * events it would append, position 0). With `routing: true` it goes to the
   * replica that owns the aggregate.
   */
  async submitBatch(commands, { dryRun = false, signal, timeoutSeconds } = {}) {
    if (!Array.isArray(commands)) throw invalidOption('submitBatch: commands must be an array');
    const limit = limitOf({ signal, timeoutSeconds });
    const described = commands.map((one) => ({ ...one, commandId: one.commandId ?? randomUUID() }));
    const request = { commands: described.map((one) => this.command(one)), dry_run: dryRun };
    const response = await naming(
      described.map((one) => one.commandId),
      this.#commandCall('SubmitBatch', request, described[0]?.aggregateId ?? '', limit),
    );
    const results = response.results.map((result, index) => submitted(described[index].commandId, result));
    return {
      version: response.version,
      replayed: response.replayed,
      results,
      position: Math.max(0, ...results.map((result) => result.position)),
    };
  }

  /** A unary CommandService call: to the aggregate's owner when routing, else on this client's channel. */
  async #commandCall(method, request, aggregateId, limit) {
    if (this.routes === null) return this.#call(this.commands, method, request, limit);
    this.#checkOpen();
    limit.check();
    // A routed send retries on its own (routing.js): a stopped caller is
    // answered at once; what the send does after is no one's concern.
    return limit.race(this.routes.send(method, request, aggregateId, { timeoutSeconds: this.attemptTimeoutSeconds }));
  }

  /**
   * Runs commands for any aggregates over one call and yields one result per
   * command, in the order taken, as results arrive: { command, command_id,
   * submitted, error }, with exactly one of `submitted` (what `submit`
   * resolves to) and `error` (a ChronicleError: a refused command does not
   * end the stream) set. `commands` is an array or an (async) iterable of
   * { aggregateId, typeName, fields, commandId, expectedVersion, metadata }
   * (a command id is generated unless given; `command` is the object with
   * it). It is read as the stream has room (at most `window` unanswered), so
   * it may be an endless generator that waits for results. Commands for one
   * aggregate run in the order sent, others concurrently.
   *
   * The call is SubmitStreamPages: the commands taken while the last write
   * went out leave together as one SubmitPage (about 64 KiB at most; a larger
   * command goes alone), a command that comes alone leaves at once, and the
   * results come back several to a message. A server from before pages
   * answers UNIMPLEMENTED, and then the commands go one per message
   * (SubmitStream), for this client's later streams too. A stream broken by
   * UNAVAILABLE, a CANCELLED we did not ask for (a server stopping) or
   * another code worth retrying (a stale token too, when the token is a
   * function: the server ends a stream at its JWT's exp) is opened again and
   * its unanswered commands are sent again first, in order, with their ids:
   * the server runs each id once, so one that had run comes back as its
   * result with `replayed`.
   * By default it is reopened for as long as it is iterated (`maxAttempts`:
   * the client's retry policy's, Infinity), the backoff growing to 2 s. A
   * finite `maxAttempts` bounds the reopenings in a row: every result renews
   * it, and so does a call that had been open `renewAfterSeconds` when it
   * broke (an idle stream that the server ends at each token's exp, or a
   * connection's age); past it the iteration throws the stream's
   * ChronicleError. Leaving the loop ends the call.
   *
   * With `routing: true` there is one such stream per replica (a lane,
   * routed_stream.js), each fed the commands whose aggregates that replica
   * owns; the results still come in the order taken, and `window` bounds the
   * unanswered commands of all lanes together. The commands of one aggregate
   * stay in one lane while any of them is unanswered, even if the topology
   * changes meanwhile, so they still run in the order sent. A lane whose
   * call breaks is opened again on its replica, or on another live one when
   * that replica is marked down (it stopped answering), with its unanswered
   * commands sent again, with their ids.
   */
  submitStream(
    commands,
    {
      dryRun = false,
      window = STREAM_WINDOW,
      maxAttempts = this.retry.maxAttempts,
      renewAfterSeconds = RENEW_AFTER_SECONDS,
      signal,
      timeoutSeconds,
    } = {},
  ) {
    this.#checkOpen();
    const limit = clientSide(() => limitOf({ signal, timeoutSeconds }));
    const source = commands[Symbol.asyncIterator]?.() ?? commands[Symbol.iterator]();
    const options = { dryRun, window, maxAttempts, renewAfterSeconds };
    let stream;
    if (this.routes === null) {
      stream = this.#commandStream(source, () => this.commands, options);
    } else {
      const routed = new RoutedStream(this.routes, source, {
        window,
        openLane: (input, stubFor) => this.#commandStream(input, stubFor, options),
      });
      stream = { results: routed.results(), close: () => routed.stop() };
    }
    return limit.bounded ? boundedStream(stream, limit) : stream.results;
  }

  /**
   * One command stream over SubmitStreamPages (SubmitStream once a server
   * answered UNIMPLEMENTED), reopened when it breaks (submitStream says how):
   * all of `submitStream` without routing, and each lane of a routed one.
   * `source` is an iterator of commands; `stubFor(broken)` is the
   * CommandService stub to open the next call on, `broken` being the
   * ChronicleError that ended the call before (null for the first call, and
   * for the same commands again over SubmitStream). Returns { results, close }:
   * `results` yields a result per command, in the order taken; `close()` ends
   * it from outside, as leaving the loop does (a routed stream closes its
   * lanes so).
   */
  #commandStream(source, stubFor, { dryRun, window, maxAttempts, renewAfterSeconds }) {
    const client = this;
    const answerTimeoutMs = this.attemptTimeoutSeconds === null ? null : this.attemptTimeoutSeconds * 1000;
    // Taken and not answered yet, in order: { command, request, size }. The
    // last `unsent` of them are not written on the current call yet.
    const pending = [];
    const state = {
      stream: null, // the current call: { call, paged, writing, ended, messages, outcome }
      unsent: 0,
      exhausted: false, // every command was taken from `source`
      failure: null, // what taking the next command threw
      stopped: false,
      scheduled: false,
    };
    const arrived = new Signal(); // wakes the results loop: a message, the call's end, a failure
    const handshakes = this.#handshakeWatch('command stream');
    const space = new Signal(); // wakes the pump: room in the window

    // Writes the commands taken and not written yet, unless a write is going
    // out on the call: those taken meanwhile leave together once it has.
    const write = () => {
      const stream = state.stream;
      if (state.stopped || stream === null || stream.writing || stream.ended) return;
      if (state.unsent > 0) {
        const unsent = pending.slice(pending.length - state.unsent);
        if (pending.length === state.unsent) stream.waitingSince = Date.now(); // the first outstanding: its clock starts
        state.unsent = 0;
        const outgoing = stream.paged ? pagesOf(unsent) : unsent.map((sent) => sent.request);
        stream.writing = true;
        let left = outgoing.length;
        // A write to a broken call may fail or never be confirmed: the call's
        // status comes to the results loop, which opens another.
        const written = () => {
          left -= 1;
          if (left > 0) return;
          stream.writing = false;
          write();
        };
        for (const message of outgoing) stream.call.write(message, written);
      } else if (state.exhausted) {
        stream.ended = true;
        stream.call.end(); // no more commands: the server ends the call once all are answered
      }
    };
    // The first write after commands were taken waits for the event loop's
    // next turn, not for more: what is taken at once (a list, a generator
    // that yields without waiting) leaves together.
    const schedule = () => {
      if (state.scheduled) return;
      state.scheduled = true;
      setImmediate(() => {
        state.scheduled = false;
        write();
      });
    };

    const open = (broken) => {
      state.stream?.call.cancel();
      const paged = client.pagedStreams !== false;
      const stub = stubFor(broken);
      const call = paged ? stub.SubmitStreamPages() : stub.SubmitStream();
      const openedAt = Date.now();
      const stream = { call, paged, writing: false, ended: false, messages: [], outcome: null, openedAt };
      stream.address = stub.getChannel().getTarget().replace(/^dns:/, ''); // what a TLS failure names
      // Since when the call has kept written commands waiting without a message.
      stream.waitingSince = openedAt;
      call.on('error', () => {}); // the reader below takes the status
      (async () => {
        try {
          for await (const message of call) {
            handshakes.received();
            stream.waitingSince = Date.now();
            stream.messages.push(message);
            arrived.notify();
          }
          stream.outcome = 'end';
        } catch (error) {
          stream.outcome = error;
        }
        arrived.notify();
      })();
      state.stream = stream;
      state.unsent = pending.length; // the unanswered commands go first, in order
      write();
    };

    const pump = async () => {
      try {
        while (!state.stopped) {
          if (pending.length >= window) {
            await space.wait();
            continue;
          }
          const next = await source.next();
          if (state.stopped) break;
          if (next.done) {
            state.exhausted = true;
            schedule();
            return;
          }
          const command = { ...next.value, commandId: next.value.commandId ?? randomUUID() };
          pending.push({ command, request: { command: client.command(command), dry_run: dryRun }, size: undefined });
          state.unsent += 1;
          schedule();
        }
        await source.return?.();
      } catch (error) {
        state.failure = error;
        arrived.notify();
      }
    };

    const answer = (response) => {
      if (pending.length <= state.unsent) {
        throw protocolError(`a result for ${JSON.stringify(response.command_id)}, which was not sent`);
      }
      const { command } = pending.shift();
      space.notify();
      if (response.command_id !== command.commandId) {
        throw protocolError(
          `expected the result of command ${command.commandId}, got one for ${JSON.stringify(response.command_id)}`,
        );
      }
      if (response.result === 'error') {
        return { command, command_id: command.commandId, submitted: null, error: commandError(response.error) };
      }
      const ran = submitted(command.commandId, response.ok);
      return { command, command_id: command.commandId, submitted: ran, error: null };
    };

    const stop = () => {
      state.stopped = true;
      space.notify(); // the pump sees it and stops taking commands
      arrived.notify(); // the results loop sees it and returns
      state.stream?.call.cancel();
    };

    const handle = { close: stop }; // what client.close() ends
    async function* results() {
      let attempt = 1;
      client.#streams.add(handle);
      try {
        open(null);
        pump();
        while (!state.stopped) {
          const stream = state.stream;
          if (stream.messages.length > 0) {
            const message = stream.messages.shift();
            attempt = 1;
            if (stream.paged) client.pagedStreams = true;
            for (const response of stream.paged ? message.results : [message]) yield answer(response);
            continue;
          }
          if (state.failure !== null) throw state.failure;
          if (stream.outcome === null) {
            // Commands written and unanswered for the attempt timeout: the
            // call is broken (a server that hung while its connection still
            // answers pings), as with DEADLINE_EXCEEDED of the client's own.
            const outstanding = pending.length - state.unsent;
            const waited = Date.now() - stream.waitingSince;
            if (answerTimeoutMs === null || outstanding === 0 || waited < answerTimeoutMs) {
              const left = answerTimeoutMs === null ? null : outstanding > 0 ? answerTimeoutMs - waited : answerTimeoutMs;
              await arrivedOrAfter(arrived, left);
              continue;
            }
            stream.unanswered = true;
            stream.outcome = {
              code: grpc.status.DEADLINE_EXCEEDED,
              details: `no answer on the command stream for ${answerTimeoutMs / 1000} s with ${outstanding} commands waiting`,
              metadata: new grpc.Metadata(),
            };
            stream.call.cancel();
          }
          if (stream.outcome === 'end') {
            if (pending.length > 0) throw protocolError(`the stream ended with ${pending.length} commands unanswered`);
            return;
          }
          const refusal = new ChronicleError(stream.outcome);
          if (refusal.code === 'UNIMPLEMENTED' && stream.paged) {
            client.pagedStreams = false; // a server from before pages: remembered for this client's life
            open(null); // not an attempt: the same commands, one per message
            continue;
          }
          await handshakes.failed(refusal, stream.address); // says a TLS failure; throws one that lasts
          const stale = client.#staleToken(refusal); // the next call asks the token function again
          const retryable = reopenable(refusal) || stale;
          // A call that lived (a token's expiry, a connection's age ended
          // it) is not a retry of the same failure: an idle stream that
          // servers end now and then is reopened every time. One left
          // unanswered never lived: a server that never answers spends the
          // attempts (as in the Python client).
          if (!stream.unanswered && Date.now() - stream.openedAt >= renewAfterSeconds * 1000) attempt = 1;
          const wait = retryable ? retryDelay(client.retry, attempt, refusal, { stale, maxAttempts }) : null;
          if (wait === null) throw refusal;
          client.#logRetry(
            attempt,
            `command stream broke with ${refusal} (retry ${attempt}); ` +
              `${pending.length} commands to send again in ${wait.toFixed(3)} s`,
          );
          await pauseUnless(wait, arrived, () => state.stopped);
          attempt += 1;
          if (!state.stopped) open(refusal);
        }
      } finally {
        client.#streams.delete(handle);
        stop();
      }
    }
    return { results: results(), close: stop };
  }

  /** A command message (chronicle.v1.Command) from its description, as this client's user and origin. */
  command({ aggregateId, typeName, fields, commandId, expectedVersion, metadata = {}, correlationId, causationId }) {
    const now = Date.now();
    const command = {
      command_id: commandId,
      aggregate_id: aggregateId,
      payload: pack(typeName, fields),
      user_id: this.userId,
      origin: this.origin,
      timestamp: { seconds: Math.floor(now / 1000), nanos: (now % 1000) * 1e6 },
      metadata,
      correlation_id: correlationId ?? '',
      causation_id: causationId ?? '',
    };
    if (expectedVersion !== undefined) command.expected_version = clientSide(() => versionExpected(expectedVersion));
    return command;
  }

  /**
   * The aggregate's events in version order, payloads decoded. Read in
   * pages (ReadAggregatePages: several events per message); a server from
   * before pages answers UNIMPLEMENTED, and then the events come one per
   * message (ReadAggregate), as they did. A read broken by what a retry may
   * get past (as for a unary call), or by a stale token when the token is a
   * function, is taken up again where it broke (at the last version
   * received, skipping the events of it already received: an upcaster may
   * have split one stored event into several of one version), for the
   * retry policy's `retryForSeconds` after it began or last received an
   * event.
   *
   * As the Python client's `read`: from `fromVersion` (default 1), or with
   * `backwards` newest first from `fromVersion` (default: the latest) down
   * to version 1; only `eventTypes` and events of `origin` when given.
   * `limit`: at most about this many events, for paging: a page never ends
   * between events that share a version (one stored event an upcaster
   * split), so it may hold a few more; ask for the next page from the last
   * version received + 1 (backwards: - 1); a page shorter than `limit` is
   * the last. `minPosition`: read your writes from a server that reads from
   * a standby (the read includes at least the log up to it; the server
   * waits for it, or answers UNAVAILABLE READS_BEHIND, which is retried).
   */
  async read(
    aggregateId,
    {
      fromVersion,
      eventTypes = [],
      limit = null,
      backwards = false,
      origin = '',
      minPosition = 0,
      signal,
      timeoutSeconds,
    } = {},
  ) {
    this.#checkOpen();
    const bound = limitOf({ signal, timeoutSeconds });
    if (limit !== null && !(Number.isInteger(limit) && limit >= 1)) {
      throw invalidOption(`limit must be a whole number of at least 1 (or null: no limit), got ${limit}`);
    }
    const events = [];
    let alive = Date.now(); // when the read began or last received an event
    for (let attempt = 1; ; attempt += 1) {
      const before = events.length;
      let from = fromVersion ?? (backwards ? 0 : 1);
      let skip = 0; // events of version `from` received already
      let target = null; // where this attempt goes (#target)
      if (before > 0) {
        from = events[before - 1].version;
        while (skip < before && events[before - 1 - skip].version === from) skip += 1;
      }
      try {
        const request = {
          aggregate_id: aggregateId,
          from_version: from,
          event_types: eventTypes,
          origin,
          backwards,
          min_position: minPosition,
          // What is left of the limit, counting the events of `from` read again (0: none).
          limit: limit === null ? 0 : Math.max(1, limit - before + skip),
        };
        target = this.#target(this.events);
        try {
          await this.#readInto(events, request, skip, bound, target);
        } catch (refusal) {
          this.#heard(target, refusal);
          throw refusal;
        }
        this.#heard(target);
        return events;
      } catch (refusal) {
        const stopped = bound.stopped();
        if (stopped !== null) throw stopped;
        const tls = await this.#tlsRefusal(refusal, target?.address, `read ${aggregateId}`);
        if (tls !== null) throw tls; // not retried: a misconfiguration does not cure itself
        if (events.length > before) {
          attempt = 1;
          alive = Date.now();
        }
        const stale = this.#staleToken(refusal);
        const elapsedSeconds = (Date.now() - alive) / 1000;
        const retryable = worthRetrying(refusal) || stale;
        const wait = retryable ? retryDelay(this.retry, attempt, refusal, { stale, elapsedSeconds }) : null;
        if (wait === null) throw refusal;
        this.#logRetry(attempt, `read ${aggregateId}: broke with ${refusal}; reading on in ${wait.toFixed(3)} s`);
        await bound.sleep(wait);
      }
    }
  }

  /**
   * One attempt of `read`: the events `request` asks for, decoded, onto
   * `events`, but for the first `skip` of version `request.from_version`;
   * on `target`'s stub (#target), whose `sent` moves with each page (a
   * member that answered until it died is marked down as of then).
   */
  async #readInto(events, request, skip, bound, target) {
    let skipping = skip;
    const reader = target.stub;
    const take = (event) => {
      if (target.sent !== null) target.sent = this.routes.now();
      if (skipping > 0 && Number(event.version) === request.from_version) skipping -= 1;
      else events.push(decodeDelivered(event));
    };
    let current = null;
    // A read call, listened to for its whole life (a status after the loop let go is no unhandled 'error').
    const opened = (readCall) => {
      readCall.on('error', () => {});
      current = readCall;
      return readCall;
    };
    const reading = (async () => {
      if (this.pagedReads !== false) {
        try {
          for await (const page of opened(reader.ReadAggregatePages(request))) {
            for (const event of page.events) take(event);
          }
          this.pagedReads = true;
          return;
        } catch (error) {
          if (error.code !== grpc.status.UNIMPLEMENTED || this.pagedReads) throw error;
          this.pagedReads = false; // an older server: remembered for this client's life
        }
      }
      for await (const event of opened(reader.ReadAggregate(request))) take(event);
    })();
    try {
      await bound.race(reading, () => current?.cancel());
    } catch (error) {
      throw asChronicleError(error);
    }
  }

  /**
   * Every committed event matching the filter, in log order: the catch-up
   * first, then live events, without end. `messages` yields
   * { kind: 'event', event }, { kind: 'checkpoint', position } and, once,
   * { kind: 'caught_up', position }. Events arrive from the server in
   * pages (several per message) and are handed out one at a time; the
   * position moves with each event handed out, to the event's own once it
   * is the last of its position (an upcaster may split one stored event
   * into several at one position: until the last is handed out, the
   * position stays before it). A stream ended by UNAVAILABLE (a
   * replica shutting down, a lost connection) or by a CANCELLED we did not
   * ask for (a server that stops cancels the calls it had not started) is
   * reopened after that position, passing over the events of the next one
   * handed out already, so nothing is skipped or repeated (so is one a stale token ended, when the token is a function:
   * the server ends a stream at its JWT's exp), however often and long the
   * server is away: `maxAttempts` (the client's retry policy's, Infinity by
   * default) bounds the reopenings in a row with nothing received, the
   * backoff growing to 2 s. Keep `subscription.position` somewhere durable
   * to resume after a restart (pass it back as `afterPosition`), and
   * `subscription.eventId` beside it (the id of the event seen at that
   * position; pass it back as `afterEventId`): every reopening sends it, and
   * a server whose log no longer holds that event there, or ends below that
   * position (restored from an older copy, failed over to a standby that
   * lost commits), refuses with a
   * LogRewoundError (FAILED_PRECONDITION LOG_REWOUND), as does a live
   * stream whose log goes back under it; it is never retried. Without an
   * id (a position saved alone) the resume is not checked (beyond the log's
   * end it is INVALID_ARGUMENT POSITION_BEYOND_END). Checkpoint and
   * caught-up messages carry `eventId` too. `cancel()` ends it.
   */
  subscribe(
    { aggregateTypes = [], eventTypes = [], aggregateId = '', origin = '' } = {},
    {
      afterPosition = 0,
      afterEventId = '',
      fromEnd = false,
      maxAttempts = this.retry.maxAttempts,
      signal,
      timeoutSeconds,
    } = {},
  ) {
    this.#checkOpen();
    const client = this;
    // position: to resume after (every event at or before it handed out);
    // handed, handedHere: the last event's position and how many of its
    // events were handed out (an upcaster may split one stored event into
    // several at its position: see handOut).
    // eventId: the id of the event seen at `position` (sent when reopening,
    // so that a log gone back is refused); handedId: the last event's.
    const state = {
      position: afterPosition,
      eventId: afterEventId,
      fromEnd,
      call: null,
      cancelled: false,
      handed: afterPosition,
      handedHere: 0,
      handedId: afterEventId,
    };
    const filter = { aggregate_types: aggregateTypes, event_types: eventTypes, aggregate_id: aggregateId, origin };
    const woken = new Signal(); // wakes a loop waiting to reopen: cancelled
    const handshakes = this.#handshakeWatch('subscribe');
    async function* messages() {
      for (let attempt = 1; ; attempt += 1) {
        // pages: true asks for EventPage messages; a server from before
        // pages ignores the field and sends events one per message.
        const request = {
          ...filter,
          after_position: state.position,
          after_event_id: state.fromEnd ? '' : state.eventId,
          from_end: state.fromEnd,
          pages: true,
        };
        // Reopened inside a split event: its pieces handed out already come again first.
        let repeats = state.handed > state.position ? state.handedHere : 0;
        // On any live member with routing (#target): one that died is
        // marked down, and the subscription resumes on another.
        const target = client.#target(client.events);
        state.call = target.stub.Subscribe(request);
        // Listened to for the call's whole life: the status of a call the
        // loop let go of (cancelled below) must not be an unhandled 'error'.
        state.call.on('error', () => {});
        try {
          for await (const message of state.call) {
            attempt = 1;
            state.fromEnd = false;
            handshakes.received();
            if (target.sent !== null) {
              client.#heard(target);
              target.sent = client.routes.now();
            }
            if (message.kind === 'page' || message.kind === 'event') {
              const stored = message.kind === 'page' ? message.page.events : [message.event];
              for (const [index, envelope] of stored.entries()) {
                if (repeats > 0 && Number(envelope.position) === state.handed) {
                  repeats -= 1;
                  continue;
                }
                repeats = 0;
                const event = decodeDelivered(envelope);
                const completes =
                  index === stored.length - 1
                    ? message.completes_position
                    : Number(stored[index + 1].position) > event.position;
                handOut(state, event.position, completes, event.event_id);
                yield { kind: 'event', event };
              }
            } else {
              const mark = message[message.kind];
              complete(state, Number(mark.position), mark.event_id ?? '');
              yield { kind: message.kind, position: state.position, eventId: state.eventId };
            }
          }
          return;
        } catch (error) {
          if (state.cancelled) return;
          if (error instanceof ChronicleError) throw error; // of this client's making (decoding)
          const refusal = asChronicleError(error);
          client.#heard(target, refusal);
          // Says a TLS failure; throws one that lasts.
          await handshakes.failed(refusal, target.address ?? client.#address);
          const stale = client.#staleToken(refusal);
          // What the Python client reopens a subscription after: what a
          // command stream is reopened after (a full server's
          // TOO_MANY_SUBSCRIPTIONS among them, which carries a RetryInfo).
          const resumable = reopenable(refusal) || stale;
          const wait = resumable ? retryDelay(client.retry, attempt, refusal, { stale, maxAttempts }) : null;
          if (wait === null) throw refusal;
          client.#logRetry(
            attempt,
            `subscribe: stream broke with ${refusal} (retry ${attempt}); reopening in ${wait.toFixed(3)} s`,
          );
          await pauseUnless(wait, woken, () => state.cancelled);
          if (state.cancelled) return;
        } finally {
          state.call.cancel();
        }
      }
    }
    // The loop, throwing what stopped it when a signal or a timeout did (cancel() ends it cleanly).
    async function* guarded() {
      try {
        yield* messages();
        if (state.stoppedBy) throw state.stoppedBy;
      } finally {
        client.#streams.delete(subscription);
      }
    }
    const subscription = {
      messages: guarded(),
      get position() {
        return state.position;
      },
      get eventId() {
        return state.eventId;
      },
      cancel() {
        state.cancelled = true;
        client.#streams.delete(subscription);
        state.call?.cancel();
        woken.notify();
      },
      close() {
        subscription.cancel();
      },
    };
    this.#streams.add(subscription);
    bindStream(limitOf({ signal, timeoutSeconds }), (error) => {
      state.stoppedBy = error;
      subscription.cancel();
    });
    return subscription;
  }

  /**
   * The aggregate's state: { aggregate_id, aggregate_type, version, state },
   * the state decoded. Now, or right after version `atVersion`, or as it was
   * at `atTime` (a Date; the version current then is in the result): at most
   * one of the two. Rejects NOT_FOUND AGGREGATE_NOT_FOUND if it has no
   * events (or had none at `atTime`), OUT_OF_RANGE VERSION_NOT_REACHED
   * (`metadata.current_version`) if it has not reached `atVersion`,
   * INVALID_ARGUMENT INVALID_VERSION for an `atVersion` of 0,
   * FAILED_PRECONDITION AGGREGATE_FORGOTTEN if it was forgotten. `minPosition`:
   * read your writes, as for `read`.
   */
  async getAggregate(aggregateId, { atVersion, atTime, minPosition = 0, signal, timeoutSeconds } = {}) {
    if (atVersion != null && atTime != null) throw invalidOption('give atVersion or atTime, not both');
    const request = { aggregate_id: aggregateId, min_position: minPosition };
    if (atVersion != null) request.at_version = atVersion;
    if (atTime != null) {
      const ms = atTime instanceof Date ? atTime.getTime() : NaN;
      if (Number.isNaN(ms)) throw invalidOption('atTime must be a valid Date');
      request.at_time = { seconds: Math.floor(ms / 1000), nanos: (((ms % 1000) + 1000) % 1000) * 1e6 };
    }
    const response = await this.#call(this.events, 'GetAggregate', request, limitOf({ signal, timeoutSeconds }));
    return { ...response, state: unpack(response.state) };
  }

  /**
   * Creates subscription group `name` (needs the admin grant): the events
   * matching the filter, after `afterPosition` (or only new ones with
   * `fromEnd`), shared among the group's consumers. As in the Python
   * client: a count (`maxDeliveryAttempts`, `segments`) of 0 takes the
   * server's default; a duration (in seconds) left undefined or null takes
   * the server's default, and one of 0 is sent as 0 (a `retryBackoffSeconds`
   * of 0 retries at once; an `ackTimeoutSeconds` under 0.01 is
   * BAD_GROUP_SETTING). `maxUnansweredTimeouts`: undefined or null the
   * server's default (3), 0 never cut a consumer that answers nothing.
   * `tenant`: the group is that tenant's, delivering its events alone to
   * its own callers ('': the creator's tenant, if it has one; the server's
   * docs/security.md, "Tenants"). Resolves to the GroupInfo; rejects with ChronicleError (ALREADY_EXISTS
   * GROUP_EXISTS, …).
   */
  async createGroup(
    name,
    {
      aggregateTypes = [],
      eventTypes = [],
      origin = '',
      tenant = '',
      afterPosition = 0,
      fromEnd = false,
      maxDeliveryAttempts = 0,
      retryBackoffSeconds,
      maxRetryBackoffSeconds,
      ackTimeoutSeconds,
      segments = 0,
      maxUnansweredTimeouts,
      signal,
      timeoutSeconds,
    } = {},
  ) {
    const request = {
      name,
      filter: { aggregate_types: aggregateTypes, event_types: eventTypes, origin, tenant },
      after_position: afterPosition,
      from_end: fromEnd,
      max_delivery_attempts: maxDeliveryAttempts,
      segments,
    };
    // null as undefined (the Python client's None): not sent, the server's default.
    if (retryBackoffSeconds != null) request.retry_backoff = duration(retryBackoffSeconds);
    if (maxRetryBackoffSeconds != null) request.max_retry_backoff = duration(maxRetryBackoffSeconds);
    if (ackTimeoutSeconds != null) request.ack_timeout = duration(ackTimeoutSeconds);
    if (maxUnansweredTimeouts != null) request.max_unanswered_timeouts = maxUnansweredTimeouts;
    return (await this.#call(this.groups, 'CreateGroup', request, limitOf({ signal, timeoutSeconds }))).group;
  }

  /** Every group the caller may consume: position, lag, acknowledged, parked, skipped, dismissed, consumers. */
  async listGroups({ signal, timeoutSeconds } = {}) {
    return (await this.#call(this.groups, 'ListGroups', {}, limitOf({ signal, timeoutSeconds }))).groups;
  }

  /**
   * One group, as `listGroups` shows it (the Python client's `groups.get`). One not listed (there is none, or
   * the caller may not consume it) rejects as DeleteGroup would refuse a missing one: NOT_FOUND GROUP_NOT_FOUND.
   */
  async getGroup(name, { signal, timeoutSeconds } = {}) {
    const group = (await this.listGroups({ signal, timeoutSeconds })).find((listed) => listed.name === name);
    if (group !== undefined) return group;
    const missing = new ChronicleError({
      code: grpc.status.NOT_FOUND,
      details: `no subscription group ${JSON.stringify(name)} the caller may consume`,
    });
    missing.reason = REASONS.GROUP_NOT_FOUND;
    missing.metadata = { group: name };
    throw missing;
  }

  /**
   * Changes group `name`'s settings while it is consumed, keeping its
   * position and parked events (the Python client's `groups.update`, the
   * CLI's `chronicle group NAME --set KEY=VALUE`): `settings` names those to
   * change, as `createGroup` does (`maxDeliveryAttempts`,
   * `retryBackoffSeconds`, `maxRetryBackoffSeconds`, `ackTimeoutSeconds`,
   * `maxUnansweredTimeouts` (0: a consumer is never cut for not answering);
   * `segments` only as the group's own count: they are fixed for its life);
   * each one left out (or null) stays. Its consumers take them at their next
   * look at the group. Resolves to the GroupInfo as updated. Takes the admin
   * grant. Rejects INVALID_ARGUMENT NO_SETTING_GIVEN when none is given,
   * SETTING_NOT_UPDATABLE for another segment count, BAD_GROUP_SETTING for a
   * value out of range; NOT_FOUND GROUP_NOT_FOUND if there is no such group;
   * a key that is no setting is refused here (INVALID_OPTION), not dropped.
   */
  async updateGroup(name, settings = {}, { signal, timeoutSeconds } = {}) {
    const request = { name, ...clientSide(() => groupUpdate(settings)) };
    return (await this.#call(this.groups, 'UpdateGroup', request, limitOf({ signal, timeoutSeconds }))).group;
  }

  async deleteGroup(name, { signal, timeoutSeconds } = {}) {
    await this.#call(this.groups, 'DeleteGroup', { name }, limitOf({ signal, timeoutSeconds }));
  }

  /**
   * The group's parked events (delivered `max_delivery_attempts` times and given up) after `afterPosition`, by
   * position (event id within one), every page of them (asked for `pageSize` at a time: the server's `limit`), as
   * `reactions.parked` and `projections.parked` do. `limit`: at most this many (null: all). Pages follow the
   * server's `next_page_token` (empty: the last page): paging by position would pass over the rest of a split
   * event's pieces, which share its position. A server from before page tokens sends none: a full page is then
   * followed by position, and a shorter one is the last. Each is a chronicle.v1.GroupParkedEvent with the proto's
   * field names, `parked_at` a Date; `event_type` '' and `parked_at` null: unknown (parked by a server from before
   * they were kept).
   */
  async listParked(group, { afterPosition = 0, limit = null, pageSize = 100, signal, timeoutSeconds } = {}) {
    const bound = limitOf({ signal, timeoutSeconds });
    const parked = [];
    let after = afterPosition;
    let token = '';
    while (limit === null || parked.length < limit) {
      const size = limit === null ? pageSize : Math.min(pageSize, limit - parked.length);
      const request = { group, after_position: after, limit: size, page_token: token };
      const page = await this.#call(this.groups, 'ListParked', request, bound);
      parked.push(...page.parked.map((event) => ({ ...event, parked_at: date(event.parked_at) })));
      token = page.next_page_token || '';
      if (!token) {
        if (page.parked.length < (size || 100)) break;
        after = page.parked[page.parked.length - 1].position;
      }
    }
    return parked;
  }

  /**
   * Delivers parked events again (none named: all of the group's); resolves to how many. Rejects with
   * NOT_FOUND PARKED_EVENT_NOT_FOUND (the ids in `metadata.event_ids`), none replayed, if one named is not parked.
   */
  async replayParked(group, eventIds = [], { signal, timeoutSeconds } = {}) {
    const request = { group, event_ids: eventIds };
    return (await this.#call(this.groups, 'ReplayParked', request, limitOf({ signal, timeoutSeconds }))).replaying;
  }

  /**
   * Deletes parked events without delivering them again (at least one named; they count as dismissed, not as acknowledged);
   * resolves to how many. Takes the admin grant. All or none: NOT_FOUND PARKED_EVENT_NOT_FOUND (the ids in
   * `metadata.event_ids`), none dismissed, if one named is not parked (as a retry whose first answer was lost finds
   * the ones it dismissed); INVALID_ARGUMENT INVALID_EVENT_ID if none is named or one is no UUID.
   */
  async dismissParked(group, eventIds, { signal, timeoutSeconds } = {}) {
    const request = { group, event_ids: eventIds };
    return (await this.#call(this.groups, 'DismissParked', request, limitOf({ signal, timeoutSeconds }))).dismissed;
  }

  /**
   * Consumes subscription group `group` as `consumer`. `deliveries` yields
   * { event, attempt, replayed, ack(), nack(reason, { action }), park(reason),
   * skip() } (a nack's action: 'retry', the default, 'park' or 'skip'; see
   * docs/subscriptions.md): every event of the
   * group goes to one of its consumers, all events of one aggregate to the
   * same one, in order, the next only once the one before is acked (or
   * parked). Ack or nack each one; a nacked event (or one not acked within
   * the group's ack timeout) comes again after the backoff. A stream ended
   * by what a subscription is reopened after (UNAVAILABLE or a CANCELLED we
   * did not ask for: a server stopping; RESOURCE_EXHAUSTED with a RetryInfo:
   * a server at its --max-subscriptions, TOO_MANY_SUBSCRIPTIONS, or the
   * caller or its tenant at its most, PRINCIPAL_TOO_MANY_SUBSCRIPTIONS,
   * TENANT_TOO_MANY_SUBSCRIPTIONS; ABORTED,
   * CONSUMER_STALLED among them, said to `logger.warn`: this consumer took
   * no deliveries in and acked nothing for the group's ack timeout, and its
   * events went to the others; DEADLINE_EXCEEDED) is opened again, without a bound: after
   * `reconnectDelaySeconds`, doubled
   * for each stream in a row that broke with nothing received, up to the
   * retry policy's `maxBackoffSeconds` (2; or `reconnectDelaySeconds` if
   * longer), never less than the server's RetryInfo delay; so is one a
   * stale token ended, when the token is a function (STALE_TOKEN_ATTEMPTS
   * times in a row without a message at most, or the retry policy's
   * `maxAttempts` when it sets one). `close()` leaves the group: its
   * unacked events go to the other consumers.
   */
  consume(group, consumer, { maxInFlight = 100, reconnectDelaySeconds = 0.5, signal, timeoutSeconds } = {}) {
    this.#checkOpen();
    // stopping: no new deliveries handed out, the loop ends once those out are settled (stop()).
    const state = { closed: false, stopping: false, member: '', stream: null, unsettled: 0 };
    const settled = new Signal(); // wakes a stopping loop: a delivery acked or nacked
    const woken = new Signal(); // wakes a loop waiting to consume again: closed or stopping
    const open = () => {
      // On any live member with routing (#target), as a subscription.
      const target = client.#target(client.groups);
      const stream = target.stub.Consume();
      stream.target = target;
      // Listened to for the stream's whole life: the loop's iterator lets go
      // of the stream when the loop ends, and a status grpc-js emits after
      // that (the cancel below, a server ending a stream being left) would
      // otherwise be an unhandled 'error' event, which ends the process.
      stream.on('error', () => {});
      stream.ended = new Promise((resolve) => stream.once('status', resolve));
      stream.write({ start: { group, consumer, max_in_flight: maxInFlight } });
      state.stream = stream;
      return stream;
    };
    // An ack or nack goes on the stream that delivered the event, and
    // resolves true once written; one for a stream that broke or was left
    // resolves false: its event is delivered again (to this consumer or
    // another).
    const sender = (stream) => (request) =>
      new Promise((resolve) => {
        if (state.closed || stream !== state.stream) return resolve(false);
        stream.write(request, (error) => resolve(!error));
      });
    // A delivery's ack and nack: the first of them counts (settles it); a second answers as the first did.
    const settler = (send) => {
      let done = null;
      return (request) => {
        if (done === null) {
          done = send(request);
          state.unsettled -= 1;
          settled.notify();
        }
        return done;
      };
    };
    const client = this;
    const staleBound = Number.isFinite(this.retry.maxAttempts) ? this.retry.maxAttempts : STALE_TOKEN_ATTEMPTS;
    const mostWait = Math.max(reconnectDelaySeconds, this.retry.maxBackoffSeconds);
    // Waits until every delivery handed out is settled, or `timeoutMs` passed.
    const drained = async (timeoutMs) => {
      const until = Date.now() + timeoutMs;
      while (state.unsettled > 0 && !state.closed && Date.now() < until) await arrivedOrAfter(settled, until - Date.now());
    };
    let drainTimeoutMs = 0;
    const handshakes = this.#handshakeWatch(`group ${group}`);
    async function* deliveries() {
      let stale = 0; // streams in a row a stale token ended, nothing received
      let broken = 0; // streams in a row that broke, nothing received
      while (!state.closed && !state.stopping) {
        let wait = reconnectDelaySeconds;
        const stream = open();
        const send = sender(stream);
        let live = true; // the call has not ended: leaving it ends it gracefully
        try {
          // Not destroyed when the caller leaves the loop: the acks written
          // go out before the call ends (leave).
          for await (const message of stream.iterator({ destroyOnReturn: false })) {
            stale = 0;
            broken = 0;
            handshakes.received();
            if (stream.target.sent !== null) {
              client.#heard(stream.target);
              stream.target.sent = client.routes.now();
            }
            if (message.kind === 'joined') {
              state.member = message.joined.consumer;
              continue;
            }
            for (const delivery of message.deliveries.deliveries) {
              // Left or stopping: what came after is the other consumers' now.
              if (state.closed || state.stopping) return;
              const event = decodeDelivered(delivery.event);
              state.unsettled += 1;
              const settle = settler(send);
              yield {
                event,
                attempt: delivery.attempt,
                replayed: delivery.replayed,
                ack: () => settle({ ack: { event_ids: [event.event_id] } }),
                // action: 'retry' (again after the backoff), 'park' (now), 'skip' (settled unprocessed).
                nack: (reason = '', { action = 'retry' } = {}) =>
                  settle({ nack: { event_ids: [event.event_id], reason, action: nackAction(action) } }),
                park: (reason = '') => settle({ nack: { event_ids: [event.event_id], reason, action: 'NACK_ACTION_PARK' } }),
                skip: () => settle({ nack: { event_ids: [event.event_id], action: 'NACK_ACTION_SKIP' } }),
              };
            }
          }
          live = false;
          return;
        } catch (error) {
          if (error instanceof ChronicleError) throw error; // of this client's making (decoding): the call lives on
          live = false;
          if (state.closed) return;
          const refusal = asChronicleError(error);
          client.#heard(stream.target, refusal);
          await handshakes.failed(refusal, stream.target.address ?? client.#address);
          if (client.#staleToken(refusal)) {
            stale += 1;
            if (stale >= staleBound) throw refusal;
          } else if (!reopenable(refusal)) {
            throw refusal;
          }
          broken += 1;
          const backoff = Math.min(mostWait, reconnectDelaySeconds * 2 ** (broken - 1) || 0);
          wait = Math.max(backoff, serverDelaySeconds(refusal));
          if (refusal.reason === REASONS.CONSUMER_STALLED || refusal.reason === REASONS.CONSUMER_UNRESPONSIVE) {
            // Not the network's doing: this consumer kept a message unread,
            // and answered nothing, for the group's ack timeout (a handler
            // that held the loop up over it), or took its deliveries in and
            // answered none for the group's max_unanswered_timeouts ack
            // timeouts in a row. Said at once, as a warning.
            client.logger?.warn(
              `group ${group}: ${refusal}; consuming again in ${wait.toFixed(3)} s (iterate the deliveries ` +
                'without holding the loop up, ack sooner, or give the group a longer ackTimeoutSeconds)',
            );
          } else {
            client.#logRetry(
              broken,
              `group ${group}: stream broke with ${refusal} (retry ${broken}); consuming again in ${wait.toFixed(3)} s`,
            );
          }
        } finally {
          if (live && state.stopping) await drained(drainTimeoutMs);
          if (state.stream === stream) state.stream = null;
          if (live) await leave(stream);
          else stream.cancel();
        }
        await pauseUnless(wait, woken, () => state.closed || state.stopping);
      }
    }
    // The loop, throwing what stopped it when a signal or a timeout did (close() and stop() end it cleanly).
    async function* guarded() {
      try {
        yield* deliveries();
        if (state.stoppedBy) throw state.stoppedBy;
      } finally {
        client.#streams.delete(consumerHandle);
      }
    }
    const consumerHandle = {
      deliveries: guarded(),
      get member() {
        return state.member;
      },
      /** Leaves the group at once; resolves once the server ended the stream (the acks written counted). */
      close() {
        state.closed = true;
        client.#streams.delete(consumerHandle);
        settled.notify();
        woken.notify();
        const stream = state.stream;
        return stream === null ? Promise.resolve() : leave(stream);
      },
      /**
       * Stops gracefully: no delivery is handed out any more (the loop ends
       * at its next one, or now if it waits), those handed out may still be
       * acked or nacked; once all are (or after `timeoutSeconds`), the
       * consumer leaves as close() does. Resolves once it left.
       */
      async stop({ timeoutSeconds = 30 } = {}) {
        if (state.closed) return;
        state.stopping = true;
        woken.notify();
        drainTimeoutMs = timeoutSeconds * 1000;
        await drained(drainTimeoutMs);
        await consumerHandle.close();
      },
    };
    this.#streams.add(consumerHandle);
    bindStream(limitOf({ signal, timeoutSeconds }), (error) => {
      state.stoppedBy = error;
      consumerHandle.close();
    });
    return consumerHandle;
  }

  /**
   * Closes the client: every subscription, group consumer and command
   * stream still open ends (their loops return, without an error: a
   * consumer leaves its group, its acks written counted), and every call
   * made after rejects FAILED_PRECONDITION CLIENT_CLOSED. Resolves once the
   * consumers left.
   */
  close() {
    if (this.#closed) return Promise.resolve();
    this.#closed = true;
    const ending = [...this.#streams].map((stream) => stream.close());
    this.#streams.clear();
    this.routes?.close();
    this.commands.close();
    this.events.close();
    this.groups.close();
    this.reactionService.close();
    this.projectionService.close();
    for (const { channel, timer } of this.#retiring) {
      clearTimeout(timer);
      channel.close();
    }
    this.#retiring.clear();
    return Promise.all(ending).then(() => undefined);
  }
}

/**
 * An expected version as sent: a non-negative safe integer, a BigInt or a
 * decimal string (0: the aggregate must not exist yet). Anything else
 * (-1, 1.5, 'abc') is refused, not sent as 0 or 1 as protobufjs would.
 */
function versionExpected(version) {
  const exact =
    (Number.isSafeInteger(version) && version >= 0) ||
    (typeof version === 'bigint' && version >= 0n && version < 2n ** 64n) ||
    (typeof version === 'string' && /^\d+$/.test(version) && BigInt(version) < 2n ** 64n);
  if (!exact) {
    throw new Problem(
      'INVALID_EXPECTED_VERSION',
      `expectedVersion: ${String(version)} is not a version (a whole number, 0 or more; 0: a new aggregate)`,
      { field: 'expected_version' },
    );
  }
  return typeof version === 'number' ? version : String(version);
}

function duration(seconds) {
  const whole = Math.floor(seconds);
  return { seconds: whole, nanos: Math.round((seconds - whole) * 1e9) };
}

// UpdateGroupRequest's settings, by the names createGroup takes them under.
const GROUP_COUNTS = {
  maxDeliveryAttempts: 'max_delivery_attempts',
  segments: 'segments',
  maxUnansweredTimeouts: 'max_unanswered_timeouts',
};
const GROUP_DURATIONS = {
  retryBackoffSeconds: 'retry_backoff',
  maxRetryBackoffSeconds: 'max_retry_backoff',
  ackTimeoutSeconds: 'ack_timeout',
};

/**
 * The settings of an UpdateGroupRequest: each given one set (a count of 0
 * too: the field's presence is what the server reads), each left out or null
 * unset. A key that is no setting (a typo, the filter) throws a TypeError:
 * dropping it would send an update that changes something else, or nothing.
 */
function groupUpdate(settings) {
  if (settings === null || typeof settings !== 'object') {
    throw new TypeError('updateGroup: settings must be an object, e.g. { ackTimeoutSeconds: 30 }');
  }
  const request = {};
  for (const [key, value] of Object.entries(settings)) {
    if (value === undefined || value === null) continue;
    if (Object.hasOwn(GROUP_COUNTS, key)) {
      if (!(Number.isInteger(value) && value >= 0)) throw new RangeError(`updateGroup: ${key} must be a whole number`);
      request[GROUP_COUNTS[key]] = value;
    } else if (Object.hasOwn(GROUP_DURATIONS, key)) {
      if (!(typeof value === 'number' && value >= 0)) {
        throw new RangeError(`updateGroup: ${key} must be seconds, 0 or more`);
      }
      request[GROUP_DURATIONS[key]] = duration(value);
    } else {
      const known = [...Object.keys(GROUP_COUNTS), ...Object.keys(GROUP_DURATIONS)].join(', ');
      throw new TypeError(`updateGroup: ${JSON.stringify(key)} is no setting an update changes; these are: ${known}`);
    }
  }
  return request;
}

const NACK_ACTIONS = { retry: 'NACK_ACTION_RETRY', park: 'NACK_ACTION_PARK', skip: 'NACK_ACTION_SKIP' };

// A group delivery's nack action, as the proto spells it; a misspelt one is
// the caller's mistake, said here rather than taken as a retry.
function nackAction(action) {
  const known = Object.hasOwn(NACK_ACTIONS, action) ? NACK_ACTIONS[action] : undefined;
  if (known === undefined) throw invalidOption(`a nack's action is 'retry', 'park' or 'skip', not ${JSON.stringify(action)}`);
  return known;
}

function decodeEvent(event) {
  return { ...event, payload: unpack(event.payload) };
}

/**
 * A subscription's `state` once an event at `position` is handed out:
 * `completes`, the server said (or the next event's higher position shows)
 * that it is the last of its position. An upcaster may split one stored
 * event into several, all at its position; a consumer that saved
 * `position` after the first and died on the second would skip it when
 * resumed. So `state.position` moves to an event's position only with the
 * last of it (an event of a higher position, or a checkpoint, also shows
 * the one before complete).
 */
function handOut(state, position, completes, eventId) {
  if (position !== state.handed) {
    complete(state, state.handed, state.handedId);
    state.handed = position;
    state.handedHere = 0;
  }
  state.handedHere += 1;
  state.handedId = eventId;
  if (completes) complete(state, position, eventId);
}

/**
 * Every event at or before `position` handed out: resume after it, where
 * the event `eventId` was seen ('' unknown: the resume is not checked).
 */
function complete(state, position, eventId) {
  if (position > state.position || (position === state.position && eventId)) {
    state.position = position;
    state.eventId = eventId;
  }
}

/**
 * A streamed event decoded; one whose payload does not decode (bytes that
 * are not the message its type names) is a ChronicleError INTERNAL
 * UNDECODABLE_EVENT naming it, not a bare protobufjs error.
 */
function decodeDelivered(event) {
  try {
    return decodeEvent(event);
  } catch (error) {
    const failure = clientError(
      'INTERNAL',
      'UNDECODABLE_EVENT',
      `event ${event.event_id} (${event.payload?.type_url}) does not decode: ${error.message}`,
      { event_id: event.event_id, event_type: event.event_type },
    );
    failure.cause = error;
    throw failure;
  }
}

/**
 * Calls `stop(error)` when `limit`'s signal aborts or its deadline passes
 * (a stream's whole life bounded), with the CANCELLED or DEADLINE_EXCEEDED
 * ChronicleError. The timer does not keep the process alive.
 */
function bindStream(limit, stop) {
  const fire = () => stop(limit.stopped());
  if (limit.signal) {
    if (limit.signal.aborted) return fire();
    limit.signal.addEventListener('abort', fire, { once: true });
  }
  if (limit.deadline !== null) {
    setTimeout(() => {
      limit.expired = true; // the timer may fire a millisecond before Date.now() reaches the deadline
      fire();
    }, limit.remainingMs()).unref();
  }
}

/**
 * A command stream's results (`stream`: { results, close }) bounded by
 * `limit`: when its signal aborts or its deadline passes, the stream is
 * closed (its call cancelled, the commands taken and not answered left so)
 * and the loop throws CANCELLED or DEADLINE_EXCEEDED, at once, not after
 * the reopenings the retry policy allows.
 */
async function* boundedStream(stream, limit) {
  limit.check();
  let stoppedBy = null;
  bindStream(limit, (error) => {
    stoppedBy = error;
    stream.close();
  });
  try {
    for await (const result of stream.results) {
      if (stoppedBy !== null) break;
      yield result;
    }
    if (stoppedBy !== null) throw stoppedBy;
  } finally {
    stream.close();
  }
}

/** A SubmitResponse as `submit` resolves to it: its events decoded, and the last one's position. */
/** `call`'s result; a ChronicleError it rejects with names the command ids sent (`commandIds`). */
async function naming(commandIds, call) {
  try {
    return await call;
  } catch (error) {
    if (error instanceof ChronicleError) error.commandIds = commandIds;
    throw error;
  }
}

function submitted(commandId, response) {
  const events = response.events.map(decodeEvent);
  return { command_id: commandId, ...response, events, position: Math.max(0, ...events.map((e) => e.position)) };
}

/** A refusal that came as a command's result (CommandError) instead of a call's status. */
function commandError(error) {
  const refusal = new ChronicleError({ code: error.code, details: error.message });
  refusal.reason = error.reason || refusal.code;
  refusal.metadata = error.metadata;
  refusal.fieldViolations = error.field_violations.map((v) => ({ field: v.field, description: v.description }));
  if (error.retry_after) {
    refusal.retryDelaySeconds = Number(error.retry_after.seconds) + error.retry_after.nanos / 1e9;
  }
  return refusal;
}

/** A command stream's answers that do not match what was sent. */
function protocolError(message) {
  const error = new ChronicleError({ code: grpc.status.INTERNAL, details: message });
  error.reason = 'STREAM_PROTOCOL_ERROR';
  return error;
}

/** Pending commands as SubmitPages: in order, each at most PAGE_BYTES of requests unless one alone is more. */
function pagesOf(sent) {
  const pages = [];
  let page = null;
  let bytes = 0;
  for (const one of sent) {
    one.size ??= SubmitRequest.encode(SubmitRequest.fromObject(one.request)).len + FRAMING_BYTES;
    if (page === null || (page.requests.length > 0 && bytes + one.size > PAGE_BYTES)) {
      page = { requests: [] };
      pages.push(page);
      bytes = 0;
    }
    page.requests.push(one.request);
    bytes += one.size;
  }
  return pages;
}
