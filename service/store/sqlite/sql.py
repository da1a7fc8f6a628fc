"""Every SQL statement of the SQLite store, in one place.

Parameters are ``?``, in order; a statement built around a WHERE condition
(``sql_common``) takes the condition's parameters, then its LIMIT if it has
one. Identifiers are constants of this module, values are always
parameters. Tables hold what the records hold: times as microseconds
since the epoch, ids and JSON as text, bytes as blobs, so rows are read in
the columns' order of ``sql_common`` with no conversion in SQL.

Positions and readers. SQLite lets one writer into the file at a time, and
a write that checks something before it writes takes the write lock first
(``BEGIN IMMEDIATE``): positions are assigned and committed in the same
order, so a reader by position can never skip an event that commits later
with a lower position.
"""

from __future__ import annotations

import functools

from service.store.records import MAX_OTHER_SUBJECTS, PARKED_COMMAND_TYPE, TOMBSTONE_EVENT_TYPE
from service.store.sql_common import (
    AUDIT_FIELDS,
    COMMAND_FIELDS,
    EVENT_FIELDS,
    GROUP_FIELDS,
    PARKED_FIELDS,
    SNAPSHOT_FIELDS,
)

# -- the connection -----------------------------------------------------------

# Durability: a commit is on disk when it returns (WAL journal, fsync at
# every commit). A writer from another process is waited for, up to 5 s,
# before the file counts as locked. Deleted and overwritten content is
# zeroed in the file (secure_delete), so that forgetting an aggregate leaves
# none of its wrapped key, snapshots or documents in free space.
BUSY_TIMEOUT = "PRAGMA busy_timeout=5000"
CONNECTION_SETUP = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA synchronous=FULL",
    BUSY_TIMEOUT,
    "PRAGMA secure_delete=ON",
)
# The lease heartbeats' connection (store.py says why it may).
LEASES_SYNCHRONOUS = "PRAGMA synchronous=NORMAL"
# After a forget: copy the WAL into the file and empty it, so that the old
# pages (which held the wrapped key) are not left in the WAL file. Returns
# (busy, WAL frames, frames copied); busy: a reader elsewhere held it back.
CHECKPOINT_TRUNCATE = "PRAGMA wal_checkpoint(TRUNCATE)"
PING = "SELECT 1"
# A write takes the file's write lock at once, before it reads what it
# checks; a read sees one snapshot of the file until it ends.
BEGIN_WRITE = "BEGIN IMMEDIATE"
BEGIN_READ = "BEGIN"
COMMIT = "COMMIT"
ROLLBACK = "ROLLBACK"
SCHEMA_VERSION = "PRAGMA user_version"


# The compatibility floor of each schema version (sql_common.Migration), a
# row written with each migration; the file's floor is its version's (none:
# a version no floor-aware Chronicle wrote). The table is missing in a file
# no floor-aware Chronicle has migrated.
CREATE_SCHEMA_FLOORS = (
    "CREATE TABLE IF NOT EXISTS schema_compatibility (version INTEGER PRIMARY KEY, compatible_from INTEGER NOT NULL)"
)
SET_SCHEMA_FLOOR = "INSERT OR REPLACE INTO schema_compatibility (version, compatible_from) VALUES (?, ?)"
SCHEMA_FLOORS_EXIST = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_compatibility'"
SCHEMA_FLOOR = "SELECT compatible_from FROM schema_compatibility WHERE version = ?"


def set_schema_version(version: int) -> str:
    """PRAGMA takes no parameters; ``version`` is an int, written as one."""
    return f"PRAGMA user_version = {int(version)}"


EVENT_COLUMNS = ", ".join(EVENT_FIELDS)
COMMAND_COLUMNS = ", ".join(COMMAND_FIELDS)
AUDIT_COLUMNS = ", ".join((*AUDIT_FIELDS, "reason", "message", "outcome", "dry_run", "peer", "occurrences"))
SNAPSHOT_COLUMNS = ", ".join(SNAPSHOT_FIELDS)


def _values(columns: str) -> str:
    """``VALUES (?, ?, …)``, one parameter per column of ``columns``."""
    return f"VALUES ({', '.join('?' for _ in columns.split(','))})"


# -- appends --------------------------------------------------------------------

CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_id = ?"
_NEW_EVENT_COLUMNS = (
    "event_id, aggregate_id, aggregate_type, version, event_type, schema_version, payload, metadata,"
    " command_id, user_id, origin, correlation_id, causation_id, recorded_at_us"
)
# The position is the table's INTEGER PRIMARY KEY AUTOINCREMENT.
INSERT_EVENT = f"INSERT INTO events ({_NEW_EVENT_COLUMNS}) {_values(_NEW_EVENT_COLUMNS)} RETURNING position"
# What the unique key on (aggregate_id, version) says when it refuses a row.
VERSION_TAKEN = "events.aggregate_id, events.version"
INSERT_COMMAND = f"INSERT INTO commands ({COMMAND_COLUMNS}) {_values(COMMAND_COLUMNS)}"
# Claims: the primary key (scope, value) decides; holding it already is fine.
TAKE_CLAIM = "INSERT INTO claims (scope, value, aggregate_id) VALUES (?, ?, ?) ON CONFLICT (scope, value) DO NOTHING"
RELEASE_CLAIM = "DELETE FROM claims WHERE scope = ? AND value = ? AND aggregate_id = ?"

