"""Every SQL statement of the PostgreSQL store, in one place.

Parameters are ``$n`` and sent as text (bytes as binary bytea), so each
statement casts what it needs (``$1::bigint``). Statements with a name are
prepared once per connection: PostgreSQL parses and plans them once.
Identifiers are constants of this module; values are always parameters.

Positions and subscriptions. A position from a sequence is handed out at
insert but becomes visible at commit, and transactions commit in another
order than they insert, so a reader at "last position seen" could skip an
event that commits later with a lower position. Chronicle avoids that with
commit-ordered positions under a lock: an append takes positions from the
one-row table ``log_head`` with ``UPDATE … RETURNING``, whose row lock it
then holds until its transaction ends. The next append cannot get a
position until the previous one has committed (or rolled back, giving its
positions back), so positions become visible strictly in order and a reader
never skips. The lock is taken as late as possible (after the command
records and claims) and held for one insert and the commit; group commit
(many aggregates' appends in one statement) shares it among many commands.

Concurrency per aggregate is the unique key ``(aggregate_id, version)``:
whichever replica inserts a version first wins; the other's statement fails
and becomes ``ConcurrencyConflict``.

Lock order. Operations that lock rows of several tables take them in one
order, so that two of them wait for each other instead of deadlocking:
command records, in command id order (``commands_json`` sorts them, for two
batches carrying the same retried commands); an aggregate's data key row;
its claims, in (scope, value) order; the position lock (``log_head``) and
the events; its snapshots; documents; parked events. An append (command
records, claims, position lock, events), a deletion (LOCK_CLAIMS_OF_AGGREGATE
first), a forget (command records, audit entries, key, claims, snapshots,
documents, parked events of projections and groups) and an
overwriting import's removal follow it; tests/integration/test_lock_order.py
holds each pair of them to it by pausing one's transaction after each of
its statements while the other runs. Subscription groups have an order of
their own (lease members, leases, the group's segments: groups.py).
"""

from __future__ import annotations

import functools

from service.store.encryption import CLAIMS_KEY_PREFIX, ERASED_FINGERPRINT, PROJECTION_KEY_PREFIX
from service.store.master_keys import TENANT_OWNED_MARK
from service.store.records import MAX_OTHER_SUBJECTS, PARKED_COMMAND_TYPE, TOMBSTONE_EVENT_TYPE
from service.store.sql_common import COMMAND_FIELDS, GROUP_FIELDS, PARKED_FIELDS

# SQLSTATEs our own statements raise (chronicle.refuse, migration 0009).
VERSION_MOVED = "CH001"  # an aggregate is not at the version the append expected
CLAIM_HELD = "CH002"  # a claimed value is held by another aggregate (message: the claim's index)
LEASE_LOST = "CH003"  # a fencing token is no longer current: its lease changed holder
SUBJECTS_FORGOTTEN = "CH004"  # documents name forgotten aggregates (message: their ids, one per line)
IMPORT_REFUSED = "CH005"  # an imported record does not fit (message: "REASON index [holder]")
PARKED_MISSING = "CH006"  # a parked event to dismiss is not parked (message: the group)

EVENTS_VERSION_KEY = "events_aggregate_version_key"
COMMANDS_KEY = "commands_pkey"

_MICROS = "(extract(epoch FROM {}) * 1000000)::bigint"
_AT = "'epoch'::timestamptz + {} * interval '1 microsecond'"

# sql_common.EVENT_FIELDS, converted where SQL is cheaper than Python: ids as
# text, times as microseconds, the usual empty metadata as NULL.
EVENT_COLUMNS = (
    "event_id::text, aggregate_id, aggregate_type, version, position, event_type, schema_version, payload, "
    + _MICROS.format("recorded_at")
    + ", command_id, user_id, origin, correlation_id, causation_id, NULLIF(metadata, '{}'::jsonb)"
)
COMMAND_COLUMNS = (
    ", ".join(COMMAND_FIELDS)
    .replace("recorded_at_us", _MICROS.format("recorded_at"))
    .replace("issued_at_us", _MICROS.format("issued_at"))
)
AUDIT_COLUMNS = (
    _MICROS.format("recorded_at")
    + ", command_id, command_type, aggregate_id, principal, user_id, origin, reason, message, outcome,"
    " dry_run, peer, occurrences"
)
SNAPSHOT_COLUMNS = "aggregate_id, aggregate_type, version, state_type, schema_version, state"

# -- appends --------------------------------------------------------------
#
# A batch of appends (one or many aggregates) is ONE statement: one round
# trip, one WAL flush, one acquisition of the position lock, however many
# appends it carries. The batch travels as two JSON documents (commands,
# events) expanded by jsonb_to_recordset: dumping one string costs the client
# next to nothing, where arrays of a dozen columns cost it per value. Bytes
# go as hex, times as microseconds since the epoch (exact both ways).
#
# Order inside the statement: the command records first (``head`` reads
# ``commands`` to make sure of it), so that a command id racing its own retry
# is settled before the position lock is taken; then positions from log_head,
# whose row lock is held to the commit; then the events, each inserted only
# if its aggregate is at the expected version (version ``expected`` exists,
# or expected is 0; ``expected + 1`` onward are guarded by the unique key).
# That check is a scalar subquery, which PostgreSQL runs per row as an index
# probe: written as EXISTS, it became a semi-join that read the whole events
# table once per batch whenever the table looked small to the planner (below
# ~10,000 rows: a new deployment was slowest). tests/integration/
# test_postgres_plans.py holds it to the index.
# If any event was left out, the statement refuses itself (VERSION_MOVED):
# nothing of it commits.
_INSERT_COMMANDS_FROM_JSON = (
    "INSERT INTO chronicle.commands (command_id, aggregate_id, command_type, fingerprint, first_version,"
    " last_version, rejection, principal, user_id, origin, recorded_at, issued_at)"
    " SELECT c.id, c.a, c.t, decode(c.f, 'hex'), c.first, c.last, c.rejection, c.p, c.u, c.o, "
    + _AT.format("c.at")
    + ", "
    + _AT.format("NULLIF(c.iss, 0)")
    + " FROM jsonb_to_recordset($1::jsonb) AS c(id text, a text, t text, f text, first bigint, last bigint,"
    " rejection jsonb, p text, u text, o text, at bigint, iss bigint)"
)


def _append_batch(json_copy: bool) -> str:
    """The batch append; with ``json_copy`` it also writes each event's
    payload as JSON (``j``, computed by the store) into ``payload_json``."""
    json_column, json_value, json_field = (", payload_json", ", e.j", ", j jsonb") if json_copy else ("", "", "")
    return (
        "WITH commands AS (" + _INSERT_COMMANDS_FROM_JSON + " RETURNING 1),"
        " head AS (UPDATE chronicle.log_head"
        " SET last_position = last_position + $2::bigint + 0 * (SELECT count(*) FROM commands)"
        " RETURNING last_position - $2::bigint AS base),"
        " appended AS ("
        " INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
        " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at"
        + json_column
        + ") SELECT head.base + e.i, e.id, e.a, e.t, e.v, e.e, e.s, decode(e.p, 'hex'), coalesce(e.m, '{}'::jsonb),"
        " e.c, e.u, e.o, e.r, e.k, " + _AT.format("e.at") + json_value + " FROM head, jsonb_to_recordset($3::jsonb)"
        " AS e(i bigint, id uuid, a text, t text, v bigint, x bigint, e text, s int, p text, m jsonb, c text, u text,"
        " o text, r text, k text, at bigint" + json_field + ")"
        " WHERE e.x = 0 OR (SELECT y.version FROM chronicle.events y WHERE y.aggregate_id = e.a AND y.version = e.x)"
        " IS NOT NULL"
        " RETURNING position)"
        " SELECT CASE WHEN count(*) = $2::bigint THEN min(position)"
        f" ELSE chronicle.refuse('{VERSION_MOVED}', 'an aggregate is not at its expected version') END FROM appended"
    )


APPEND_BATCH = _append_batch(json_copy=False)
APPEND_BATCH_JSON = _append_batch(json_copy=True)
APPEND_BATCH_JSON_NAME = b"chronicle_append_batch_json"
APPEND_BATCH_NAME = b"chronicle_append_batch"
# Command records on their own, before claims are taken (the precise path).
INSERT_COMMANDS = _INSERT_COMMANDS_FROM_JSON
# An append of no events (a refusal, a command that changed nothing) is
# only right on the aggregate's latest state.
CHECK_VERSION = (
    "SELECT CASE WHEN current = $2::bigint THEN current"
    f" ELSE chronicle.refuse('{VERSION_MOVED}', current::text) END"
    " FROM (SELECT coalesce(max(version), 0) AS current FROM chronicle.events WHERE aggregate_id = $1) AS v"
)
# Claims: a value already held by another aggregate refuses the append; but a
# stale version outranks a lost claim (the contract's order), so the version
# is looked at first. ON CONFLICT waits for a concurrent transaction inserting
# the same value, so the loser of a race sees the winner.
TAKE_CLAIM = (
    "INSERT INTO chronicle.claims (scope, value, aggregate_id) VALUES ($1, $2, $3)"
    " ON CONFLICT (scope, value) DO NOTHING"
)
CHECK_CLAIM = (
    "SELECT CASE"
    " WHEN (SELECT aggregate_id FROM chronicle.claims WHERE scope = $1 AND value = $2) = $3 THEN 0"
    " WHEN (SELECT coalesce(max(version), 0) FROM chronicle.events WHERE aggregate_id = $3) <> $4::bigint"
    f" THEN chronicle.refuse('{VERSION_MOVED}', 'claim')"
    f" ELSE chronicle.refuse('{CLAIM_HELD}', $5) END"
)
RELEASE_CLAIM = "DELETE FROM chronicle.claims WHERE scope = $1 AND value = $2 AND aggregate_id = $3"
# Why a batch refused itself: where each aggregate stands, and which command
# ids are recorded already. One round trip, read only.
DIAGNOSE = (
    "SELECT a.id, coalesce((SELECT max(version) FROM chronicle.events e WHERE e.aggregate_id = a.id), 0)"
    " FROM unnest($1::text[]) AS a(id)"
    " UNION ALL SELECT command_id, -1 FROM chronicle.commands WHERE command_id = ANY($2::text[])"
)
FIND_COMMANDS = f"SELECT {COMMAND_COLUMNS} FROM chronicle.commands WHERE command_id = ANY($1::text[])"

# -- reads of one aggregate -----------------------------------------------

HEAD = (
    "SELECT aggregate_type, version, event_type FROM chronicle.events WHERE aggregate_id = $1"
    " ORDER BY version DESC LIMIT 1"
)


