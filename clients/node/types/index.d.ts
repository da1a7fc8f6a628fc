// Types of @chronicle/client's public API (src/chronicle.js), written by hand:
// the package is JavaScript, loading its .proto files at run time. Field
// names of messages are the .proto's (snake_case); 64-bit integers of the
// API (versions, positions) are numbers, a payload's as setInt64Decoding says.
// test/package.test.js checks a typed usage file with `tsc --strict`.

/// <reference types="node" />

import type * as grpcJs from '@grpc/grpc-js';

/** The client's own @grpc/grpc-js: make ChannelCredentials with this one. */
export declare const grpc: typeof grpcJs;

/** Reasons of refusals this client makes itself, before anything is sent. */
export declare const CLIENT_REASONS: Readonly<{
  UNKNOWN_MESSAGE_TYPE: 'UNKNOWN_MESSAGE_TYPE';
  UNKNOWN_FIELD: 'UNKNOWN_FIELD';
  INVALID_FIELD: 'INVALID_FIELD';
  INVALID_EXPECTED_VERSION: 'INVALID_EXPECTED_VERSION';
  INVALID_OPTION: 'INVALID_OPTION';
  INVALID_CREDENTIALS: 'INVALID_CREDENTIALS';
  PROTO_NOT_FOUND: 'PROTO_NOT_FOUND';
  PROTO_INVALID: 'PROTO_INVALID';
  INT64_PRECISION: 'INT64_PRECISION';
}>;
export type ClientReason = (typeof CLIENT_REASONS)[keyof typeof CLIENT_REASONS];

/** gRPC status code names, as ChronicleError.code carries them. */
export type StatusCodeName =
  | 'OK' | 'CANCELLED' | 'UNKNOWN' | 'INVALID_ARGUMENT' | 'DEADLINE_EXCEEDED' | 'NOT_FOUND'
  | 'ALREADY_EXISTS' | 'PERMISSION_DENIED' | 'RESOURCE_EXHAUSTED' | 'FAILED_PRECONDITION' | 'ABORTED'
  | 'OUT_OF_RANGE' | 'UNIMPLEMENTED' | 'INTERNAL' | 'UNAVAILABLE' | 'DATA_LOSS' | 'UNAUTHENTICATED';

/**
 * An ErrorInfo reason: one of the client's own, a status code's name (no
 * ErrorInfo sent), or any reason the server documents (with each RPC in the
 * repository's protos/chronicle/v1, and in the methods' JSDoc here: e.g.
 * AGGREGATE_FORGOTTEN, TENANT_SHREDDED, DOCUMENT_FORGOTTEN,
 * TENANT_RATE_LIMITED, TENANT_TOO_MANY_REQUESTS, UNKNOWN_SIGNING_KEY; a
 * plugin's refusals bring reasons of their own, hence string).
 */
export type Reason =
  | ClientReason
  | StatusCodeName
  | 'STREAM_PROTOCOL_ERROR'
  /** A stream's TLS handshakes failed for the retry window (metadata: address, tls_error). */
  | 'TLS_HANDSHAKE_FAILED'
  | (string & {});

export declare class ChronicleError extends Error {
  constructor(grpcError: { code: number; details?: string; message?: string; metadata?: grpcJs.Metadata });
  readonly name: 'ChronicleError' | 'LogRewoundError';
  code: StatusCodeName | string;
  reason: Reason;
  metadata: Record<string, string>;
  fieldViolations: { field: string; description: string }[];
  retryDelaySeconds: number | null;
  /** The command ids sent (submit, submitBatch), to send again after an unknown outcome. */
  commandIds: string[];
  cause: unknown;
  toString(): string;
}

/**
 * FAILED_PRECONDITION LOG_REWOUND: the log went back under a subscription
 * (a restore, a failover that lost commits); `metadata.position` and
 * `metadata.log_head`. Never retried: re-sync deliberately.
 */
export declare class LogRewoundError extends ChronicleError {
  readonly name: 'LogRewoundError';
}

/** A plain object of a message's fields, by .proto name or camelCase. */
export type Fields = Record<string, unknown>;
/** A decoded payload: its type name and fields; `{ '@type', value }` for a type no loaded .proto declares. */
export type Payload = { '@type': string; [field: string]: unknown };
export interface Any {
  type_url: string;
  value: Buffer | Uint8Array;
}
export interface Timestamp {
  seconds: number;
  nanos: number;
}

export declare function pack(typeName: string, fields: Fields): Any;
export declare function unpack(any: Any | null | undefined): Payload | null;
export declare function loadProtos(options: { includeDirs?: string[]; files?: string[] }): void;
export declare function setInt64Decoding(mode: 'number' | 'bigint' | 'string'): void;