# -- reads of one aggregate ----------------------------------------------------

FIND_COMMAND = f"SELECT {COMMAND_COLUMNS} FROM commands WHERE command_id = ?"
HEAD = "SELECT aggregate_type, version, event_type FROM events WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1"


# Ids compare as bytes (BINARY collation), so every id starting with the
# prefix is at or after it: the range start lets the (aggregate_id, version)
# index begin there, and the walk stops after ``limit`` aggregates.
@functools.cache
def list_aggregates(*, upper: bool, typed: bool) -> str:
    """A page of aggregates by id range: the (aggregate_id, version) index
    walked from the lower bounds (?1: the prefix, ?2: the page's last id)
    to the prefix's end (?3, ``records.prefix_end``: none for the empty
    prefix), ids comparing by BINARY (UTF-8 bytes: code point order), so
    the walk stops where the prefix's ids end. ?4 the aggregate type, ?5
    the limit. Deleted: it holds its tombstone (its last event); keyed and
    forgotten: its data_keys row, live or erased."""
    where = "e.aggregate_id >= ?1 AND e.aggregate_id > ?2"
    where += " AND e.aggregate_id < ?3" if upper else ""
    where += " AND e.aggregate_type = ?4" if typed else ""
    return (
        "SELECT e.aggregate_id, min(e.aggregate_type), max(e.version),"
        f" max(e.event_type = '{TOMBSTONE_EVENT_TYPE}'),"
        " EXISTS (SELECT 1 FROM data_keys k WHERE k.aggregate_id = e.aggregate_id),"
        " EXISTS (SELECT 1 FROM data_keys k WHERE k.aggregate_id = e.aggregate_id AND k.wrapped_key IS NULL)"
        f" FROM events e WHERE {where} GROUP BY e.aggregate_id ORDER BY e.aggregate_id LIMIT ?5"
    )


VERSION_AT = (
    "SELECT COALESCE("
    " (SELECT MIN(version) - 1 FROM events WHERE aggregate_id = ? AND recorded_at_us > ?),"
    " (SELECT COALESCE(MAX(version), 0) FROM events WHERE aggregate_id = ?))"
)


def read_aggregate(where: str, *, backwards: bool, limited: bool) -> str:
    order = " DESC" if backwards else ""
    limit = " LIMIT ?" if limited else ""
    return f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY version{order}{limit}"


# -- the global log ---------------------------------------------------------------


# An event's size for paging by size (records.EVENT_ENVELOPE_BYTES).
_EVENT_SIZE = "256 + length(payload) + CASE WHEN metadata = '{}' THEN 0 ELSE length(metadata) END"


def read_log(where: str) -> str:
    """At most ``?`` events after the conditions' (the limit), ending with the
    first that brings their size to ``?`` (the bytes); the last column says
    how many events the limit alone allowed, so the reader knows whether the
    page was cut."""
    return (
        f"WITH page AS (SELECT {EVENT_COLUMNS}, {_EVENT_SIZE} AS size FROM events WHERE {where}"
        " ORDER BY position LIMIT ?),"
        " sized AS (SELECT page.*, sum(size) OVER (ORDER BY position) - size AS before FROM page)"
        " SELECT *, (SELECT count(*) FROM page) FROM sized WHERE before < ? ORDER BY position"
    )


# The last position handed out (as PostgreSQL's log_head row): AUTOINCREMENT
# keeps it in sqlite_sequence, so it does not go back when the events that
# end the log are removed (an import replacing their aggregate); only with the
# database (a restore), which a live reader then takes for LOG_REWOUND.
LOG_HEAD = (
    "SELECT MAX(COALESCE((SELECT MAX(position) FROM events), 0),"
    " COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0))"
)
# With a page of the log: the log's end, the id of the event stored there
# and that of the event stored at the page's start (``?``), NULL where none
# is (two lookups by the primary key; see records.LogPage).
LOG_END = (
    f"WITH h(head) AS ({LOG_HEAD}) SELECT head, (SELECT event_id FROM events WHERE position = head),"
    " (SELECT event_id FROM events WHERE position = ?) FROM h"
)
# Every (aggregate type, event type, schema version) stored, for the
# pre-deploy check: a scan of the whole table (docs/plugins.md).
STORED_EVENT_KINDS = "SELECT aggregate_type, event_type, schema_version FROM events GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"

# -- claims -------------------------------------------------------------------------

CLAIM_OWNER = "SELECT aggregate_id FROM claims WHERE scope = ? AND value = ?"
CLAIMS_IN_CLEAR = "SELECT scope, value, aggregate_id FROM claims WHERE substr(value, 1, 1) <> ? LIMIT ?"

# -- snapshots ----------------------------------------------------------------------

