"""``LeaseStore`` on SQLite: members and leases of each group in two tables
of the file (migration 0014; a member's console, 0015), so that the server processes sharing one file
(a rolling update that starts the new server before the old one stops)
share out the partitions, projections, reactions and group segments as
replicas on PostgreSQL do (``postgres/leases.py``, same semantics).

Every method is one short write transaction (``BEGIN IMMEDIATE``: it waits
for another process's writer up to the busy timeout), on a connection of
its own (store.py says why). Expiry is judged by the machine's clock, read
once the write lock is held: every process on the file runs on one machine
(the file must be on a local disk), so they agree about it. Two processes
taking one free lease at once: the write lock orders them, and the second
finds the lease held and leaves it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence

from service.store.features import feature_schemas, feature_since
from service.store.grouping import GROUP_LEASE_PREFIX
from service.store.leasing import Fencing, Lease, LeaseMember, LeaseView
from service.store.sqlite import sql
from service.store.sqlite.migrations import MIGRATIONS
from service.store.sqlite.writer import Writer, writing

# A member dead this long is deleted at another member's heartbeat.
_FORGET_DEAD_AFTER_US = 3600 * 1_000_000


def now_us() -> int:
    """The machine's clock, as lease expiries are kept."""
    return time.time_ns() // 1000


def micros(seconds: float) -> int:
    return max(1, round(seconds * 1_000_000))


def _seconds(micros: int) -> float:
    return micros / 1_000_000


class LeasesRole:
    _lease_writer: Writer

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        return await self._lease_writer.run(_renew, group, member, tuple(names), micros(ttl))

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        return await self._lease_writer.run(_change, group, member_id, tuple(release), tuple(acquire), micros(ttl))

    async def leave_group(self, group: str, member_id: str) -> None:
        await self._lease_writer.run(_leave, group, member_id)

    async def enable_feature(self, name: str) -> bool:
        """``features.ClusterFeatures``, in one write transaction."""
        return await self._lease_writer.run(_enable_feature, name, feature_since(name, MIGRATIONS))

    def feature_schemas(self) -> Mapping[str, int]:
        """``features.FeatureReader``."""
        return feature_schemas(MIGRATIONS)

    async def features_on(self) -> frozenset[str]:
        """``features.FeatureReader``."""
        return await self._lease_writer.run(
            lambda db: frozenset(str(row[0]) for row in db.execute(sql.FEATURES_ON).fetchall())
        )


def _enable_feature(db: sqlite3.Connection, name: str, since: int) -> bool:
    with writing(db):
        db.execute(sql.ENABLE_FEATURE, (name, now_us(), since, len(GROUP_LEASE_PREFIX), GROUP_LEASE_PREFIX))
        return db.execute(sql.FEATURE_ENABLED, (name,)).fetchone() is not None


def _renew(db: sqlite3.Connection, group: str, member: LeaseMember, names: Sequence[str], ttl_us: int) -> LeaseView:
    with writing(db):
        return renewed(db, group, member, names, ttl_us, now_us())


def renewed(
    db: sqlite3.Connection, group: str, member: LeaseMember, names: Sequence[str], ttl_us: int, now: int
) -> LeaseView:
    """``renew_leases``' writes and reads, in the caller's transaction
    (a consumer's heartbeat writes its report in the same one)."""
    known = MIGRATIONS[-1].version  # the schema version this code knows
    member_row = (group, member.member_id, member.address, now + ttl_us, member.console, member.version, known)
    db.execute(sql.UPSERT_LEASE_MEMBER, member_row)
    db.execute(sql.FORGET_DEAD_MEMBERS, (group, now - _FORGET_DEAD_AFTER_US))
    db.executemany(sql.ENSURE_LEASE, [(group, name) for name in names])
    db.execute(sql.RENEW_LEASES, (now + ttl_us, group, member.member_id))
    members = tuple(
        LeaseMember(str(m), str(a), str(c), _seconds(until - now), str(v), int(s))
        for m, a, c, until, v, s in db.execute(sql.LIVE_MEMBERS, (group, now))
    )
    leases = tuple(
        Lease(
            str(name),
            None if owner is None else str(owner),
            int(epoch),
            None if owner is None else _seconds(until - now),
        )
        for name, owner, epoch, until in db.execute(sql.GROUP_LEASES, (group, now))
    )
    return LeaseView(members, leases)


def _change(
    db: sqlite3.Connection, group: str, member_id: str, release: Sequence[str], acquire: Sequence[str], ttl_us: int
) -> list[Lease]:
    with writing(db):
        now = now_us()
        db.executemany(sql.RELEASE_LEASE, [(group, member_id, name) for name in release])
        taken = []
        for name in acquire:
            row = db.execute(sql.ACQUIRE_LEASE, (member_id, now + ttl_us, group, name, now)).fetchone()
            if row is not None:  # else another member holds it
                taken.append(Lease(name, member_id, int(row[0])))
    return taken


def _leave(db: sqlite3.Connection, group: str, member_id: str) -> None:
    with writing(db):
        db.execute(sql.LEAVE_GROUP, (group, member_id))
        db.execute(sql.RELEASE_ALL_LEASES, (group, member_id))


def still_held(db: sqlite3.Connection, fencing: Fencing) -> bool:
    """Whether ``fencing``'s lease is still held by its member at its epoch:
    asked inside a commit's write transaction, so the answer holds until
    that commit ends."""
    held = (fencing.group, fencing.name, fencing.member_id, fencing.epoch)
    return db.execute(sql.CHECK_FENCING, held).fetchone() is not None