export interface RetryOptions {
  maxAttempts?: number;
  retryForSeconds?: number | null;
  initialBackoffSeconds?: number;
  maxBackoffSeconds?: number;
  multiplier?: number;
  jitter?: number;
}
export declare const DEFAULT_RETRY: Readonly<Required<RetryOptions>>;
export declare const STALE_TOKEN_ATTEMPTS: number;
export declare function retryPolicy(options?: RetryOptions): Required<RetryOptions>;

export declare const DEFAULT_ORIGIN: '@chronicle/client';
export declare const DEFAULT_KEEPALIVE_SECONDS: number;
export declare const DEFAULT_KEEPALIVE_TIMEOUT_SECONDS: number;
export declare function keepaliveOptions(seconds: number | null, timeoutSeconds: number): Record<string, number>;
export declare function reconnectOptions(seconds: number): Record<string, number>;
export declare function crc32(bytes: Uint8Array): number;
export declare function partitionOf(aggregateId: string, partitionCount: number): number;

/** PEM contents (not paths): `{ ca }` for TLS, `{ ca, cert, key }` for mutual TLS. */
export interface PemCredentials {
  ca?: string | Buffer;
  cert?: string | Buffer;
  key?: string | Buffer;
}
export type Token = string | (() => string | Promise<string>);
export interface Logger {
  info(message: string): void;
  warn(message: string): void;
}

export interface ClientOptions {
  origin?: string;
  userId?: string;
  routing?: boolean;
  credentials?: grpcJs.ChannelCredentials | PemCredentials | null;
  token?: Token | null;
  keepaliveSeconds?: number | null;
  keepaliveTimeoutSeconds?: number;
  attemptTimeoutSeconds?: number | null;
  retry?: RetryOptions;
  logger?: Logger | null;
}

/**
 * A call's bounds: an AbortSignal, and seconds for the whole call (its
 * retries and the waits between them included; null: none). Stopped, it
 * rejects at once with CANCELLED or DEADLINE_EXCEEDED.
 */
export interface CallOptions {
  signal?: AbortSignal | null;
  timeoutSeconds?: number | null;
}

/** A 64-bit integer as sent: a safe integer, a BigInt or a decimal string. */
export type Int64 = number | bigint | string;

export interface SubmitOptions extends CallOptions {
  commandId?: string;
  expectedVersion?: Int64;
  metadata?: Record<string, string>;
  dryRun?: boolean;
  correlationId?: string;
  causationId?: string;
}

export interface Event {
  event_id: string;
  aggregate_id: string;
  aggregate_type: string;
  version: number;
  position: number;
  event_type: string;
  payload: Payload | null;
  timestamp: Timestamp | null;
  origin: string;
  user_id: string;
  command_id: string;
  correlation_id: string;
  causation_id: string;
  schema_version: number;
  metadata: Record<string, string>;
  redacted: boolean;
  deleted: boolean;
}

export interface SubmitResult {
  command_id: string;
  version: number;
  replayed: boolean;
  events: Event[];
  position: number;
  [field: string]: unknown;
}

export interface CommandDescription extends Omit<SubmitOptions, 'dryRun' | 'signal' | 'timeoutSeconds'> {
  aggregateId: string;
  typeName: string;
  fields: Fields;
}

/** A command stream's answer, in the order taken: `submitted` when it ran, `error` when refused. */
export interface StreamResult {
  command: CommandDescription;
  command_id: string;
  submitted: SubmitResult | null;
  error: ChronicleError | null;
}
export interface BatchResult {
  version: number;
  replayed: boolean;
  results: SubmitResult[];
  position: number;
}

export interface ReadOptions extends CallOptions {
  fromVersion?: number;
  eventTypes?: string[];
  limit?: number | null;
  backwards?: boolean;
  origin?: string;
  minPosition?: number;
}

export type SubscriptionMessage =
  | { kind: 'event'; event: Event }
  | { kind: 'checkpoint' | 'caught_up'; position: number; eventId: string };

export interface Subscription {
  messages: AsyncIterable<SubscriptionMessage>;
  readonly position: number;
  /** The id of the event seen at `position` ('' unknown): keep it beside it, pass it back as `afterEventId`. */
  readonly eventId: string;
  cancel(): void;
  close(): void;
}

export interface Aggregate {
  aggregate_id: string;
  aggregate_type: string;
  version: number;
  state: Payload | null;
  [field: string]: unknown;
}