@functools.cache
def list_aggregates(*, upper: bool, typed: bool) -> str:
    """A page of aggregates by id range, in code point order: the index of
    ids in the "C" collation (migration 25) walked from the lower bounds
    ($1: the prefix, $2: the page's last id) to the prefix's end ($3,
    ``records.prefix_end``: none for the empty prefix), so the walk stops
    where the prefix's ids end whatever the database's collation (a
    linguistic one interleaves "acme:b" with "acme1a"). Then the aggregate
    type if ``typed``, and the limit. Deleted: it holds its tombstone (its
    last event); keyed and forgotten: its data_keys row, live or erased."""
    where = 'e.aggregate_id COLLATE "C" >= $1 AND e.aggregate_id COLLATE "C" > $2'
    following = 3
    if upper:
        where += ' AND e.aggregate_id COLLATE "C" < $3'
        following = 4
    if typed:
        where += f" AND e.aggregate_type = ${following}"
        following += 1
    # The key looked up by its own (default) collation: its primary key.
    return (
        "SELECT g.id, g.type, g.version, g.deleted, (k.aggregate_id IS NOT NULL)::int,"
        " (k.aggregate_id IS NOT NULL AND k.wrapped_key IS NULL)::int FROM"
        ' (SELECT e.aggregate_id COLLATE "C" AS id, min(e.aggregate_type) AS type, max(e.version) AS version,'
        f" bool_or(e.event_type = '{TOMBSTONE_EVENT_TYPE}')::int AS deleted"
        f" FROM chronicle.events e WHERE {where} GROUP BY 1 ORDER BY 1 LIMIT ${following}::bigint) g"
        ' LEFT JOIN chronicle.data_keys k ON k.aggregate_id = g.id COLLATE "default" ORDER BY g.id'
    )


FIND_COMMAND = f"SELECT {COMMAND_COLUMNS} FROM chronicle.commands WHERE command_id = $1"
VERSION_AT = (
    "SELECT coalesce("
    " (SELECT min(version) - 1 FROM chronicle.events WHERE aggregate_id = $1 AND recorded_at > "
    + _AT.format("$2::bigint")
    + "), (SELECT coalesce(max(version), 0) FROM chronicle.events WHERE aggregate_id = $1))"
)


def read_aggregate(where: str, *, backwards: bool, limit: str | None) -> str:
    order = " DESC" if backwards else ""
    tail = f" LIMIT {limit}" if limit is not None else ""
    return f"SELECT {EVENT_COLUMNS} FROM chronicle.events WHERE {where} ORDER BY version{order}{tail}"


# -- the global log ------------------------------------------------------


# An event's size for paging by size (records.EVENT_ENVELOPE_BYTES).
_EVENT_SIZE = (
    "256 + octet_length(payload) + CASE WHEN metadata = '{}'::jsonb THEN 0 ELSE octet_length(metadata::text) END"
)


def read_log(where: str, limit: str, max_bytes: str, *, after: str, order: str = "position") -> str:
    """A page of the log and, from the same snapshot, the log's end: every
    position up to that end is committed and visible (positions are handed
    out under log_head's row lock); beside the end, the ids of the events
    stored at the end and at ``after`` (the page's start), NULL where none is
    (two lookups by the primary key, once per page: the end's row is a
    subquery the planner keeps apart, OFFSET 0, so they are not run once
    per event; see records.LogPage). The page holds at most ``limit`` events
    and ends with the first that brings their size to ``max_bytes``; the last
    column is each event's running total of sizes, so the reader knows the
    page was cut when the last one's reached ``max_bytes`` (the log's end
    comes after it, so that a row is an event's row as it is). ``order``: the
    index order that is position order for this ``where`` (``aggregate_type,
    position`` for a page of one type: see ``log.page_conditions``).

    The running total is computed over the page as the index returns it (in
    position order, which the planner knows of a subquery and not of a CTE:
    as a CTE the page was sorted twice more), and nothing counts the page
    (a count over the whole page made PostgreSQL keep it all aside first:
    about a fifth of a page's time). Nor is the result sorted again: the
    lateral join's rows are the page's, in its order, but the planner does
    not carry an order through a join whose outer side is log_head, and
    sorted the page once more (about a fifth again); the reader checks the
    order instead (``rows.in_order``)."""
    return (
        "SELECT w.*, h.head_id, h.after_id, h.last_position FROM (SELECT last_position,"
        " (SELECT event_id::text FROM chronicle.events WHERE position = last_position) AS head_id,"
        f" (SELECT event_id::text FROM chronicle.events WHERE position = {after}) AS after_id"
        " FROM chronicle.log_head OFFSET 0) h LEFT JOIN LATERAL (SELECT * FROM ("
        f"SELECT page.*, sum(size) OVER (ORDER BY {order} ROWS UNBOUNDED PRECEDING) AS through"
        f" FROM (SELECT {EVENT_COLUMNS}, {_EVENT_SIZE} AS size"
        f" FROM chronicle.events WHERE {where}"
        f" ORDER BY {order} LIMIT {limit}) AS page) AS sized WHERE through - size < {max_bytes}) AS w ON true"
    )


# A page of the log comes from an index in position order (the primary key,
# or (aggregate_type, position), or (event_type, position)), reading only the
# page. Without this, when the planner's statistics lag behind the table (a
# log that grew since the last ANALYZE), it reads every remaining match of a
# filter and sorts them to return the first hundred: at millions of events,
# each page read the rest of the log. Not for a read of one aggregate, whose
# (aggregate_id, version) index needs the sort. Local to the read's operation.
LOG_PAGE_SETTINGS = "SELECT set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)"
LOG_HEAD = "SELECT last_position FROM chronicle.log_head"
# Every (aggregate type, event type, schema version) stored, for the
# pre-deploy check (``chronicle plugins --check``). No index holds the three:
# a scan of the whole table (docs/plugins.md gives its cost), never run by a server.
STORED_EVENT_KINDS = (
    "SELECT aggregate_type, event_type, schema_version FROM chronicle.events"
    ' GROUP BY 1, 2, 3 ORDER BY aggregate_type COLLATE "C", event_type COLLATE "C", schema_version'
)
LISTEN = "LISTEN chronicle_events"
NOTIFY_CHANNEL = "chronicle_events"

# -- claims -----------------------------------------------------------------

CLAIM_OWNER = "SELECT aggregate_id FROM chronicle.claims WHERE scope = $1 AND value = $2"
CLAIMS_IN_CLEAR = "SELECT scope, value, aggregate_id FROM chronicle.claims WHERE left(value, 1) <> $1 LIMIT $2::bigint"
# Hiding a claim: drop the clear one if it is still held as given, and take
# the hidden one for the same holder (unless another aggregate holds it);
# the last statement says who holds the hidden value now (and 0 rows when the
# clear claim was gone: nothing was done).
HIDE_CLAIM = (
    "WITH gone AS (DELETE FROM chronicle.claims WHERE scope = $1 AND value = $2 AND aggregate_id = $3 RETURNING 1),"
    " taken AS (INSERT INTO chronicle.claims (scope, value, aggregate_id) SELECT $1, $4, $3 FROM gone"
    " ON CONFLICT (scope, value) DO NOTHING RETURNING aggregate_id)"
    " SELECT coalesce((SELECT aggregate_id FROM taken),"
    " (SELECT aggregate_id FROM chronicle.claims WHERE scope = $1 AND value = $4)) FROM gone"
)

# -- snapshots ----------------------------------------------------------------

# A snapshot is saved in the background after the append it follows, so it
# can arrive after the aggregate was deleted: it must not put the deleted
# state back. The save first takes a share lock on the aggregate's last
# event (SNAPSHOT_LOCK_LAST_EVENT): a deletion under way holds that row, and
# the save waits for it to commit; a deletion that comes after waits for the
# save's commit and then deletes its snapshot with the others. The insert,
# a statement of its own (under READ COMMITTED it sees what committed while
# the lock was awaited), then writes nothing when the last event is a
# tombstone ($7).
SNAPSHOT_LOCK_LAST_EVENT = (
    "SELECT 1 FROM chronicle.events WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1 FOR SHARE"
)
SAVE_SNAPSHOT = (
    f"INSERT INTO chronicle.snapshots ({SNAPSHOT_COLUMNS})"
    " SELECT $1::text, $2::text, $3::bigint, $4::text, $5::int, $6::bytea"
    " WHERE (SELECT event_type FROM chronicle.events WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1)"
    " IS DISTINCT FROM $7::text"
    # Built through the event that is still there (Snapshot.through_event_id).
    " AND ($8::uuid IS NULL OR EXISTS (SELECT 1 FROM chronicle.events"
    " WHERE aggregate_id = $1 AND version = $3 AND event_id = $8::uuid))"
    " ON CONFLICT (aggregate_id, version) DO UPDATE SET aggregate_type = excluded.aggregate_type,"
    " state_type = excluded.state_type, schema_version = excluded.schema_version,"
    " state = excluded.state, taken_at = now()"
)
# Below the newest ``keep`` (the OFFSET is keep - 1); with fewer, the
# subquery is NULL and nothing goes.
PRUNE_SNAPSHOTS = (
    "DELETE FROM chronicle.snapshots WHERE aggregate_id = $1 AND version <"
    " (SELECT version FROM chronicle.snapshots WHERE aggregate_id = $1"
    " ORDER BY version DESC OFFSET $2::bigint LIMIT 1)"
)
LOAD_SNAPSHOT = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM chronicle.snapshots WHERE aggregate_id = $1"
    " AND version <= coalesce($2::bigint, version) ORDER BY version DESC LIMIT 1"
)
# The same, of one kind (aggregate type, state type with its fingerprint,
# state schema version): the newest snapshot the loader can use, under any
# newer ones it cannot. Looked for among the aggregate's newest $6 (the
# store's keep_snapshots: all it keeps, bar an import's surplus), read in
# the key's order: with the kind's conditions on the key's rows instead,
# a planner that believed them selective (an unanalysed table) read all of
# the aggregate's rows and sorted them.
LOAD_SNAPSHOT_OF_KIND = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM (SELECT {SNAPSHOT_COLUMNS} FROM chronicle.snapshots WHERE aggregate_id = $1"
    " AND version <= coalesce($2::bigint, version) ORDER BY version DESC LIMIT $6::bigint) AS newest_first"
    " WHERE aggregate_type = $3 AND state_type = $4 AND schema_version = $5::int LIMIT 1"
)