# Nothing is written once the aggregate's last event is a tombstone (the
# last parameter): a snapshot saved in the background after a deletion must
# not put the deleted state back (the writer's transactions run one at a time).
SAVE_SNAPSHOT = (
    f"INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) SELECT {', '.join('?' for _ in SNAPSHOT_FIELDS)}"
    " WHERE (SELECT event_type FROM events WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1) IS NOT ?"
    # Built through the event that is still there (Snapshot.through_event_id).
    " AND (? IS NULL OR EXISTS (SELECT 1 FROM events WHERE aggregate_id = ? AND version = ? AND event_id = ?))"
    " ON CONFLICT (aggregate_id, version) DO UPDATE SET aggregate_type = excluded.aggregate_type,"
    " state_type = excluded.state_type, schema_version = excluded.schema_version, state = excluded.state"
)
# Below the newest ``keep`` (the OFFSET is keep - 1); with fewer, the
# subquery is NULL and nothing goes.
PRUNE_SNAPSHOTS = (
    "DELETE FROM snapshots WHERE aggregate_id = ? AND version <"
    " (SELECT version FROM snapshots WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1 OFFSET ?)"
)
# The newest at or below a version (any version when it is NULL).
LOAD_SNAPSHOT = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE aggregate_id = ?"
    " AND version <= COALESCE(?, version) ORDER BY version DESC LIMIT 1"
)
# The same, of one kind (aggregate type, state type with its fingerprint,
# state schema version): the newest snapshot the loader can use, under any
# newer ones it cannot.
LOAD_SNAPSHOT_OF_KIND = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE aggregate_id = ?"
    " AND version <= COALESCE(?, version) AND aggregate_type = ? AND state_type = ? AND schema_version = ?"
    " ORDER BY version DESC LIMIT 1"
)

# -- projections --------------------------------------------------------------------

PROJECTION_POSITION = "SELECT position FROM projection_checkpoints WHERE name = ?"
# The declaration's version a projection's documents were built by (migration 23).
PROJECTION_VERSION = "SELECT version FROM projection_checkpoints WHERE name = ?"
START_VERSIONED_CHECKPOINT = "INSERT INTO projection_checkpoints (name, position, version) VALUES (?, 0, ?)"
LOAD_DOCUMENT = "SELECT key, type_name, data FROM projection_documents WHERE projection = ? AND key = ?"
# Many keys, one statement: the keys as one JSON array (no limit on their
# number, as there is on a statement's parameters).
LOAD_DOCUMENTS = (
    "SELECT key, type_name, data FROM projection_documents"
    " WHERE projection = ? AND key IN (SELECT value FROM json_each(?))"
)
DELETE_DOCUMENT = "DELETE FROM projection_documents WHERE projection = ? AND key = ?"
PUT_DOCUMENT = (
    "INSERT INTO projection_documents (projection, key, type_name, data, due_us) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (projection, key) DO UPDATE SET type_name = excluded.type_name, data = excluded.data,"
    " due_us = excluded.due_us"
)
START_CHECKPOINT = "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
MOVE_CHECKPOINT = (
    "INSERT INTO projection_checkpoints (name, position) VALUES (?, ?)"
    " ON CONFLICT (name) DO UPDATE SET position = excluded.position"
)
# A document's subjects are those of its last write (the stale ones go, new
# ones are added: the same ones again write nothing). The subjects a batch
# names that are forgotten. JSON arrays of ids as parameters.
DELETE_STALE_SUBJECTS = (
    "DELETE FROM projection_subjects WHERE projection = ? AND key = ?"
    " AND subject NOT IN (SELECT value FROM json_each(?))"
)
PUT_DOCUMENT_SUBJECT = "INSERT OR IGNORE INTO projection_subjects (projection, key, subject) VALUES (?, ?, ?)"
FORGOTTEN_SUBJECTS = (
    "SELECT aggregate_id FROM data_keys WHERE wrapped_key IS NULL AND aggregate_id IN (SELECT value FROM json_each(?))"
)
PARKED_EVENT_COLUMNS = "projection, position, event_id, event_type, aggregate_id, error, attempts, parked_at_us"
PARK_EVENT = (
    f"INSERT INTO projection_parked_events ({PARKED_EVENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (projection, position, event_id) DO NOTHING"
)
PARKED_EVENTS = (
    f"SELECT {PARKED_EVENT_COLUMNS} FROM projection_parked_events WHERE projection = ?"
    " AND (position, event_id) > (?, ?) ORDER BY position, event_id LIMIT ?"
)
COUNT_PARKED_EVENTS = "SELECT count(*) FROM projection_parked_events WHERE projection = ?"
# The type is written out, not a parameter: only then does SQLite take the
# partial index of parked commands (migration 13).
COUNT_PARKED_COMMANDS = (
    f"SELECT count(*) FROM projection_documents WHERE projection = ? AND type_name = '{PARKED_COMMAND_TYPE}'"
)
# A reaction's deadlines: documents with a due time, by the partial index
# of those (migration 19).
DUE_DOCUMENTS = (
    "SELECT key, type_name, data FROM projection_documents WHERE projection = ? AND due_us IS NOT NULL"
    " AND due_us <= ? ORDER BY due_us, key LIMIT ?"
)
DUE_SUMMARY = "SELECT count(*), min(due_us) FROM projection_documents WHERE projection = ? AND due_us IS NOT NULL"
RESET_DOCUMENTS = "DELETE FROM projection_documents WHERE projection = ?"
RESET_SUBJECTS = "DELETE FROM projection_subjects WHERE projection = ?"
RESET_PARKED_EVENTS = "DELETE FROM projection_parked_events WHERE projection = ?"
RESET_CHECKPOINT = "UPDATE projection_checkpoints SET position = 0, version = coalesce(?, version) WHERE name = ?"
# A stored projection's deletion, a page at a time (see the PostgreSQL
# store's): the keys of a page first, then their documents and subjects.
DELETE_CHECKPOINT = "DELETE FROM projection_checkpoints WHERE name = ?"
DOCUMENT_KEYS_PAGE = "SELECT key FROM projection_documents WHERE projection = ? ORDER BY key LIMIT ?"
DELETE_PARKED_EVENTS_PAGE = (
    "DELETE FROM projection_parked_events WHERE rowid IN"
    " (SELECT rowid FROM projection_parked_events WHERE projection = ? ORDER BY position, event_id LIMIT ?)"
)
# Every stored name; documents' and parked events' distinct names by a walk
# of their primary keys (one probe per name, not a scan).
STORED_PROJECTIONS = (
    "WITH RECURSIVE documents(name) AS ("
    " SELECT min(projection) FROM projection_documents"
    " UNION ALL SELECT (SELECT min(projection) FROM projection_documents WHERE projection > d.name)"
    " FROM documents d WHERE d.name IS NOT NULL),"
    " parked(name) AS ("
    " SELECT min(projection) FROM projection_parked_events"
    " UNION ALL SELECT (SELECT min(projection) FROM projection_parked_events WHERE projection > p.name)"
    " FROM parked p WHERE p.name IS NOT NULL),"
    " names AS (SELECT name FROM projection_checkpoints UNION SELECT name FROM documents WHERE name IS NOT NULL"
    " UNION SELECT name FROM parked WHERE name IS NOT NULL)"
    " SELECT n.name, coalesce(c.position, 0) FROM names n"
    " LEFT JOIN projection_checkpoints c ON c.name = n.name ORDER BY n.name"
)


