"""The production store: PostgreSQL, one role per module, one way of
talking to the database (database.py: pipelined connections on the event
loop, every method one operation, one round trip, one transaction).

    events.py       EventRecorder    (appends: appends.py + group_commit.py)
    log.py          LogReader
    claims.py       ClaimRegistry
    snapshots.py    SnapshotStore
    projections.py  ProjectionStore
    audit.py        AuditRecorder
    keys.py         KeyStore
    transfer.py     Transfer         (export and import)
    retention.py    Retention        (pruning old command records and refusals)
    leases.py       LeaseStore
    groups.py       GroupStore       (consumers' leases: leases.py)
    sql.py          every statement; why positions never skip

Differs from the contract only in what it adds: the database may be
unreachable at start-up or go away later. ``open`` then returns anyway and
the schema is created as soon as the database answers; until then, and
while it is gone, every call raises ``StoreUnavailable`` and ``ping`` says
so, which the server reports as NOT_SERVING.
"""

from __future__ import annotations

from service.store.base import DEFAULT_KEEP_SNAPSHOTS, check_keep_snapshots
from service.store.postgres.appends import AppendWriter, JsonOf
from service.store.postgres.audit import AuditRole
from service.store.postgres.claims import ClaimsRole
from service.store.postgres.database import Database
from service.store.postgres.events import EventsRole
from service.store.postgres.group_commit import BatchCounts, GroupCommitter
from service.store.postgres.groups import GroupsRole
from service.store.postgres.keys import KeysRole
from service.store.postgres.leases import LeasesRole
from service.store.postgres.log import LogRole
from service.store.postgres.projections import ProjectionsRole
from service.store.postgres.retention import RetentionRole
from service.store.postgres.snapshots import SnapshotsRole
from service.store.postgres.transfer import TransferRole
from service.store.schema_use import SchemaUse

# After a batch of several appends, how long the next one may gather more
# (group_commit.GroupCommitter's ``gather``). Measured with the bank example
# at 64 unary calls in flight, back to back on one cluster: 0 -> 2 ms took
# 2,078 -> 2,677 commands/s, PostgreSQL's CPU per command 208 -> 137 µs, the
# server's 486 -> 388 µs, p99 52 -> 40 ms; one call at a time unchanged
# (a lone append does not wait); SubmitStream unchanged (its batches are
# already large).
GATHER_SECONDS = 0.002


class PostgresStore(
    EventsRole,
    LogRole,
    ClaimsRole,
    SnapshotsRole,
    ProjectionsRole,
    AuditRole,
    KeysRole,
    TransferRole,
    RetentionRole,
    LeasesRole,
    GroupsRole,
):
    """Every role of a store, on PostgreSQL; tables in the ``chronicle`` schema.

    ``pool_size``: connections per server process (pipelined: each carries
    many operations at once, so a few go far). ``json_of``: also keep each
    event's payload as JSON (column ``payload_json``), as this function
    renders it from the event's type and bytes (--postgres-json-events).
    ``refuse_sealed``: for a server without master keys, refuse every
    operation (``ENCRYPTED_STORE_WITHOUT_KEYS``, at start-up if the database
    answers then, else when it first does) if the database holds data keys
    sealed by master keys. ``use``: what it may do to the schema it finds
    (schema_use.py): migrate it (a server), take it as it is
    (``--migrate=never``), or write nothing at all (a backup).
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        connect_timeout: float = 5.0,
        lock_timeout: float = 5.0,
        keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
        json_of: JsonOf | None = None,
        refuse_sealed: bool = False,
        use: SchemaUse = SchemaUse.MIGRATE,
        force_migration: bool = False,
    ) -> None:
        self._keep_snapshots = check_keep_snapshots(keep_snapshots)
        self._db = Database(
            url,
            connections=pool_size,
            connect_timeout=connect_timeout,
            lock_timeout=lock_timeout,
            refuse_sealed=refuse_sealed,
            use=use,
            force_migration=force_migration,
        )
        self._json_of = json_of
        self._appends = AppendWriter(self._db, json_of=json_of)
        # One batch in flight: the appends made while it commits form the
        # next one. A second batch in flight would only wait for the position
        # lock, and halving the batches cost PostgreSQL about half again as
        # much CPU per command (measured: bank deposits at 64 unary calls in
        # flight, 292 against 164 µs; the server's CPU fell too).
        self._group = GroupCommitter(self._appends.write, in_flight=1, gather=GATHER_SECONDS)
        # Heartbeats on a connection of their own: operations on one
        # connection run in order, and an append waiting for the position
        # lock (up to lock_timeout) must not hold up the heartbeat that
        # keeps this replica's leases.
        self._lease_db = Database(
            url,
            connections=1,
            connect_timeout=connect_timeout,
            lock_timeout=lock_timeout,
            use=use,
            force_migration=force_migration,
        )

    @property
    def url(self) -> str:
        """The database this store connects to."""
        return self._db.url

    @property
    def keep_snapshots(self) -> int:
        """How many snapshots each aggregate keeps (a standby's loads look among as many)."""
        return self._keep_snapshots

    @property
    def schema_version(self) -> int | None:
        """The schema's version once checked (``chronicle migrate`` says it)."""
        return self._db.schema_version

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()
        await self._lease_db.close()

    async def ping(self) -> None:
        await self._db.ping(writable=True)  # a database that takes no writes cannot serve commands

    def batch_counts(self) -> BatchCounts:
        """Group commit's counters (for metrics)."""
        return BatchCounts(self._group.batches, self._group.batched_appends, self._appends.alone)