# An aggregate's events after the snapshot it loads from, sent in one
# operation after LOAD_SNAPSHOT_OF_KIND: the floor is the version of the
# latest snapshot (at or below $5, among the newest $6) of the kind the
# aggregate can use ($2 to $4), else 0; every row carries it (one row of NULLs when no event follows),
# so the reader can tell whether both statements saw the same snapshot
# (they run in one transaction but, at READ COMMITTED, not one snapshot).
EVENTS_AFTER_SNAPSHOT = (
    "SELECT f.floor, e.* FROM (SELECT coalesce((SELECT version FROM (SELECT version, aggregate_type, state_type,"
    " schema_version FROM chronicle.snapshots WHERE aggregate_id = $1 AND version <= coalesce($5::bigint, version)"
    " ORDER BY version DESC LIMIT $6::bigint) AS newest_first"
    " WHERE aggregate_type = $2 AND state_type = $3 AND schema_version = $4::int LIMIT 1), 0) AS floor) AS f"
    f" LEFT JOIN LATERAL (SELECT {EVENT_COLUMNS} FROM chronicle.events WHERE aggregate_id = $1"
    " AND version > f.floor AND version <= coalesce($5::bigint, version) ORDER BY version) AS e ON true"
)

# -- projections ------------------------------------------------------------

PROJECTION_POSITION = "SELECT position FROM chronicle.projection_checkpoints WHERE name = $1"
# The declaration's version a projection's documents were built by
# (migration 27), and a first run's checkpoint made with it: of two runners
# that make it at once, the second waits for the first's insert and makes
# nothing (and reads the version the first recorded).
PROJECTION_VERSION = "SELECT version FROM chronicle.projection_checkpoints WHERE name = $1"
START_VERSIONED_CHECKPOINT = (
    "INSERT INTO chronicle.projection_checkpoints (name, position, version) VALUES ($1, 0, $2::int)"
    " ON CONFLICT (name) DO NOTHING"
)
# Rows that tables gain without bound (documents, snapshots) are read and
# written by key, always through an index. Prepared statements keep the plan
# they were first given, and a read model (or a deployment) starts empty:
# planned while projection_documents (or data_keys, or snapshots) looked
# small, a read of a batch's keys became a scan of the whole table, kept after
# the table had grown to millions of rows until an ANALYZE happened to replan
# it (a rebuild swung between 4,000 and 11,000 events/s with when autovacuum
# came by). The operations that read or write those rows by key run under
# this setting, local to their transaction; tests/integration/
# test_postgres_plans.py holds them to their indexes.
BY_KEY_SETTINGS = "SELECT set_config('enable_seqscan', 'off', true)"
LOAD_DOCUMENT = "SELECT key, type_name, data FROM chronicle.projection_documents WHERE projection = $1 AND key = $2"
# Many keys, one statement: probes of the primary key, one per element.
# Written as a join of each key to its row, not as `key = ANY($2)`: for
# that, a planner that believes the projection small (a read model just
# begun, its statistics not yet redone) reads every document of the
# projection and filters the keys out, in a generic plan or a custom one,
# and a rebuild of a read model of 140,000 documents crawled (3,600 events/s
# instead of 28,000) until autovacuum's ANALYZE. Bound to a key, the inner
# lookup can only be a probe; its LIMIT (the key is unique anyway) keeps the
# planner from flattening it into a join that filters the projection's rows.
LOAD_DOCUMENTS = (
    "SELECT d.key, d.type_name, d.data FROM unnest($2::text[]) AS k(key)"
    " CROSS JOIN LATERAL (SELECT key, type_name, data FROM chronicle.projection_documents"
    " WHERE projection = $1 AND key = k.key LIMIT 1) AS d"
)
# The checkpoint row is the guard: moving it from the expected position
# fails (VERSION_MOVED) if another runner moved it first, and its row lock
# serialises two runners of one projection. Documents are written in the same
# transaction (one operation: the statements below, then Sync).
ENSURE_CHECKPOINT = (
    "INSERT INTO chronicle.projection_checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING"
)
# A reaction's start (ProjectionStore.start_projection): the row is made
# at the given position unless it exists; a row comes back when it was made.
# Of two replicas that start it at once, the second waits for the first's
# insert and makes nothing.
START_CHECKPOINT = (
    "INSERT INTO chronicle.projection_checkpoints (name, position) VALUES ($1, $2::bigint)"
    " ON CONFLICT (name) DO NOTHING RETURNING position"
)
MOVE_CHECKPOINT = (
    "WITH moved AS (UPDATE chronicle.projection_checkpoints SET position = $2::bigint, updated_at = now()"
    " WHERE name = $1 AND position = $3::bigint RETURNING 1)"
    f" SELECT CASE WHEN EXISTS (SELECT 1 FROM moved) THEN 0 ELSE chronicle.refuse('{VERSION_MOVED}', $1) END"
)
# A projection's commit under a fencing token: the lease must still be held
# by the token's member at the token's epoch. FOR SHARE holds the lease row
# until the commit, so a replica taking the lease over (an UPDATE of that
# row) waits for this commit and then reads a checkpoint that includes it.
CHECK_FENCING = (
    "SELECT CASE WHEN EXISTS (SELECT 1 FROM chronicle.leases WHERE lease_group = $1 AND name = $2"
    " AND owner = $3 AND epoch = $4::bigint FOR SHARE)"
    f" THEN 0 ELSE chronicle.refuse('{LEASE_LOST}', $2) END"
)
# One statement per key (deletes are few: a read model's documents mostly
# change): equal to both columns of the primary key, it can only be a
# probe, in any plan. `key = ANY($2)` is open to the plan LOAD_DOCUMENTS
# explains, and a join to the keys to a hash join; either reads every
# document of the projection to find the few.
DELETE_DOCUMENT = "DELETE FROM chronicle.projection_documents WHERE projection = $1 AND key = $2"
# Documents derived from aggregates (their subjects) are not written once one
# of them is forgotten. FOR SHARE on the subjects' keys orders this commit
# with a forget of one of them: a forget that took its key's row first is
# waited for and then seen (its tombstone, and the deletions that follow it,
# committed); one that comes later waits for this commit and then deletes
# what it wrote. The subjects come as PUT_DOCUMENTS' own JSON (an array of
# each document's subjects), so the client encodes them once: building a
# distinct, sorted text array of them cost a rebuild about a twentieth of
# its time (a document derived from ten accounts names all ten at each
# write); PostgreSQL's ANY does not mind repeats, and ORDER BY sorts.
CHECK_SUBJECTS = (
    "SELECT CASE WHEN count(*) FILTER (WHERE k.wrapped_key IS NULL) = 0 THEN 0"
    f" ELSE chronicle.refuse('{SUBJECTS_FORGOTTEN}',"
    " string_agg(k.aggregate_id, E'\\n') FILTER (WHERE k.wrapped_key IS NULL)) END"
    " FROM (SELECT aggregate_id, wrapped_key FROM chronicle.data_keys"
    " WHERE aggregate_id = ANY(ARRAY(SELECT jsonb_array_elements_text(jsonb_array_elements($1::jsonb))))"
    " ORDER BY aggregate_id FOR SHARE) AS k"
)
# A document's subjects (the aggregates it is derived from) are in its row,
# as its last write gave them. The writes travel as four JSON arrays, one
# per column (keys, type names, data as hex, each document's subjects),
# zipped back into rows by ROWS FROM: a flat array of strings costs the
# client a fraction of what an array of objects does (no field names to
# encode per document), and PostgreSQL less to parse.
PUT_DOCUMENTS = (
    "INSERT INTO chronicle.projection_documents (projection, key, type_name, data, subjects)"
    " SELECT $1, d.key, d.type_name, decode(d.data, 'hex'), ARRAY(SELECT jsonb_array_elements_text(d.subjects))"
    " FROM ROWS FROM (jsonb_array_elements_text($2::jsonb), jsonb_array_elements_text($3::jsonb),"
    " jsonb_array_elements_text($4::jsonb), jsonb_array_elements($5::jsonb)) AS d(key, type_name, data, subjects)"
    " ON CONFLICT (projection, key) DO UPDATE SET type_name = excluded.type_name,"
    " data = excluded.data, subjects = excluded.subjects, due_us = NULL, updated_at = now()"
)
# The documents written with a due time (a reaction's deadlines: few, and
# only when a process schedules one), by a statement of their own so that a
# read model's writes carry no column more: as PUT_DOCUMENTS, with a fifth
# array of due times.
PUT_DUE_DOCUMENTS = (
    "INSERT INTO chronicle.projection_documents (projection, key, type_name, data, subjects, due_us)"
    " SELECT $1, d.key, d.type_name, decode(d.data, 'hex'), ARRAY(SELECT jsonb_array_elements_text(d.subjects)),"
    " d.due::bigint"
    " FROM ROWS FROM (jsonb_array_elements_text($2::jsonb), jsonb_array_elements_text($3::jsonb),"
    " jsonb_array_elements_text($4::jsonb), jsonb_array_elements($5::jsonb), jsonb_array_elements_text($6::jsonb))"
    " AS d(key, type_name, data, subjects, due)"
    " ON CONFLICT (projection, key) DO UPDATE SET type_name = excluded.type_name,"
    " data = excluded.data, subjects = excluded.subjects, due_us = excluded.due_us, updated_at = now()"
)
# A reaction's deadlines, soonest first, and their count and soonest, by the
# partial index of documents with a due time (migration 23).
DUE_DOCUMENTS = (
    "SELECT key, type_name, data FROM chronicle.projection_documents WHERE projection = $1"
    " AND due_us IS NOT NULL AND due_us <= $2::bigint ORDER BY due_us, key LIMIT $3::bigint"
)
DUE_SUMMARY = (
    "SELECT count(*), min(due_us) FROM chronicle.projection_documents WHERE projection = $1 AND due_us IS NOT NULL"
)