@functools.cache
def list_documents(*, lower_inclusive: bool, upper: bool, descending: bool) -> str:
    """A page of documents by key range (``DocumentRange.bounds``), served
    by the primary key's index: (projection, lower[, upper], limit)."""
    bounds = f"key {'>=' if lower_inclusive else '>'} ?" + (" AND key < ?" if upper else "")
    return (
        f"SELECT key, type_name, data FROM projection_documents WHERE projection = ? AND {bounds}"
        f" ORDER BY key {'DESC' if descending else 'ASC'} LIMIT ?"
    )


def count_documents(*, upper: bool) -> str:
    """How many documents a key range holds, up to a limit, from the primary
    key's index alone: (projection, lower[, upper], limit)."""
    bounds = "key >= ?" + (" AND key < ?" if upper else "")
    return f"SELECT count(*) FROM (SELECT 1 FROM projection_documents WHERE projection = ? AND {bounds} LIMIT ?)"


# -- audit --------------------------------------------------------------------------

RECORD_AUDIT_ENTRY = f"INSERT INTO refusals ({AUDIT_COLUMNS}) {_values(AUDIT_COLUMNS)}"


def audited_commands(where: str) -> str:
    return f"SELECT {COMMAND_COLUMNS} FROM commands WHERE {where} ORDER BY recorded_at_us DESC LIMIT ?"


def audited_others(where: str) -> str:
    return f"SELECT {AUDIT_COLUMNS} FROM refusals WHERE {where} ORDER BY recorded_at_us DESC LIMIT ?"


# -- data keys ----------------------------------------------------------------------