export interface GroupOptions extends CallOptions {
  aggregateTypes?: string[];
  eventTypes?: string[];
  origin?: string;
  /** The group's tenant ('': the creator's, if it has one). */
  tenant?: string;
  afterPosition?: number;
  fromEnd?: boolean;
  maxDeliveryAttempts?: number;
  retryBackoffSeconds?: number | null;
  maxRetryBackoffSeconds?: number | null;
  ackTimeoutSeconds?: number | null;
  segments?: number;
  /** Ack timeouts in a row without an answer before a consumer is cut; 0: never; unset: the server's 3. */
  maxUnansweredTimeouts?: number | null;
}
/** What `updateGroup` changes: each one given; left out or null, it stays. */
export interface GroupSettings {
  maxDeliveryAttempts?: number | null;
  retryBackoffSeconds?: number | null;
  maxRetryBackoffSeconds?: number | null;
  ackTimeoutSeconds?: number | null;
  /** Ack timeouts in a row, unanswered, after which a consumer is cut (0: never). */
  maxUnansweredTimeouts?: number | null;
  /** Only the group's own count: the segments are fixed for its life (else SETTING_NOT_UPDATABLE). */
  segments?: number | null;
}
export interface GroupInfo {
  name: string;
  position: number;
  lag: number;
  /** Events acknowledged, each once. */
  acknowledged: number;
  /** Events parked now. */
  parked: number;
  /** Events its consumers skipped (nack action SKIP), each once. */
  skipped: number;
  /** Parked events an operator dismissed, each once. */
  dismissed: number;
  /** Ack timeouts in a row without an answer before a consumer is cut (CONSUMER_UNRESPONSIVE); 0: never. */
  max_unanswered_timeouts: number;
  [field: string]: unknown;
}
export interface Delivery {
  event: Event;
  attempt: number;
  replayed: boolean;
  /** Each resolves true once written, false when the stream that delivered it is gone (it comes again). */
  ack(): Promise<boolean>;
  nack(reason?: string, options?: { action?: 'retry' | 'park' | 'skip' }): Promise<boolean>;
  park(reason?: string): Promise<boolean>;
  skip(): Promise<boolean>;
}
export interface Consumer {
  deliveries: AsyncIterable<Delivery>;
  readonly member: string;
  close(): Promise<void>;
  stop(options?: { timeoutSeconds?: number }): Promise<void>;
}

/** An event a subscription group parked (chronicle.v1.GroupParkedEvent). */
export interface GroupParkedEvent {
  event_id: string;
  position: number;
  aggregate_id: string;
  attempts: number;
  reason: string;
  replaying: boolean;
  /** The event's type; '' if unknown (parked by a server from before it was kept). */
  event_type: string;
  /** When it was parked; null if unknown (parked by a server from before it was kept). */
  parked_at: Date | null;
}
export interface ParkedCommand {
  command_id: string;
  command: Any;
  [field: string]: unknown;
}
export interface ReplayOutcome {
  accepted: boolean;
  command_id: string;
  reason: string;
  message: string;
}
export interface ReactionStatus {
  name: string;
  /** Deadlines its processes have pending (0 from older servers). */
  deadlines?: number;
  /** When the soonest of them is due; null when none is. */
  next_deadline?: Date | null;
  /** Deadlines of its processes fired on the server that answered since it started (0 from older servers). */
  deadlines_fired?: number;
  [field: string]: unknown;
}
export declare function reactionStatus(status: Record<string, unknown>): ReactionStatus;
export declare class Reactions {
  list(options?: CallOptions): Promise<ReactionStatus[]>;
  get(name: string, options?: CallOptions): Promise<ReactionStatus>;
  parked(reaction: string, options?: { pageSize?: number } & CallOptions): AsyncIterable<ParkedCommand>;
  replay(reaction: string, commandId: string, options?: CallOptions): Promise<ReplayOutcome>;
  dismiss(reaction: string, commandId: string, options?: CallOptions): Promise<unknown>;
  replayAll(reaction: string, options?: { reason?: string } & CallOptions): Promise<{ accepted: number; refused: number }>;
  dismissAll(reaction: string, options?: { reason?: string } & CallOptions): Promise<number>;
  dropProcessState(reaction: string, stateKey: string, options?: CallOptions): Promise<unknown>;
  dropProcessStates(reaction: string, stateKeys: string[], options?: CallOptions): Promise<number>;
  processState(reaction: string, stateKey: string, options?: CallOptions): Promise<ProcessState & { position: number }>;
  processStates(
    reaction: string,
    options?: { prefix?: string; pageSize?: number } & CallOptions,
  ): AsyncIterable<ProcessState>;
}