# Parked events travel as one JSON document (rare, and few at a time).
PARKED_EVENT_COLUMNS = "projection, position, event_id, event_type, aggregate_id, error, attempts, parked_at_us"
PARK_EVENTS = (
    f"INSERT INTO chronicle.projection_parked_events ({PARKED_EVENT_COLUMNS})"
    " SELECT $1, p.position, p.event_id, p.event_type, p.aggregate_id, p.error, p.attempts, p.parked_at_us"
    " FROM jsonb_to_recordset($2::jsonb) AS p(position bigint, event_id text, event_type text,"
    " aggregate_id text, error text, attempts integer, parked_at_us bigint)"
    " ON CONFLICT (projection, position, event_id) DO NOTHING"
)
PARKED_EVENTS = (
    f"SELECT {PARKED_EVENT_COLUMNS} FROM chronicle.projection_parked_events WHERE projection = $1"
    " AND (position, event_id) > ($2::bigint, $3::text) ORDER BY position, event_id LIMIT $4::bigint"
)
COUNT_PARKED_EVENTS = "SELECT count(*) FROM chronicle.projection_parked_events WHERE projection = $1"
# The type is written out, not a parameter: only then can the planner of a
# prepared statement take the partial index of parked commands (migration 17).
COUNT_PARKED_COMMANDS = (
    f"SELECT count(*) FROM chronicle.projection_documents WHERE projection = $1 AND type_name = '{PARKED_COMMAND_TYPE}'"
)
# A rebuild: the documents, the parked events and the checkpoint's move back
# to 0 commit together. The checkpoint's row lock (the UPDATE) waits for a
# runner's commit in flight, whose move from its checkpoint then cannot
# happen again: a runner that applied a batch before the reset cannot write
# it after (its commit finds the checkpoint at 0, not where it started).
RESET_CHECKPOINT = (
    "UPDATE chronicle.projection_checkpoints SET position = 0, version = coalesce($2::int, version), updated_at = now()"
    " WHERE name = $1"
)
RESET_DOCUMENTS = "DELETE FROM chronicle.projection_documents WHERE projection = $1"
RESET_PARKED_EVENTS = "DELETE FROM chronicle.projection_parked_events WHERE projection = $1"
# A stored projection's deletion (DeleteProjection), a page at a time: each
# statement deletes at most $2 rows found by the primary key, so a
# transaction holds few row locks and ends quickly however large the
# projection. The checkpoint's row goes first (its lock waits for a runner's
# commit in flight; a later commit from its old checkpoint finds no row).
DELETE_CHECKPOINT = "DELETE FROM chronicle.projection_checkpoints WHERE name = $1"
DELETE_DOCUMENTS_PAGE = (
    "WITH gone AS (DELETE FROM chronicle.projection_documents WHERE projection = $1 AND key IN"
    " (SELECT key FROM chronicle.projection_documents WHERE projection = $1 ORDER BY key LIMIT $2::bigint)"
    " RETURNING 1) SELECT count(*) FROM gone"
)
DELETE_PARKED_EVENTS_PAGE = (
    "WITH gone AS (DELETE FROM chronicle.projection_parked_events WHERE (projection, position, event_id) IN"
    " (SELECT projection, position, event_id FROM chronicle.projection_parked_events WHERE projection = $1"
    " ORDER BY position, event_id LIMIT $2::bigint) RETURNING 1) SELECT count(*) FROM gone"
)
# Every stored name: the checkpoints, and the distinct names of documents and
# parked events found by a walk of their primary keys (one index probe per
# name: a DISTINCT would read every document).
STORED_PROJECTIONS = (
    "WITH RECURSIVE documents(name) AS ("
    " (SELECT projection FROM chronicle.projection_documents ORDER BY projection LIMIT 1)"
    " UNION ALL SELECT (SELECT projection FROM chronicle.projection_documents WHERE projection > d.name"
    " ORDER BY projection LIMIT 1) FROM documents d WHERE d.name IS NOT NULL),"
    " parked(name) AS ("
    " (SELECT projection FROM chronicle.projection_parked_events ORDER BY projection LIMIT 1)"
    " UNION ALL SELECT (SELECT projection FROM chronicle.projection_parked_events WHERE projection > p.name"
    " ORDER BY projection LIMIT 1) FROM parked p WHERE p.name IS NOT NULL),"
    " names AS (SELECT name FROM chronicle.projection_checkpoints UNION SELECT name FROM documents"
    " WHERE name IS NOT NULL UNION SELECT name FROM parked WHERE name IS NOT NULL)"
    " SELECT n.name, coalesce(c.position, 0) FROM names n"
    ' LEFT JOIN chronicle.projection_checkpoints c ON c.name = n.name ORDER BY n.name COLLATE "C"'
)


# A page of documents comes from the primary key in key order, reading only
# the page, for the same reason as a page of the log: without statistics
# (documents written since the last ANALYZE) the planner reads every key of
# the range and sorts them for the first hundred.
DOCUMENT_PAGE_SETTINGS = LOG_PAGE_SETTINGS


@functools.cache
def list_documents(*, lower_inclusive: bool, upper: bool, descending: bool) -> str:
    """A page of documents by key range (``DocumentRange.bounds``): an index
    range scan of the primary key (keys compare in the "C" collation, so the
    range is the prefix's), in its order or backwards. Parameters: the
    projection, the lower bound, the upper bound if any, the limit."""
    bounds = f"key {'>=' if lower_inclusive else '>'} $2" + (" AND key < $3" if upper else "")
    limit = "$4" if upper else "$3"
    return (
        f"SELECT key, type_name, data FROM chronicle.projection_documents WHERE projection = $1 AND {bounds}"
        f" ORDER BY key {'DESC' if descending else 'ASC'} LIMIT {limit}::bigint"
    )


@functools.cache
def count_documents(*, upper: bool) -> str:
    """How many documents a key range holds, up to a limit: an index-only
    range scan of the primary key, stopped at the limit (heap pages are read
    only for rows the visibility map does not cover yet). Parameters: the
    projection, the lower bound, the upper bound if any, the limit."""
    bounds = "key >= $2" + (" AND key < $3" if upper else "")
    limit = "$4" if upper else "$3"
    return (
        "SELECT count(*) FROM (SELECT 1 FROM chronicle.projection_documents"
        f" WHERE projection = $1 AND {bounds} LIMIT {limit}::bigint) AS counted"
    )


# -- leases (service/cluster/leases.py) ----------------------------------
#
# Times are the database's (now(): the transaction's start), durations are
# milliseconds. A lease whose expires_at has passed is free to take, and is
# shown without owner; its epoch goes up by one each time its holder changes.

_LEASE_EXPIRY = "now() + $4::bigint * interval '1 millisecond'"
UPSERT_LEASE_MEMBER = (
    "INSERT INTO chronicle.lease_members (lease_group, member_id, address, expires_at, console, version,"
    f" schema_version) VALUES ($1, $2, $3, {_LEASE_EXPIRY}, $5, $6, $7) ON CONFLICT (lease_group, member_id)"
    " DO UPDATE SET address = excluded.address, expires_at = excluded.expires_at, console = excluded.console,"
    " version = excluded.version, schema_version = excluded.schema_version"
)
# Members dead for long are forgotten, so the table follows the live set.
FORGET_DEAD_MEMBERS = (
    "DELETE FROM chronicle.lease_members WHERE lease_group = $1 AND expires_at < now() - interval '1 hour'"
)
ENSURE_LEASES = (
    "INSERT INTO chronicle.leases (lease_group, name) SELECT $1, n FROM unnest($2::text[]) AS n"
    " ON CONFLICT (lease_group, name) DO NOTHING"
)
RENEW_LEASES = (
    "UPDATE chronicle.leases SET expires_at = now() + $3::bigint * interval '1 millisecond'"
    " WHERE lease_group = $1 AND owner = $2"
)
# With the seconds each member's membership, and each held lease, has left (by the database's clock).
LIVE_MEMBERS = (
    "SELECT member_id, address, console, extract(epoch FROM expires_at - now())::float8, version, schema_version"
    " FROM chronicle.lease_members WHERE lease_group = $1 AND expires_at > now() ORDER BY member_id"
)
GROUP_LEASES = (
    "SELECT name, CASE WHEN expires_at > now() THEN owner END, epoch,"
    " CASE WHEN expires_at > now() THEN extract(epoch FROM expires_at - now())::float8 END"
    " FROM chronicle.leases WHERE lease_group = $1 ORDER BY name"
)
RELEASE_LEASES = (
    "UPDATE chronicle.leases SET owner = NULL, epoch = epoch + 1, expires_at = '-infinity'"
    " WHERE lease_group = $1 AND owner = $2 AND name = ANY($3::text[])"
)
ACQUIRE_LEASES = (
    f"UPDATE chronicle.leases SET owner = $2, epoch = epoch + 1, expires_at = {_LEASE_EXPIRY}"
    " WHERE lease_group = $1 AND name = ANY($3::text[]) AND (owner IS NULL OR expires_at <= now())"
    " RETURNING name, epoch"
)
LEAVE_GROUP = "DELETE FROM chronicle.lease_members WHERE lease_group = $1 AND member_id = $2"

# -- cluster features (service/store/features.py, migration 29) -------------
#
# $1: the feature; $2: the schema from which servers honour it
# (features.feature_since); $3, $4: the length of GROUP_LEASE_PREFIX and it
# (a subscription group's members are its consumers, not servers). Turned
# on only while no live server knows a schema below $2 (0: a version from
# before migration 24).
ENABLE_FEATURE = (
    "INSERT INTO chronicle.cluster_features (name) SELECT $1 WHERE NOT EXISTS (SELECT 1"
    " FROM chronicle.lease_members WHERE expires_at > now() AND schema_version < $2 AND left(lease_group, $3) <> $4)"
    " ON CONFLICT (name) DO NOTHING"
)
FEATURE_ENABLED = "SELECT 1 FROM chronicle.cluster_features WHERE name = $1"
FEATURES_ON = "SELECT name FROM chronicle.cluster_features"
RELEASE_ALL_LEASES = (
    "UPDATE chronicle.leases SET owner = NULL, epoch = epoch + 1, expires_at = '-infinity'"
    " WHERE lease_group = $1 AND owner = $2"
)

# -- audit --------------------------------------------------------------------

RECORD_AUDIT_ENTRY = (
    "INSERT INTO chronicle.refusals (recorded_at, command_id, command_type, aggregate_id, principal, user_id,"
    " origin, reason, message, outcome, dry_run, peer, occurrences) VALUES ("
    + _AT.format("$1::bigint")
    + ", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::boolean, $12, $13::bigint)"
)


def audited_commands(where: str, limit: str) -> str:
    return f"SELECT {COMMAND_COLUMNS} FROM chronicle.commands WHERE {where} ORDER BY recorded_at DESC LIMIT {limit}"


def audited_others(where: str, limit: str) -> str:
    return f"SELECT {AUDIT_COLUMNS} FROM chronicle.refusals WHERE {where} ORDER BY recorded_at DESC LIMIT {limit}"


# -- data keys --------------------------------------------------------------