# Every creator reads back the key that won (LOAD_DATA_KEY).
CREATE_DATA_KEY = (
    "INSERT INTO data_keys (aggregate_id, master_key_id, wrapped_key, created_at_us)"
    " VALUES (?, ?, ?, ?) ON CONFLICT (aggregate_id) DO NOTHING"
)
LOAD_DATA_KEY = "SELECT aggregate_id, master_key_id, wrapped_key FROM data_keys WHERE aggregate_id = ?"
FORGET_DATA_KEY = (
    "UPDATE data_keys SET master_key_id = NULL, wrapped_key = NULL, forgotten_at_us = ?"
    " WHERE aggregate_id = ? AND wrapped_key IS NOT NULL"
)
# When the aggregate's key was erased (the first forget's time: FORGET_DATA_KEY
# writes it only over a live key).
FORGOTTEN_AT = "SELECT forgotten_at_us FROM data_keys WHERE aggregate_id = ?"
DELETE_SNAPSHOTS = "DELETE FROM snapshots WHERE aggregate_id = ?"
# Only an aggregate with a key (or its tombstone) is forgotten; one that
# never had a key keeps its claims and its documents.
RELEASE_CLAIMS_OF_FORGOTTEN = (
    "DELETE FROM claims WHERE aggregate_id = ? AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)
# The documents that name the forgotten aggregate as a subject, then every
# subject of those documents (parameters: the aggregate id, twice each).
# What DELETE_DOCUMENTS_OF_FORGOTTEN deletes, by projection and type (a
# reaction's process states among them), for ForgetAggregate's answer.
COUNT_DOCUMENTS_OF_FORGOTTEN = (
    "SELECT projection, type_name, count(*) FROM projection_documents WHERE (projection, key) IN"
    " (SELECT projection, key FROM projection_subjects WHERE subject = ?)"
    " AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
    " GROUP BY projection, type_name"
)
# The other aggregates the documents DELETE_DOCUMENTS_OF_FORGOTTEN deletes
# named (a reaction's process states, a read model's documents; not parked
# commands), by projection or reaction: the first MAX_OTHER_SUBJECTS by id,
# and how many in all (parameters: the aggregate id, three times).
OTHER_SUBJECTS_OF_FORGOTTEN = (
    "SELECT projection, subject, total FROM ("
    " SELECT projection, subject, row_number() OVER (PARTITION BY projection ORDER BY subject) AS n,"
    " count(*) OVER (PARTITION BY projection) AS total FROM ("
    "  SELECT DISTINCT s.projection, s.subject FROM projection_subjects s"
    "  JOIN projection_documents d ON d.projection = s.projection AND d.key = s.key"
    f"  WHERE d.type_name <> '{PARKED_COMMAND_TYPE}' AND s.subject <> ?"
    "  AND (s.projection, s.key) IN (SELECT projection, key FROM projection_subjects WHERE subject = ?)"
    "  AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)))"
    f" WHERE n <= {MAX_OTHER_SUBJECTS} ORDER BY projection, subject"
)
DELETE_DOCUMENTS_OF_FORGOTTEN = (
    "DELETE FROM projection_documents WHERE (projection, key) IN"
    " (SELECT projection, key FROM projection_subjects WHERE subject = ?)"
    " AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)
# A parked event's error is a handler's exception text, which may quote the
# event's payload. Parked events are few (no index: a forget is rare).
DELETE_PARKED_OF_FORGOTTEN = (
    "DELETE FROM projection_parked_events WHERE aggregate_id = ?"
    " AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)
# A command record's fingerprint (a hash of its payload, which a guess list
# confirms) and a refusal's text, metadata and field violations (which may
# quote the state): sealed under the aggregate's key with encryption on, but
# in the clear if written before it was, or imported so. Forgetting erases
# them all (parameters: the erased fingerprint, the aggregate id, the erased
# fingerprint, the aggregate id); the refusal's kind and reason stay, as the
# audit shows them. No index by aggregate: a forget reads the table through.
ERASE_COMMAND_TEXTS_OF_FORGOTTEN = (
    "UPDATE commands SET fingerprint = ?, rejection = CASE WHEN rejection IS NULL THEN NULL ELSE json_object("
    "'kind', json_extract(rejection, '$.kind'), 'reason', json_extract(rejection, '$.reason'), 'message', '',"
    " 'metadata', json('{}')) END"
    " WHERE aggregate_id = ? AND fingerprint <> ? AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)
# The audit's own entries of the aggregate (a dry run's refusal, a plugin
# middleware's) keep their reason; their message goes (parameters: the id, twice).
ERASE_AUDIT_TEXTS_OF_FORGOTTEN = (
    "UPDATE refusals SET message = '' WHERE aggregate_id = ? AND message <> ''"
    " AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)
# The same two erasures for a batch of aggregates (?1 the erased fingerprint,
# ?2 the ids as a JSON array): one pass over each table for the batch, not
# one per aggregate (neither has an index by aggregate).
ERASE_COMMAND_TEXTS_OF_ALL_FORGOTTEN = (
    "UPDATE commands SET fingerprint = ?1, rejection = CASE WHEN rejection IS NULL THEN NULL ELSE json_object("
    "'kind', json_extract(rejection, '$.kind'), 'reason', json_extract(rejection, '$.reason'), 'message', '',"
    " 'metadata', json('{}')) END"
    " WHERE aggregate_id IN (SELECT value FROM json_each(?2)) AND fingerprint <> ?1"
    " AND EXISTS (SELECT 1 FROM data_keys k WHERE k.aggregate_id = commands.aggregate_id)"
)
ERASE_AUDIT_TEXTS_OF_ALL_FORGOTTEN = (
    "UPDATE refusals SET message = '' WHERE aggregate_id IN (SELECT value FROM json_each(?1)) AND message <> ''"
    " AND EXISTS (SELECT 1 FROM data_keys k WHERE k.aggregate_id = refusals.aggregate_id)"
)
# A subscription group's parked event keeps its consumer's nack reason,
# which may quote the payload (parameters: the id, twice). Few: no index.
DELETE_GROUP_PARKED_OF_FORGOTTEN = (
    "DELETE FROM group_parked WHERE aggregate_id = ? AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)
DELETE_SUBJECTS_OF_FORGOTTEN = (
    "DELETE FROM projection_subjects WHERE (projection, key) IN"
    " (SELECT projection, key FROM projection_subjects WHERE subject = ?)"
    " AND EXISTS (SELECT 1 FROM data_keys WHERE aggregate_id = ?)"
)


# Live keys by id range (the primary key, BINARY: code point order): ?1 the
# prefix, ?2 the last id seen, ?3 the prefix's end (``records.prefix_end``).
def live_keys(*, upper: bool) -> str:
    bounds = "aggregate_id >= ?1 AND aggregate_id > ?2" + (" AND aggregate_id < ?3" if upper else "")
    return (
        f"SELECT aggregate_id FROM data_keys WHERE {bounds} AND wrapped_key IS NOT NULL ORDER BY aggregate_id LIMIT ?4"
    )


def count_live_keys(*, upper: bool) -> str:
    bounds = "aggregate_id >= ?1" + (" AND aggregate_id < ?2" if upper else "")
    return f"SELECT count(*) FROM data_keys WHERE {bounds} AND wrapped_key IS NOT NULL"


DATA_KEYS_TO_REWRAP = (
    "SELECT aggregate_id, master_key_id, wrapped_key FROM data_keys"
    " WHERE wrapped_key IS NOT NULL AND master_key_id <> ? AND aggregate_id > ? ORDER BY aggregate_id LIMIT ?"
)
REWRAP_DATA_KEY = (
    "UPDATE data_keys SET master_key_id = ?, wrapped_key = ?"
    " WHERE aggregate_id = ? AND master_key_id = ? AND wrapped_key = ?"
)

# -- transfer (export and import) ------------------------------------------------------

DATA_KEYS_PAGE = (
    "SELECT aggregate_id, master_key_id, wrapped_key FROM data_keys WHERE aggregate_id > ?"
    " ORDER BY aggregate_id LIMIT ?"
)
SNAPSHOTS_PAGE = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE (aggregate_id, version) > (?, ?)"
    " ORDER BY aggregate_id, version LIMIT ?"
)
SNAPSHOTS_OF_PAGE = (
    f"SELECT {SNAPSHOT_COLUMNS} FROM snapshots WHERE aggregate_id = ? AND (aggregate_id, version) > (?, ?)"
    " ORDER BY version LIMIT ?"
)
CLAIMS_PAGE = (
    "SELECT scope, value, aggregate_id FROM claims WHERE (scope, value) > (?, ?) ORDER BY scope, value LIMIT ?"
)
TENANT_CLAIMS_OF_SCOPE = "SELECT 1 FROM claims WHERE scope >= ? AND scope < ? LIMIT 1"
# The first stored scope at or after ? (global or a tenant's), on the
# primary key (BINARY: code point order); tenant_claim_scopes walks them.
NEXT_CLAIMS_SCOPE = "SELECT scope FROM claims WHERE scope >= ? ORDER BY scope LIMIT 1"
CLAIMS_OF_PAGE = (
    "SELECT scope, value, aggregate_id FROM claims WHERE aggregate_id = ? AND (scope, value) > (?, ?)"
    " ORDER BY scope, value LIMIT ?"
)
COMMANDS_PAGE = f"SELECT {COMMAND_COLUMNS} FROM commands WHERE command_id > ? ORDER BY command_id LIMIT ?"
# Which of the aggregates (a JSON array of ids) were forgotten: what an
# import leaves out of theirs (FORGOTTEN_SUBJECTS asks the same of a read
# model's subjects).
FORGOTTEN_AGGREGATES = FORGOTTEN_SUBJECTS
# Where an event id is held, if anywhere (the unique index on event_id).
EVENT_PLACE = "SELECT aggregate_id, version FROM events WHERE event_id = ?"
AGGREGATE_HEAD = "SELECT version, aggregate_type FROM events WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1"
IMPORT_SNAPSHOT = f"INSERT INTO snapshots ({SNAPSHOT_COLUMNS}) {_values(SNAPSHOT_COLUMNS)} ON CONFLICT DO NOTHING"
IMPORT_COMMAND = f"INSERT INTO commands ({COMMAND_COLUMNS}) {_values(COMMAND_COLUMNS)} ON CONFLICT DO NOTHING"
IMPORT_DATA_KEY = (
    "INSERT INTO data_keys (aggregate_id, master_key_id, wrapped_key, created_at_us, forgotten_at_us)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (aggregate_id) DO NOTHING"
)
REMOVE_EVENTS = "DELETE FROM events WHERE aggregate_id = ?"
LAST_EVENT = f"SELECT {EVENT_COLUMNS} FROM events WHERE aggregate_id = ? ORDER BY version DESC LIMIT 1"
# Each aggregate's last event, by the (aggregate_id, version) index.
AGGREGATES_PAGE = (
    "SELECT aggregate_id, aggregate_type, version, event_type, recorded_at_us FROM events e"
    " WHERE aggregate_id > ? AND version = (SELECT MAX(version) FROM events m WHERE m.aggregate_id = e.aggregate_id)"
    " ORDER BY aggregate_id LIMIT ?"
)
REMOVE_CLAIMS = "DELETE FROM claims WHERE aggregate_id = ?"
# What projections and subscription groups parked of the aggregate's events,
# which are gone (a parked event's error may quote its payload). Parked events
# are few: no index.
REMOVE_PARKED = "DELETE FROM projection_parked_events WHERE aggregate_id = ?"
REMOVE_GROUP_PARKED = "DELETE FROM group_parked WHERE aggregate_id = ?"

# -- retention ----------------------------------------------------------------------

# Oldest first, a batch at a time, by the time indexes.
PRUNE_COMMANDS = (
    "DELETE FROM commands WHERE command_id IN"
    " (SELECT command_id FROM commands WHERE recorded_at_us < ? ORDER BY recorded_at_us LIMIT ?)"
)
PRUNE_REFUSALS = (
    "DELETE FROM refusals WHERE id IN"
    " (SELECT id FROM refusals WHERE (outcome = 'refused' OR dry_run) AND recorded_at_us < ?"
    " ORDER BY recorded_at_us LIMIT ?)"
)

# -- subscription groups (grouping.py) ----------------------------------------------

_GROUP_COLUMNS = ", ".join(GROUP_FIELDS)
_PARKED_COLUMNS = ", ".join(PARKED_FIELDS)
_PARKED_READ = f"{_PARKED_COLUMNS}, event_type, parked_at_us"  # sql_common.parked_from_row
CREATE_GROUP = f"INSERT INTO subscription_groups ({_GROUP_COLUMNS}) {_values(_GROUP_COLUMNS)} ON CONFLICT DO NOTHING"
CREATE_SEGMENT = "INSERT INTO group_segments (group_name, segment, position, acknowledged) VALUES (?, ?, ?, 0)"
LOAD_GROUP = f"SELECT {_GROUP_COLUMNS} FROM subscription_groups WHERE name = ?"
GROUP_NAMES = "SELECT name FROM subscription_groups ORDER BY name"
GROUP_SEGMENTS = (
    "SELECT segment, position, acknowledged, skipped, dismissed FROM group_segments WHERE group_name = ?"
    " ORDER BY segment"
)
PARKED_COUNT = "SELECT count(*) FROM group_parked WHERE group_name = ?"
DELETE_GROUP = "DELETE FROM subscription_groups WHERE name = ?"
UPDATE_GROUP = (
    "UPDATE subscription_groups SET max_attempts = ?, retry_backoff_ms = ?, max_retry_backoff_ms = ?,"
    " ack_timeout_ms = ?, max_unanswered_timeouts = ? WHERE name = ? AND COALESCE(incarnation, '') = ?"
)
DELETE_GROUP_SEGMENTS = "DELETE FROM group_segments WHERE group_name = ?"
DELETE_GROUP_PARKED = "DELETE FROM group_parked WHERE group_name = ?"
MOVE_SEGMENT = (
    "UPDATE group_segments SET position = ?, acknowledged = acknowledged + ?, skipped = skipped + ?"
    " WHERE group_name = ? AND segment = ? AND position = ?"
    # Never past the log's end (see the PostgreSQL statement).
    " AND ? <= (SELECT COALESCE(MAX(position), 0) FROM events)"
)
# A segment's settled events above its checkpoint (migration 21).
FORGET_SETTLED_PASSED = "DELETE FROM group_settled_ahead WHERE group_name = ? AND segment = ? AND position <= ?"
FORGET_SETTLED_AHEAD = "DELETE FROM group_settled_ahead WHERE group_name = ? AND segment = ?"
KEEP_SETTLED_AHEAD = (
    "INSERT INTO group_settled_ahead (group_name, segment, event_id, position, outcome) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (group_name, segment, event_id) DO UPDATE SET position = excluded.position,"
    " outcome = excluded.outcome"
)
SETTLED_AHEAD = (
    "SELECT s.event_id, s.position, s.outcome FROM group_settled_ahead AS s"
    " JOIN group_segments AS g ON g.group_name = s.group_name AND g.segment = s.segment"
    " WHERE s.group_name = ? AND s.segment = ? AND s.position > g.position ORDER BY s.position, s.event_id"
)
DELETE_GROUP_SETTLED = "DELETE FROM group_settled_ahead WHERE group_name = ?"
PARK_GROUP_EVENT = (
    f"INSERT INTO group_parked (group_name, {_PARKED_COLUMNS}, event_type, parked_at_us)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)"
    " ON CONFLICT (group_name, event_id) DO UPDATE SET attempts = excluded.attempts, reason = excluded.reason,"
    " replaying = 0, event_type = excluded.event_type, parked_at_us = excluded.parked_at_us"
)
REPARK_GROUP_EVENT = (
    "UPDATE group_parked SET attempts = ?, reason = ?, replaying = 0, event_type = ?, parked_at_us = ?"
    " WHERE group_name = ? AND event_id = ?"
)
DISMISS_GROUP_PARKED = "DELETE FROM group_parked WHERE group_name = ? AND event_id = ? RETURNING segment"
UNPARK_GROUP_EVENT = "DELETE FROM group_parked WHERE group_name = ? AND event_id = ? RETURNING segment"
COUNT_GROUP_ACKNOWLEDGED = (
    "UPDATE group_segments SET acknowledged = acknowledged + 1 WHERE group_name = ? AND segment = ?"
)
COUNT_GROUP_SKIPPED = "UPDATE group_segments SET skipped = skipped + 1 WHERE group_name = ? AND segment = ?"
COUNT_GROUP_DISMISSED = "UPDATE group_segments SET dismissed = dismissed + 1 WHERE group_name = ? AND segment = ?"
LIST_GROUP_PARKED = (
    # After a position, or after a position and an event id within it (?3
    # NULL: the former; event_id > NULL is never true).
    f"SELECT {_PARKED_READ} FROM group_parked WHERE group_name = ?1 AND position >= ?2"
    " AND (position > ?2 OR event_id > ?3) ORDER BY position, event_id LIMIT ?4"
)
GROUP_PARKED_EVENT = f"SELECT {_PARKED_READ} FROM group_parked WHERE group_name = ? AND event_id = ?"
REPLAY_ALL_GROUP_PARKED = "UPDATE group_parked SET replaying = 1 WHERE group_name = ?"
REPLAY_GROUP_PARKED = "UPDATE group_parked SET replaying = 1 WHERE group_name = ? AND event_id = ?"
GROUP_PARKED_TO_REPLAY = (
    f"SELECT {_PARKED_READ} FROM group_parked WHERE group_name = ? AND replaying = 1 ORDER BY position, event_id"
)

# -- leases (service/cluster/leases.py, leases.py) --------------------------------
#
# As PostgreSQL's (postgres/sql.py), in the tables of migration 14. Times
# are microseconds since the epoch by the machine's clock, passed in by the
# caller once it holds the write lock (every process on the file runs on one
# machine: its clock is the file's). A lease whose expires_at_us has passed
# is free to take, and is shown without owner; its epoch goes up by one
# each time its holder changes. A lease given up expires at 0.

UPSERT_LEASE_MEMBER = (
    "INSERT INTO lease_members (lease_group, member_id, address, expires_at_us, console, version, schema_version)"
    " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (lease_group, member_id) DO UPDATE SET address = excluded.address,"
    " expires_at_us = excluded.expires_at_us, console = excluded.console, version = excluded.version,"
    " schema_version = excluded.schema_version"
)
# Members dead for long (the caller's hour ago) are forgotten, so the table follows the live set.
FORGET_DEAD_MEMBERS = "DELETE FROM lease_members WHERE lease_group = ? AND expires_at_us < ?"
ENSURE_LEASE = "INSERT INTO leases (lease_group, name) VALUES (?, ?) ON CONFLICT (lease_group, name) DO NOTHING"
RENEW_LEASES = "UPDATE leases SET expires_at_us = ? WHERE lease_group = ? AND owner = ?"
# ?2: now. With when each member's membership, and each held lease, lapses.
LIVE_MEMBERS = (
    "SELECT member_id, address, console, expires_at_us, version, schema_version FROM lease_members"
    " WHERE lease_group = ?1 AND expires_at_us > ?2 ORDER BY member_id"
)
GROUP_LEASES = (
    "SELECT name, CASE WHEN expires_at_us > ?2 THEN owner END, epoch, expires_at_us FROM leases"
    " WHERE lease_group = ?1 ORDER BY name"
)
RELEASE_LEASE = (
    "UPDATE leases SET owner = NULL, epoch = epoch + 1, expires_at_us = 0"
    " WHERE lease_group = ? AND owner = ? AND name = ?"
)
# ?5: now. Taken only if nobody holds it (or its holder let it expire).
ACQUIRE_LEASE = (
    "UPDATE leases SET owner = ?1, epoch = epoch + 1, expires_at_us = ?2"
    " WHERE lease_group = ?3 AND name = ?4 AND (owner IS NULL OR expires_at_us <= ?5) RETURNING epoch"
)
LEAVE_GROUP = "DELETE FROM lease_members WHERE lease_group = ? AND member_id = ?"
# Cluster features (service/store/features.py, migration 25), as
# PostgreSQL's: ?1 the feature, ?2 now, ?3 the schema from which servers
# honour it (features.feature_since), ?4 and ?5 the length of GROUP_LEASE_PREFIX and it.
ENABLE_FEATURE = (
    "INSERT INTO cluster_features (name) SELECT ?1 WHERE NOT EXISTS (SELECT 1"
    " FROM lease_members WHERE expires_at_us > ?2 AND schema_version < ?3 AND substr(lease_group, 1, ?4) <> ?5)"
    " ON CONFLICT (name) DO NOTHING"
)
FEATURE_ENABLED = "SELECT 1 FROM cluster_features WHERE name = ?"
FEATURES_ON = "SELECT name FROM cluster_features"
RELEASE_ALL_LEASES = (
    "UPDATE leases SET owner = NULL, epoch = epoch + 1, expires_at_us = 0 WHERE lease_group = ? AND owner = ?"
)
# A commit under a fencing token (a projection's batch, a group segment's
# acknowledgements): the lease must still be held by the token's member at
# the token's epoch. Read under the commit's write lock, so no process can
# take the lease over between this check and the commit.
CHECK_FENCING = "SELECT 1 FROM leases WHERE lease_group = ? AND name = ? AND owner = ? AND epoch = ?"
# A subscription group's consumers (its lease group's live members) and who
# holds which segment; deleted with the group.
GROUP_CONSUMERS = "SELECT member_id FROM lease_members WHERE lease_group = ? AND expires_at_us > ? ORDER BY member_id"
GROUP_HOLDERS = "SELECT name, owner FROM leases WHERE lease_group = ? AND owner IS NOT NULL AND expires_at_us > ?"
DELETE_GROUP_LEASES = "DELETE FROM leases WHERE lease_group = ?"
DELETE_GROUP_MEMBERS = "DELETE FROM lease_members WHERE lease_group = ?"
# Each live consumer's last report (grouping.py, ConsumerReport): one beside
# a live member of the group's lease group; replaced by the next; forgotten
# an hour after it was written; deleted with the group.
GROUP_REPORTS = (
    "SELECT r.member_id, r.replica_id, r.replica_address, r.in_flight, r.answered_at_us, r.reported_at_us,"
    " r.connected_at_us"
    " FROM group_consumer_reports AS r JOIN lease_members AS m"
    " ON m.lease_group = ? AND m.member_id = r.member_id AND m.expires_at_us > ? WHERE r.group_name = ?"
)
# The time a session joined is kept as its first report said it: each later
# one computes it again from its own clock, a little off each time.
UPSERT_CONSUMER_REPORT = (
    "INSERT INTO group_consumer_reports"
    " (group_name, member_id, replica_id, replica_address, in_flight, answered_at_us, reported_at_us,"
    " connected_at_us)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (group_name, member_id) DO UPDATE SET"
    " replica_id = excluded.replica_id, replica_address = excluded.replica_address,"
    " in_flight = excluded.in_flight, answered_at_us = excluded.answered_at_us,"
    " reported_at_us = excluded.reported_at_us,"
    " connected_at_us = COALESCE(group_consumer_reports.connected_at_us, excluded.connected_at_us)"
)
FORGET_OLD_REPORTS = "DELETE FROM group_consumer_reports WHERE group_name = ? AND reported_at_us < ?"
DELETE_GROUP_REPORTS = "DELETE FROM group_consumer_reports WHERE group_name = ?"