/** What a reaction keeps for one process (chronicle.v1.StoredProcessState). */
export interface ProcessState {
  state_key: string;
  state: Any;
  state_type: string;
  /** The state as JSON through the server's plugins; '' for a type the reaction no longer knows. */
  state_json: string;
  subjects: string[];
  /** Its pending deadlines, soonest first. */
  deadlines: { name: string; due: Date | null }[];
  /** The commit time of the first and of the last event that changed it (null from older servers). */
  started: Date | null;
  updated: Date | null;
}

export interface ProjectionStatus {
  name: string;
  position: number;
  [field: string]: unknown;
}
export interface ProjectionDocument {
  key: string;
  document: Payload | null;
  position: number;
}
export declare function projectionStatus(status: Record<string, unknown>): ProjectionStatus;
export declare class Projections {
  document(projection: string, key: string, options?: { minPosition?: number } & CallOptions): Promise<ProjectionDocument>;
  documentsByKeys(
    projection: string,
    keys: Iterable<string>,
    options?: { minPosition?: number } & CallOptions,
  ): Promise<{ documents: Map<string, ProjectionDocument>; missing: string[]; position: number }>;
  documents(
    projection: string,
    options?: { keyPrefix?: string; pageSize?: number; descending?: boolean; minPosition?: number } & CallOptions,
  ): AsyncIterable<ProjectionDocument>;
  count(
    projection: string,
    options?: { keyPrefix?: string; limit?: number; minPosition?: number } & CallOptions,
  ): Promise<{ count: number; more: boolean; position: number }>;
  get(name: string, options?: CallOptions): Promise<ProjectionStatus>;
  list(options?: CallOptions): Promise<ProjectionStatus[]>;
  parked(projection: string, options?: { pageSize?: number } & CallOptions): AsyncIterable<Record<string, unknown>>;
  skip(projection: string, position: number, options?: CallOptions): Promise<Record<string, unknown>>;
  rebuild(name: string, options?: CallOptions): Promise<number>;
  orphaned(options?: CallOptions): Promise<{ name: string; position: number }[]>;
  delete(name: string, options?: CallOptions): Promise<number>;
}

export declare const services: Record<
  | 'CommandService'
  | 'EventService'
  | 'ClusterService'
  | 'SubscriptionGroupService'
  | 'ReactionService'
  | 'ProjectionService',
  grpcJs.ServiceDefinition
>;

export declare class ChronicleClient {
  constructor(address: string, options?: ClientOptions);
  readonly origin: string;
  readonly userId: string;
  readonly reactions: Reactions;
  readonly projections: Projections;
  submit(aggregateId: string, typeName: string, fields: Fields, options?: SubmitOptions): Promise<SubmitResult>;
  submitBatch(commands: CommandDescription[], options?: { dryRun?: boolean } & CallOptions): Promise<BatchResult>;
  submitStream(
    commands: Iterable<CommandDescription> | AsyncIterable<CommandDescription>,
    options?: { dryRun?: boolean; window?: number; maxAttempts?: number; renewAfterSeconds?: number } & CallOptions,
  ): AsyncIterable<StreamResult>;
  read(aggregateId: string, options?: ReadOptions): Promise<Event[]>;
  subscribe(
    filter?: { aggregateTypes?: string[]; eventTypes?: string[]; aggregateId?: string; origin?: string },
    options?: { afterPosition?: number; afterEventId?: string; fromEnd?: boolean; maxAttempts?: number } & CallOptions,
  ): Subscription;
  getAggregate(
    aggregateId: string,
    options?: { atVersion?: number; atTime?: Date; minPosition?: number } & CallOptions,
  ): Promise<Aggregate>;
  createGroup(name: string, options?: GroupOptions): Promise<GroupInfo>;
  listGroups(options?: CallOptions): Promise<GroupInfo[]>;
  getGroup(name: string, options?: CallOptions): Promise<GroupInfo>;
  updateGroup(name: string, settings: GroupSettings, options?: CallOptions): Promise<GroupInfo>;
  deleteGroup(name: string, options?: CallOptions): Promise<unknown>;
  listParked(
    group: string,
    options?: { afterPosition?: number; limit?: number | null; pageSize?: number } & CallOptions,
  ): Promise<GroupParkedEvent[]>;
  replayParked(group: string, eventIds?: string[], options?: CallOptions): Promise<number>;
  dismissParked(group: string, eventIds: string[], options?: CallOptions): Promise<number>;
  consume(
    group: string,
    consumer: string,
    options?: { maxInFlight?: number; reconnectDelaySeconds?: number } & CallOptions,
  ): Consumer;
  close(): void;
}