# ON CONFLICT waits for a concurrent insert of the same key, so every creator
# reads back the one that won (the second statement of the same operation).
CREATE_DATA_KEY = (
    "INSERT INTO chronicle.data_keys (aggregate_id, master_key_id, wrapped_key) VALUES ($1, $2, $3)"
    " ON CONFLICT (aggregate_id) DO NOTHING"
)
LOAD_DATA_KEY = "SELECT aggregate_id, master_key_id, wrapped_key FROM chronicle.data_keys WHERE aggregate_id = $1"
# A batch's audit entry (RECORD_AUDIT_ENTRY's parameters, then the batch's
# ids), in the batch's transaction, when it erased a key: FORGET_DATA_KEY
# writes forgotten_at = now(), the transaction's start, over live keys only,
# so a key forgotten at now() was erased by this transaction, not before.
RECORD_AUDIT_ENTRY_IF_ERASED = (
    "INSERT INTO chronicle.refusals (recorded_at, command_id, command_type, aggregate_id, principal, user_id,"
    " origin, reason, message, outcome, dry_run, peer, occurrences) SELECT "
    + _AT.format("$1::bigint")
    + ", $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::boolean, $12, $13::bigint WHERE EXISTS (SELECT 1 FROM"
    " chronicle.data_keys WHERE aggregate_id = ANY($14::text[]) AND forgotten_at = now())"
)
FORGET_DATA_KEY = (
    "UPDATE chronicle.data_keys SET master_key_id = NULL, wrapped_key = NULL, forgotten_at = now()"
    " WHERE aggregate_id = $1 AND wrapped_key IS NOT NULL RETURNING 1"
)
# When the aggregate's key was erased, in microseconds (the first forget's
# time: FORGET_DATA_KEY writes it only over a live key).
FORGOTTEN_AT = (
    "SELECT floor(extract(epoch FROM forgotten_at) * 1000000)::bigint FROM chronicle.data_keys WHERE aggregate_id = $1"
)
DELETE_SNAPSHOTS = "DELETE FROM chronicle.snapshots WHERE aggregate_id = $1"
# Only an aggregate with a key (or its tombstone) is forgotten; one that
# never had a key keeps its claims and its documents.
RELEASE_CLAIMS_OF_FORGOTTEN = (
    "DELETE FROM chronicle.claims WHERE aggregate_id = $1"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1)"
)
# The documents that name the forgotten aggregate as a subject (the GIN index).
# Counted by projection and type as they go (a reaction's process states
# among them), for ForgetAggregate's answer.
# The other aggregates the documents DELETE_DOCUMENTS_OF_FORGOTTEN deletes
# named (a reaction's process states, a read model's documents; not parked
# commands), by projection or reaction: the first MAX_OTHER_SUBJECTS by id,
# and how many in all. Run just before it, in its transaction.
OTHER_SUBJECTS_OF_FORGOTTEN = (
    "SELECT projection, subject, total FROM ("
    ' SELECT projection, subject, row_number() OVER (PARTITION BY projection ORDER BY subject COLLATE "C") AS n,'
    " count(*) OVER (PARTITION BY projection) AS total FROM ("
    "  SELECT DISTINCT d.projection, named.subject FROM chronicle.projection_documents d,"
    "  unnest(d.subjects) AS named(subject)"
    f"  WHERE d.subjects @> ARRAY[$1::text] AND d.type_name <> '{PARKED_COMMAND_TYPE}' AND named.subject <> $1"
    "  AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1)) others) ranked"
    f' WHERE n <= {MAX_OTHER_SUBJECTS} ORDER BY projection, subject COLLATE "C"'
)
DELETE_DOCUMENTS_OF_FORGOTTEN = (
    "WITH gone AS (DELETE FROM chronicle.projection_documents WHERE subjects @> ARRAY[$1::text]"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1) RETURNING projection, type_name)"
    " SELECT projection, type_name, count(*) FROM gone GROUP BY projection, type_name"
)
# A parked event's error is a handler's exception text, which may quote the
# event's payload. Parked events are few (no index: a forget is rare).
DELETE_PARKED_OF_FORGOTTEN = (
    "DELETE FROM chronicle.projection_parked_events WHERE aggregate_id = $1"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1)"
)
# A subscription group's parked event keeps its consumer's nack reason,
# which may quote the payload. Few: no index by aggregate.
DELETE_GROUP_PARKED_OF_FORGOTTEN = (
    "DELETE FROM chronicle.group_parked WHERE aggregate_id = $1"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1)"
)
# A command record's fingerprint (a hash of its payload, which a guess list
# confirms) and a refusal's text, metadata and field violations (which may
# quote the state): sealed under the aggregate's key with encryption on, but
# in the clear if written before it was, or imported so. Forgetting erases
# them all; the refusal's kind and reason stay, as the audit shows them.
# Command records come first in the lock order. No index by aggregate: a
# forget reads the table through (not blocking writers).
_ERASED = f"'\\x{ERASED_FINGERPRINT.hex()}'::bytea"
_ERASED_TEXTS = (
    f"fingerprint = {_ERASED}, rejection = CASE WHEN rejection IS NULL THEN NULL ELSE"
    " jsonb_build_object('kind', rejection->'kind', 'reason', rejection->'reason', 'message', '',"
    " 'metadata', '{}'::jsonb) END"
)
ERASE_COMMAND_TEXTS_OF_FORGOTTEN = (
    f"UPDATE chronicle.commands SET {_ERASED_TEXTS} WHERE aggregate_id = $1 AND fingerprint <> {_ERASED}"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1)"
)
# The same for a batch of aggregates ($1: their ids, an array): one pass over
# the table for the batch, not one per aggregate.
ERASE_COMMAND_TEXTS_OF_ALL_FORGOTTEN = (
    f"UPDATE chronicle.commands c SET {_ERASED_TEXTS} WHERE c.aggregate_id = ANY($1::text[])"
    f" AND c.fingerprint <> {_ERASED}"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys k WHERE k.aggregate_id = c.aggregate_id)"
)
ERASE_AUDIT_TEXTS_OF_ALL_FORGOTTEN = (
    "UPDATE chronicle.refusals r SET message = '' WHERE r.aggregate_id = ANY($1::text[]) AND r.message <> ''"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys k WHERE k.aggregate_id = r.aggregate_id)"
)
# The audit's own entries of the aggregate (a dry run's refusal, a plugin
# middleware's) keep their reason; their message goes.
ERASE_AUDIT_TEXTS_OF_FORGOTTEN = (
    "UPDATE chronicle.refusals SET message = '' WHERE aggregate_id = $1 AND message <> ''"
    " AND EXISTS (SELECT 1 FROM chronicle.data_keys WHERE aggregate_id = $1)"
)
# Whether the store holds anything sealed (it was written with encryption at
# rest), asked once by a server that has no master keys: a live key of an
# aggregate, of a read model that holds documents, of a claims scope that
# holds claims (service.store.encryption.refuse_if_sealed asks the same).
SEALED_DATA_KEY = (
    "SELECT 1 FROM chronicle.data_keys k WHERE k.wrapped_key IS NOT NULL AND CASE"
    f" WHEN starts_with(k.aggregate_id, '{PROJECTION_KEY_PREFIX}') THEN EXISTS (SELECT 1 FROM"
    # A tenant's key of a read model names the read model before TENANT_OWNED_MARK.
    " chronicle.projection_documents d WHERE d.projection ="
    f" split_part(substr(k.aggregate_id, {len(PROJECTION_KEY_PREFIX) + 1}), '{TENANT_OWNED_MARK}', 1))"
    f" WHEN starts_with(k.aggregate_id, '{CLAIMS_KEY_PREFIX}') THEN EXISTS (SELECT 1 FROM"
    f" chronicle.claims c WHERE c.scope = substr(k.aggregate_id, {len(CLAIMS_KEY_PREFIX) + 1}))"
    " ELSE true END LIMIT 1"
)


@functools.cache
def live_keys(*, upper: bool) -> str:
    """Live keys by id range in code point order, over the partial index of
    live keys in the "C" collation (migration 25): $1 the prefix, $2 the
    last id seen, $3 the prefix's end if any, then the limit."""
    bounds = 'aggregate_id COLLATE "C" >= $1 AND aggregate_id COLLATE "C" > $2'
    bounds += ' AND aggregate_id COLLATE "C" < $3' if upper else ""
    return (
        f"SELECT aggregate_id FROM chronicle.data_keys WHERE {bounds} AND wrapped_key IS NOT NULL"
        f' ORDER BY aggregate_id COLLATE "C" LIMIT ${4 if upper else 3}::bigint'
    )


@functools.cache
def count_live_keys(*, upper: bool) -> str:
    bounds = 'aggregate_id COLLATE "C" >= $1' + (' AND aggregate_id COLLATE "C" < $2' if upper else "")
    return f"SELECT count(*) FROM chronicle.data_keys WHERE {bounds} AND wrapped_key IS NOT NULL"


DATA_KEYS_TO_REWRAP = (
    "SELECT aggregate_id, master_key_id, wrapped_key FROM chronicle.data_keys"
    " WHERE wrapped_key IS NOT NULL AND master_key_id <> $1 AND aggregate_id > $3"
    " ORDER BY aggregate_id LIMIT $2::bigint"
)
REWRAP_DATA_KEY = (
    "UPDATE chronicle.data_keys SET master_key_id = $1, wrapped_key = $2"
    " WHERE aggregate_id = $3 AND master_key_id = $4 AND wrapped_key = $5 RETURNING 1"
)

# -- transfer (export and import) ---------------------------------------------
#
# Pages in key order (each table's primary key), for exports; imports as one
# operation per batch, records travelling as JSON like appends' (bytes as
# hex, times as microseconds). An import that does not fit refuses itself
# (IMPORT_REFUSED) with the reason and the index of the first record at
# fault, before anything is written.

DATA_KEYS_PAGE = (
    "SELECT aggregate_id, master_key_id, wrapped_key FROM chronicle.data_keys WHERE aggregate_id > $1"
    " ORDER BY aggregate_id LIMIT $2::bigint"
)
SNAPSHOTS_PAGE = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM chronicle.snapshots WHERE (aggregate_id, version) > ($1, $2::bigint)"
    " ORDER BY aggregate_id, version LIMIT $3::bigint"
)
SNAPSHOTS_OF_PAGE = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM chronicle.snapshots WHERE aggregate_id = $1"
    " AND (aggregate_id, version) > ($2, $3::bigint) ORDER BY version LIMIT $4::bigint"
)
CLAIMS_PAGE = (
    "SELECT scope, value, aggregate_id FROM chronicle.claims WHERE (scope, value) > ($1, $2)"
    " ORDER BY scope, value LIMIT $3::bigint"
)
CLAIMS_OF_PAGE = (
    "SELECT scope, value, aggregate_id FROM chronicle.claims WHERE aggregate_id = $1 AND (scope, value) > ($2, $3)"
    " ORDER BY scope, value LIMIT $4::bigint"
)
# Whether a scope holds tenants' claims: [$1, $2) is [scope + mark, scope +
# the character after it) in code point order, on migration 30's partial
# index (its predicate repeated, so that the planner may use it).
TENANT_CLAIMS_OF_SCOPE = (
    'SELECT 1 FROM chronicle.claims WHERE strpos(scope, chr(30)) > 0 AND scope COLLATE "C" >= $1'
    ' AND scope COLLATE "C" < $2 LIMIT 1'
)
# The first stored scope of a tenant's claims at or after $1 in code point
# order: on migration 30's partial index, so a walk over the per-tenant
# scopes (tenant_claim_scopes) skips each scope's tenants in one probe.
NEXT_TENANT_CLAIMS_SCOPE = (
    'SELECT scope FROM chronicle.claims WHERE strpos(scope, chr(30)) > 0 AND scope COLLATE "C" >= $1'
    ' ORDER BY scope COLLATE "C" LIMIT 1'
)
COMMANDS_PAGE = (
    f"SELECT {COMMAND_COLUMNS} FROM chronicle.commands WHERE command_id > $1 ORDER BY command_id LIMIT $2::bigint"
)

_IMPORTED_EVENTS = (
    "jsonb_to_recordset($1::jsonb) AS e(i bigint, id uuid, a text, t text, v bigint, e text, s int, p text,"
    " m jsonb, c text, u text, o text, r text, k text, at bigint, j jsonb)"
)
# The rule of service/store/importing.py: an event held already at its
# aggregate and version is skipped; any other must come right after its
# aggregate's last version (the batch's earlier events counted), but a
# tombstone ($2 is its type) stands alone: on an aggregate with no events, at
# any version. The latest version is a
# scalar subquery: an index probe per aggregate, evaluated only for the
# first new event of each (COALESCE stops at the previous one's). Events
# held already are found by a probe of the event_id index per incoming
# event (a LATERAL with LIMIT, which the planner cannot turn into a join):
# as a plain join it hashed the whole events table once per batch whenever
# the table looked small (tests/integration/test_postgres_plans.py).
IMPORT_EVENTS_CHECK = (
    f"WITH incoming AS (SELECT * FROM {_IMPORTED_EVENTS}),"
    " found AS (SELECT n.i, n.a, n.t, n.v, n.e, x.aggregate_id AS xa, x.version AS xv FROM incoming n"
    " LEFT JOIN LATERAL (SELECT y.aggregate_id, y.version FROM chronicle.events y WHERE y.event_id = n.id LIMIT 1) x"
    " ON true),"
    " fresh AS (SELECT f.i, f.v, f.e, f.t, coalesce(lag(f.v) OVER w, h.version, 0) + 1 AS expected,"
    " coalesce(lag(f.t) OVER w, h.aggregate_type) AS held_type"
    " FROM found f LEFT JOIN LATERAL (SELECT y.version, y.aggregate_type FROM chronicle.events y"
    " WHERE y.aggregate_id = f.a ORDER BY y.version DESC LIMIT 1) h ON true"
    " WHERE f.xa IS NULL WINDOW w AS (PARTITION BY f.a ORDER BY f.i)),"
    " problems AS (SELECT i, 'EVENT_ID_TAKEN' AS why FROM found WHERE xa IS NOT NULL AND (xa <> a OR xv <> v)"
    " UNION ALL SELECT i, 'AGGREGATE_NOT_EMPTY' FROM fresh"
    " WHERE (v < expected AND e <> $2) OR (e = $2 AND expected <> 1)"
    " UNION ALL SELECT i, 'VERSION_GAP' FROM fresh WHERE v > expected AND e <> $2"
    " UNION ALL SELECT i, 'AGGREGATE_TYPE_MISMATCH' FROM fresh WHERE v = expected AND held_type <> t)"
    f" SELECT chronicle.refuse('{IMPORT_REFUSED}', why || ' ' || i)"
    " FROM (SELECT i, why FROM problems ORDER BY i LIMIT 1) p"
)
# The new events at the end of the log, in the batch's order, under the
# position lock (taken only when there is something to write). Held ones
# are skipped by a scalar subquery per incoming event (an index probe; as
# NOT EXISTS it could become an anti-join over the whole table).
IMPORT_EVENTS = (
    f"WITH incoming AS (SELECT * FROM {_IMPORTED_EVENTS}),"
    " fresh AS (SELECT n.*, row_number() OVER (ORDER BY n.i) AS rn FROM incoming n"
    " WHERE (SELECT 1 FROM chronicle.events x WHERE x.event_id = n.id) IS NULL),"
    " head AS (UPDATE chronicle.log_head SET last_position = last_position + (SELECT count(*) FROM fresh)"
    " WHERE EXISTS (SELECT 1 FROM fresh) RETURNING last_position - (SELECT count(*) FROM fresh) AS base)"
    " INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
    " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at,"
    " payload_json)"
    " SELECT head.base + f.rn, f.id, f.a, f.t, f.v, f.e, f.s, decode(f.p, 'hex'), coalesce(f.m, '{}'::jsonb),"
    " f.c, f.u, f.o, f.r, f.k, " + _AT.format("f.at") + ", f.j FROM head, fresh f RETURNING position"
)
# Which of the aggregates (a JSON array of ids) were forgotten: an import
# leaves out what forgetting removed (their snapshots and claims).
FORGOTTEN_AGGREGATES = (
    "SELECT aggregate_id FROM chronicle.data_keys"
    " WHERE aggregate_id = ANY(ARRAY(SELECT jsonb_array_elements_text($1::jsonb))) AND wrapped_key IS NULL"
)
# A batch of imported snapshots or claims first takes the data key rows of
# its aggregates, shared, in id order ("Lock order": an aggregate's key row
# before its claims and snapshots), as CHECK_SUBJECTS does for read models:
# a forget that updated one of them first is waited for, and its tombstone
# seen by the statements after (which leave that aggregate's records out);
# one that comes later waits for this batch, then deletes what it wrote.
LOCK_KEYS_OF_IMPORTED = (
    "SELECT 1 FROM chronicle.data_keys"
    " WHERE aggregate_id = ANY(ARRAY(SELECT DISTINCT n.a FROM jsonb_to_recordset($1::jsonb) AS n(a text)))"
    " ORDER BY aggregate_id FOR SHARE"
)


def _live(aggregate_id: str) -> str:
    """Whether the aggregate (an SQL expression) is not forgotten."""
    return (
        f"NOT EXISTS (SELECT 1 FROM chronicle.data_keys k WHERE k.aggregate_id = {aggregate_id}"
        " AND k.wrapped_key IS NULL)"
    )


# The rule of service/store/importing.py for snapshots: each at most its
# aggregate's last version, and of its type (the last event's: one probe).
# A forgotten aggregate's are neither checked nor written.
IMPORT_SNAPSHOTS_CHECK = (
    f"SELECT chronicle.refuse('{IMPORT_REFUSED}', p.why || ' ' || p.i) FROM (SELECT d.i,"
    " CASE WHEN h.version IS NULL OR d.v > h.version THEN 'SNAPSHOT_AHEAD' ELSE 'AGGREGATE_TYPE_MISMATCH' END AS why"
    " FROM jsonb_to_recordset($1::jsonb) AS d(i bigint, a text, t text, v bigint)"
    " LEFT JOIN LATERAL (SELECT y.version, y.aggregate_type FROM chronicle.events y WHERE y.aggregate_id = d.a"
    " ORDER BY y.version DESC LIMIT 1) h ON true"
    f" WHERE (h.version IS NULL OR d.v > h.version OR d.t <> h.aggregate_type) AND {_live('d.a')}"
    " ORDER BY d.i LIMIT 1) p"
)
IMPORT_SNAPSHOTS = (
    f"INSERT INTO chronicle.snapshots ({SNAPSHOT_COLUMNS})"
    " SELECT d.a, d.t, d.v, d.st, d.s, decode(d.state, 'hex')"
    " FROM jsonb_to_recordset($1::jsonb) AS d(a text, t text, v bigint, st text, s int, state text)"
    f" WHERE {_live('d.a')} ON CONFLICT (aggregate_id, version) DO NOTHING RETURNING 1"
)
_IMPORTED_CLAIMS = "jsonb_to_recordset($1::jsonb) AS n(i bigint, s text, v text, a text)"
IMPORT_CLAIMS = (
    f"INSERT INTO chronicle.claims (scope, value, aggregate_id) SELECT n.s, n.v, n.a FROM {_IMPORTED_CLAIMS}"
    f" WHERE {_live('n.a')} ON CONFLICT (scope, value) DO NOTHING RETURNING 1"
)
# Claims an import gives up (an imported history released them), each only
# where its aggregate still holds it, in the transaction that takes the
# new ones.
RELEASE_IMPORTED_CLAIMS = (
    f"DELETE FROM chronicle.claims c USING {_IMPORTED_CLAIMS}"
    " WHERE c.scope = n.s AND c.value = n.v AND c.aggregate_id = n.a"
)
# After the insert, in the same transaction: each value held by its own
# aggregate? (A forgotten aggregate's value may be another's since.)
IMPORT_CLAIMS_CHECK = (
    f"SELECT chronicle.refuse('{IMPORT_REFUSED}', 'CLAIM_HELD ' || n.i || ' ' || c.aggregate_id)"
    f" FROM {_IMPORTED_CLAIMS} JOIN chronicle.claims c ON c.scope = n.s AND c.value = n.v"
    f" WHERE c.aggregate_id <> n.a AND {_live('n.a')} LIMIT 1"
)
IMPORT_COMMANDS = _INSERT_COMMANDS_FROM_JSON + " ON CONFLICT (command_id) DO NOTHING RETURNING 1"
_IMPORTED_KEYS = "jsonb_to_recordset($1::jsonb) AS n(i bigint, a text, m text, w text)"
IMPORT_DATA_KEYS_CHECK = (
    f"SELECT chronicle.refuse('{IMPORT_REFUSED}', 'DATA_KEY_CONFLICT ' || n.i)"
    f" FROM {_IMPORTED_KEYS} JOIN chronicle.data_keys d ON d.aggregate_id = n.a"
    " WHERE n.w IS NOT NULL AND d.wrapped_key IS NOT NULL"
    " AND (d.wrapped_key <> decode(n.w, 'hex') OR d.master_key_id IS DISTINCT FROM n.m) LIMIT 1"
)
IMPORT_DATA_KEYS = (
    "INSERT INTO chronicle.data_keys (aggregate_id, master_key_id, wrapped_key, forgotten_at)"
    f" SELECT n.a, n.m, decode(n.w, 'hex'), CASE WHEN n.w IS NULL THEN now() END FROM {_IMPORTED_KEYS}"
    " ON CONFLICT (aggregate_id) DO NOTHING RETURNING 1"
)
# A forgotten aggregate stays forgotten: an imported tombstone forgets a
# live key, as a forget does (its snapshots, claims, the documents that name
# it and the events projections and groups parked for it go too, and its command
# records' fingerprints and refusal texts are erased).
IMPORT_TOMBSTONES = (
    "WITH gone AS (UPDATE chronicle.data_keys d SET master_key_id = NULL, wrapped_key = NULL, forgotten_at = now()"
    f" FROM {_IMPORTED_KEYS} WHERE d.aggregate_id = n.a AND n.w IS NULL AND d.wrapped_key IS NOT NULL"
    " RETURNING d.aggregate_id),"
    " snapshots AS (DELETE FROM chronicle.snapshots WHERE aggregate_id IN (SELECT aggregate_id FROM gone)),"
    " claims AS (DELETE FROM chronicle.claims WHERE aggregate_id IN (SELECT aggregate_id FROM gone)),"
    " documents AS (DELETE FROM chronicle.projection_documents"
    " WHERE subjects && ARRAY(SELECT aggregate_id FROM gone)),"
    " parked AS (DELETE FROM chronicle.projection_parked_events WHERE aggregate_id IN (SELECT aggregate_id FROM gone)),"
    " group_parked AS (DELETE FROM chronicle.group_parked WHERE aggregate_id IN (SELECT aggregate_id FROM gone)),"
    f" commands AS (UPDATE chronicle.commands SET {_ERASED_TEXTS}"
    f" WHERE aggregate_id IN (SELECT aggregate_id FROM gone) AND fingerprint <> {_ERASED}),"
    " audit AS (UPDATE chronicle.refusals SET message = ''"
    " WHERE aggregate_id IN (SELECT aggregate_id FROM gone) AND message <> '')"
    " SELECT 1 FROM gone"
)
REMOVE_EVENTS = "DELETE FROM chronicle.events WHERE aggregate_id = $1"
REMOVE_CLAIMS = "DELETE FROM chronicle.claims WHERE aggregate_id = $1"
# What projections and subscription groups parked of the aggregate's events,
# which are gone (a parked event's error may quote its payload). Parked events
# are few: no index.
REMOVE_PARKED = "DELETE FROM chronicle.projection_parked_events WHERE aggregate_id = $1"
REMOVE_GROUP_PARKED = "DELETE FROM chronicle.group_parked WHERE aggregate_id = $1"
# Deleting an aggregate first locks its claims' rows, then takes the
# position lock: an append's order (see "Lock order" above), so that a
# deletion and a command releasing one of the aggregate's claims wait for
# each other (DeleteAggregate does not pass through the aggregate's worker).
# The position lock is a statement of its own, so that the next ones read
# after it: an append holding it commits before the deletion looks at the
# aggregate (and is deleted with it); one that comes later waits, then finds
# its expected version gone and is refused. Then one
# statement looks at the aggregate's last event and, unless it is a
# tombstone already or not at the expected version ($2; -1: any), deletes
# the events and appends the tombstone ($3, as IMPORT_EVENTS' JSON; $4 its
# type) at the next version and position; it says what it found.
LOCK_CLAIMS_OF_AGGREGATE = "SELECT 1 FROM chronicle.claims WHERE aggregate_id = $1 ORDER BY scope, value FOR UPDATE"
LOCK_LOG_HEAD = "UPDATE chronicle.log_head SET last_position = last_position"
DELETE_AGGREGATE = (
    "WITH last AS (SELECT version, event_type, aggregate_type FROM chronicle.events WHERE aggregate_id = $1"
    " ORDER BY version DESC LIMIT 1),"
    " chosen AS (SELECT version, aggregate_type FROM last WHERE event_type <> $4"
    " AND ($2::bigint < 0 OR version = $2::bigint)),"
    " gone AS (DELETE FROM chronicle.events WHERE aggregate_id = $1 AND EXISTS (SELECT 1 FROM chosen) RETURNING 1),"
    " head AS (UPDATE chronicle.log_head SET last_position = last_position + 1 WHERE EXISTS (SELECT 1 FROM chosen)"
    " RETURNING last_position),"
    " tomb AS (INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
    " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
    " SELECT head.last_position, t.id, $1, chosen.aggregate_type, chosen.version + 1, t.e, t.s, decode(t.p, 'hex'),"
    " coalesce(t.m, '{}'::jsonb), t.c, t.u, t.o, t.r, t.k, " + _AT.format("t.at") + " FROM head, chosen,"
    " jsonb_to_recordset($3::jsonb) AS t(id uuid, e text, s int, p text, m jsonb, c text, u text, o text, r text,"
    " k text, at bigint) RETURNING position)"
    " SELECT (SELECT version FROM last), (SELECT event_type FROM last), (SELECT aggregate_type FROM last),"
    " (SELECT position FROM tomb)"
)
LAST_EVENT = f"SELECT {EVENT_COLUMNS} FROM chronicle.events WHERE aggregate_id = $1 ORDER BY version DESC LIMIT 1"
# The aggregate's snapshots, claims and parked events, if its tombstone ($2)
# was just written.
DELETE_SNAPSHOTS_OF_DELETED = (
    "DELETE FROM chronicle.snapshots WHERE aggregate_id = $1"
    " AND EXISTS (SELECT 1 FROM chronicle.events WHERE aggregate_id = $1 AND event_id = $2::uuid)"
)
REMOVE_CLAIMS_OF_DELETED = (
    "DELETE FROM chronicle.claims WHERE aggregate_id = $1"
    " AND EXISTS (SELECT 1 FROM chronicle.events WHERE aggregate_id = $1 AND event_id = $2::uuid)"
)
REMOVE_PARKED_OF_DELETED = REMOVE_PARKED + (
    " AND EXISTS (SELECT 1 FROM chronicle.events WHERE aggregate_id = $1 AND event_id = $2::uuid)"
)
REMOVE_GROUP_PARKED_OF_DELETED = REMOVE_GROUP_PARKED + (
    " AND EXISTS (SELECT 1 FROM chronicle.events WHERE aggregate_id = $1 AND event_id = $2::uuid)"
)
# Each aggregate's last event, a page of aggregates at a time: the next id
# found by one index probe each (a loose index scan), not by reading every
# event.
AGGREGATES_PAGE = (
    "WITH RECURSIVE ids(id) AS ("
    " (SELECT aggregate_id FROM chronicle.events WHERE aggregate_id > $1 ORDER BY aggregate_id LIMIT 1)"
    " UNION ALL SELECT (SELECT e.aggregate_id FROM chronicle.events e WHERE e.aggregate_id > ids.id"
    " ORDER BY e.aggregate_id LIMIT 1) FROM ids WHERE ids.id IS NOT NULL)"
    " SELECT l.aggregate_id, l.aggregate_type, l.version, l.event_type, "
    + _MICROS.format("l.recorded_at")
    + " FROM (SELECT id FROM ids WHERE id IS NOT NULL LIMIT $2::bigint) i"
    " CROSS JOIN LATERAL (SELECT * FROM chronicle.events e WHERE e.aggregate_id = i.id ORDER BY e.version DESC"
    " LIMIT 1) l ORDER BY l.aggregate_id"
)

# -- retention ----------------------------------------------------------------
#
# Oldest first, a batch per operation, found by the time indexes. SKIP LOCKED:
# replicas pruning at once take different rows instead of waiting for each
# other. The batch's keys are gathered into an array first, then deleted
# through the primary key: written as ``IN (SELECT …)`` it became a hash
# semi-join that read the whole table for every batch of 500. No statement
# here touches log_head or the events: appends never wait for a prune.

PRUNE_COMMANDS = (
    "DELETE FROM chronicle.commands WHERE command_id = ANY (ARRAY(SELECT command_id FROM chronicle.commands"
    " WHERE recorded_at < " + _AT.format("$1::bigint") + " ORDER BY recorded_at LIMIT $2::bigint"
    " FOR UPDATE SKIP LOCKED))"
)
PRUNE_REFUSALS = (
    "DELETE FROM chronicle.refusals WHERE id = ANY (ARRAY(SELECT id FROM chronicle.refusals"
    " WHERE (outcome = 'refused' OR dry_run) AND recorded_at < " + _AT.format("$1::bigint") + " ORDER BY recorded_at"
    " LIMIT $2::bigint FOR UPDATE SKIP LOCKED))"
)

# -- subscription groups (grouping.py) ------------------------------------------
#
# A group's row and its segments are created by one statement (the segments
# only if the group row was inserted); deleting the group row cascades to
# its segments and parked events. A segment's checkpoint moves from the
# position its holder read (VERSION_MOVED otherwise: another holder moved
# it, or the group is gone), after CHECK_FENCING when the holder gives its
# lease's token. Consumers' leases are migration 10's, in the lease group
# GROUP_LEASE_PREFIX || name.

_GROUP_COLUMNS = ", ".join(GROUP_FIELDS)
_PARKED_COLUMNS = ", ".join(PARKED_FIELDS)
# sql_common.parked_from_row: the microseconds exact (extract gives numeric).
_PARKED_READ = f"{_PARKED_COLUMNS}, event_type, (extract(epoch FROM parked_at) * 1000000)::bigint"
CREATE_GROUP = (
    f"WITH g AS (INSERT INTO chronicle.subscription_groups ({_GROUP_COLUMNS})"
    " VALUES ($1, $2::jsonb, $3::bigint, $4::integer, $5::integer, $6::bigint, $7::bigint, $8::bigint, $9,"
    " $10::integer)"
    " ON CONFLICT (name) DO NOTHING RETURNING name, start_position, segments)"
    " INSERT INTO chronicle.group_segments (group_name, segment, position)"
    " SELECT g.name, s, g.start_position FROM g, generate_series(0, g.segments - 1) AS s"
)
# $1: a group's name, or NULL for every group. Groups are listed in code
# point order ("C": byte order in UTF-8), as the other stores list them,
# whatever the database's collation (a linguistic one puts "a_1" before
# "a-1" and "b" before "B").
_ONE_OR_ALL = "($1::text IS NULL OR {} = $1)"
LOAD_GROUPS = (
    f"SELECT {_GROUP_COLUMNS.replace('filter', 'filter::text')} FROM chronicle.subscription_groups"
    f' WHERE {_ONE_OR_ALL.format("name")} ORDER BY name COLLATE "C"'
)
LOAD_GROUP_SEGMENTS = (
    "SELECT group_name, segment, position, acknowledged, skipped, dismissed FROM chronicle.group_segments"
    f" WHERE {_ONE_OR_ALL.format('group_name')} ORDER BY group_name, segment"
)
COUNT_GROUP_PARKED = (
    f"SELECT group_name, count(*) FROM chronicle.group_parked WHERE {_ONE_OR_ALL.format('group_name')}"
    " GROUP BY group_name"
)
_CONSUMER_GROUPS = (
    "(CASE WHEN $1::text IS NULL THEN left(lease_group, length($2)) = $2 ELSE lease_group = $2 || $1 END)"
)
LOAD_GROUP_CONSUMERS = (
    f"SELECT substr(lease_group, length($2) + 1), member_id FROM chronicle.lease_members WHERE {_CONSUMER_GROUPS}"
    " AND expires_at > now()"
)
# Each live consumer's last report, its ages in seconds as of now (the database's clock).
LOAD_GROUP_REPORTS = (
    "SELECT r.group_name, r.member_id, r.replica_id, r.replica_address, r.in_flight,"
    " extract(epoch FROM now() - r.answered_at)::float8, extract(epoch FROM now() - r.reported_at)::float8,"
    " extract(epoch FROM now() - r.connected_at)::float8"
    " FROM chronicle.group_consumer_reports AS r JOIN chronicle.lease_members AS m"
    " ON m.lease_group = $2 || r.group_name AND m.member_id = r.member_id AND m.expires_at > now()"
    f" WHERE {_ONE_OR_ALL.format('r.group_name')}"
)
# A consumer's report replaces its last; the group's reports an hour old go.
# The time a session joined is kept as its first report said it: each later
# one computes it again from its own clock, a little off each time.
UPSERT_CONSUMER_REPORT = (
    "INSERT INTO chronicle.group_consumer_reports"
    " (group_name, member_id, replica_id, replica_address, in_flight, answered_at, reported_at, connected_at)"
    " VALUES ($1, $2, $3, $4, $5::integer, now() - $6::bigint * interval '1 millisecond', now(),"
    " now() - $7::bigint * interval '1 millisecond')"
    " ON CONFLICT (group_name, member_id) DO UPDATE SET replica_id = excluded.replica_id,"
    " replica_address = excluded.replica_address, in_flight = excluded.in_flight,"
    " answered_at = excluded.answered_at, reported_at = excluded.reported_at,"
    " connected_at = COALESCE(chronicle.group_consumer_reports.connected_at, excluded.connected_at)"
)
FORGET_OLD_REPORTS = (
    "DELETE FROM chronicle.group_consumer_reports WHERE group_name = $1 AND reported_at < now() - interval '1 hour'"
)
DELETE_GROUP_REPORTS = "DELETE FROM chronicle.group_consumer_reports WHERE group_name = $1"
LOAD_GROUP_HOLDERS = (
    f"SELECT substr(lease_group, length($2) + 1), name, owner FROM chronicle.leases WHERE {_CONSUMER_GROUPS}"
    " AND owner IS NOT NULL AND expires_at > now()"
)
DELETE_GROUP = "DELETE FROM chronicle.subscription_groups WHERE name = $1 RETURNING 1"
UPDATE_GROUP = (
    "UPDATE chronicle.subscription_groups SET max_attempts = $1::integer, retry_backoff_ms = $2::bigint,"
    " max_retry_backoff_ms = $3::bigint, ack_timeout_ms = $4::bigint, max_unanswered_timeouts = $5::integer"
    " WHERE name = $6 AND COALESCE(incarnation, '') = $7 RETURNING 1"
)
DELETE_GROUP_LEASES = "DELETE FROM chronicle.leases WHERE lease_group = $1"
DELETE_GROUP_MEMBERS = "DELETE FROM chronicle.lease_members WHERE lease_group = $1"
MOVE_SEGMENT = (
    "WITH moved AS (UPDATE chronicle.group_segments SET position = $4::bigint,"
    " acknowledged = acknowledged + $5::bigint, skipped = skipped + $6::bigint, updated_at = now()"
    " WHERE group_name = $1 AND segment = $2::integer AND position = $3::bigint"
    # Never past the log's end: a session that read a log since gone back
    # (a restore, a failover) would make its skip of the reused positions lasting.
    " AND $4::bigint <= (SELECT last_position FROM chronicle.log_head) RETURNING 1)"
    f" SELECT CASE WHEN EXISTS (SELECT 1 FROM moved) THEN 0 ELSE chronicle.refuse('{VERSION_MOVED}', $1) END"
)
# A segment's settled events above its checkpoint (migration 26).
FORGET_SETTLED_PASSED = (
    "DELETE FROM chronicle.group_settled_ahead WHERE group_name = $1 AND segment = $2::integer"
    " AND position <= $3::bigint"
)
FORGET_SETTLED_AHEAD = "DELETE FROM chronicle.group_settled_ahead WHERE group_name = $1 AND segment = $2::integer"
KEEP_SETTLED_AHEAD = (
    "INSERT INTO chronicle.group_settled_ahead (group_name, segment, event_id, position, outcome)"
    " SELECT $1, $2::integer, s.event_id, s.position, s.outcome"
    " FROM jsonb_to_recordset($3::jsonb) AS s(event_id text, position bigint, outcome text)"
    " ON CONFLICT (group_name, segment, event_id) DO UPDATE SET position = excluded.position,"
    " outcome = excluded.outcome"
)
SETTLED_AHEAD = (
    "SELECT s.event_id, s.position, s.outcome FROM chronicle.group_settled_ahead AS s"
    " JOIN chronicle.group_segments AS g ON g.group_name = s.group_name AND g.segment = s.segment"
    " WHERE s.group_name = $1 AND s.segment = $2::integer AND s.position > g.position"
    " ORDER BY s.position, s.event_id"
)
# When a parked event was parked: the server's time, given in microseconds
# (as SQLite keeps it; 0, unknown, is the epoch and reads back as 0), kept
# in migration 13's parked_at, which servers from before migration 27 set
# to now() themselves.
_PARKED_AT = "timestamptz 'epoch' + {}::bigint * interval '1 microsecond'"
PARK_GROUP_EVENTS = (
    f"INSERT INTO chronicle.group_parked (group_name, {_PARKED_COLUMNS}, event_type, parked_at)"
    " SELECT $1, p.event_id, p.position, p.segment, p.aggregate_id, p.attempts, p.reason, false, p.event_type,"
    f" {_PARKED_AT.format('p.parked_at_us')}"
    " FROM jsonb_to_recordset($2::jsonb)"
    " AS p(event_id text, position bigint, segment integer, aggregate_id text, attempts integer, reason text,"
    " event_type text, parked_at_us bigint)"
    " WHERE EXISTS (SELECT 1 FROM chronicle.subscription_groups WHERE name = $1)"
    " ON CONFLICT (group_name, event_id) DO UPDATE SET attempts = excluded.attempts, reason = excluded.reason,"
    " replaying = false, event_type = excluded.event_type, parked_at = excluded.parked_at"
)
# An acknowledged replay: its parked row goes, and its segment counts it as
# acknowledged (parking passed it unacknowledged), once: only rows deleted count.
UNPARK_GROUP_EVENTS = (
    "WITH gone AS (DELETE FROM chronicle.group_parked WHERE group_name = $1 AND event_id = ANY($2::text[])"
    " RETURNING segment), counted AS (SELECT segment, count(*) AS n FROM gone GROUP BY segment)"
    " UPDATE chronicle.group_segments AS s SET acknowledged = s.acknowledged + counted.n FROM counted"
    " WHERE s.group_name = $1 AND s.segment = counted.segment"
)
REPARK_GROUP_EVENTS = (
    "UPDATE chronicle.group_parked AS p SET attempts = r.attempts, reason = r.reason, replaying = false,"
    f" event_type = r.event_type, parked_at = {_PARKED_AT.format('r.parked_at_us')}"
    " FROM jsonb_to_recordset($2::jsonb)"
    " AS r(event_id text, attempts integer, reason text, event_type text, parked_at_us bigint)"
    " WHERE p.group_name = $1 AND p.event_id = r.event_id"
)
# Dismissing parked events, all or none: their rows locked and counted
# (PARKED_MISSING if one is not there: nothing deleted), then deleted, in one
# transaction; a replay's ack waits for it, and then removes nothing.
LOCK_GROUP_PARKED = (
    "SELECT CASE WHEN (SELECT count(*) FROM (SELECT 1 FROM chronicle.group_parked WHERE group_name = $1"
    " AND event_id = ANY($2::text[]) FOR UPDATE) AS locked) = cardinality($2::text[]) THEN 0"
    f" ELSE chronicle.refuse('{PARKED_MISSING}', $1) END"
)
# Each row deleted counts once in its segment: as skipped when a consumer
# skipped the replay ($3), as dismissed when an operator dismissed it.
DISMISS_GROUP_PARKED = (
    "WITH gone AS (DELETE FROM chronicle.group_parked WHERE group_name = $1 AND event_id = ANY($2::text[])"
    " RETURNING segment), counted AS (SELECT segment, count(*) AS n FROM gone GROUP BY segment)"
    " UPDATE chronicle.group_segments AS s SET skipped = s.skipped + CASE WHEN $3::boolean THEN counted.n ELSE 0 END,"
    " dismissed = s.dismissed + CASE WHEN $3::boolean THEN 0 ELSE counted.n END FROM counted"
    " WHERE s.group_name = $1 AND s.segment = counted.segment"
)
LIST_GROUP_PARKED = (
    # After a position, or after a position and an event id within it ($3
    # NULL: the former; event_id > NULL is never true).
    f"SELECT {_PARKED_READ} FROM chronicle.group_parked WHERE group_name = $1 AND position >= $2::bigint"
    " AND (position > $2::bigint OR event_id > $3::text) ORDER BY position, event_id LIMIT $4::bigint"
)
GROUP_PARKED_EVENTS = (
    f"SELECT {_PARKED_READ} FROM chronicle.group_parked WHERE group_name = $1 AND event_id = ANY($2::text[])"
    " ORDER BY position, event_id"
)
REPLAY_GROUP_PARKED = (
    "WITH marked AS (UPDATE chronicle.group_parked SET replaying = true WHERE group_name = $1"
    " AND (cardinality($2::text[]) = 0 OR event_id = ANY($2::text[])) RETURNING 1) SELECT count(*) FROM marked"
)
GROUP_PARKED_TO_REPLAY = (
    f"SELECT {_PARKED_READ} FROM chronicle.group_parked WHERE group_name = $1 AND replaying"
    " AND segment = ANY($2::integer[]) ORDER BY position, event_id LIMIT $3::bigint"
)
