"""``LeaseStore`` on PostgreSQL: members and leases of each group in two
tables (migration 0010; a member's console, 0018), every method one operation. Expiry is judged by
the database's clock alone (``now()``), so replicas' clocks never disagree
about it. Two replicas taking one free lease at once: both UPDATEs match the
row, the second waits for the first to commit, finds the lease held and
leaves it (PostgreSQL re-checks the condition on the row it waited for)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from psycopg.pq.abc import PGresult

from service.store.features import feature_schemas, feature_since
from service.store.grouping import GROUP_LEASE_PREFIX
from service.store.leasing import Lease, LeaseMember, LeaseView
from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.migrations import known_migrations
from service.store.postgres.rows import rows


@functools.cache
def _known_schema() -> int:
    """The schema version this code knows: its newest migration (read from
    the package's scripts once: every heartbeat says it, and reading some
    thirty files took the event loop about a millisecond each time)."""
    return known_migrations()[-1].version


def _millis(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class LeasesRole:
    _lease_db: Database  # a connection of its own (store.py says why)

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        results = await self._lease_db.run("renew_leases", renewal(group, member, names, ttl))
        return renewed(results)

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        statements = [
            Statement(sql.RELEASE_LEASES.encode(), (group, member_id, list(release))),
            Statement(sql.ACQUIRE_LEASES.encode(), (group, member_id, list(acquire), _millis(ttl))),
        ]
        results = await self._lease_db.run("change_leases", statements)
        return [Lease(str(row[0]), member_id, int(row[1])) for row in rows(results[1])]

    async def enable_feature(self, name: str) -> bool:
        """``features.ClusterFeatures``: one transaction, so the live
        members it checks are those of the moment it turns ``name`` on."""
        since = feature_since(name, known_migrations())
        results = await self._lease_db.run(
            "enable_feature",
            [
                Statement(sql.ENABLE_FEATURE.encode(), (name, since, len(GROUP_LEASE_PREFIX), GROUP_LEASE_PREFIX)),
                Statement(sql.FEATURE_ENABLED.encode(), (name,)),
            ],
        )
        return bool(rows(results[1]))

    def feature_schemas(self) -> Mapping[str, int]:
        """``features.FeatureReader``."""
        return feature_schemas(known_migrations())

    async def features_on(self) -> frozenset[str]:
        """``features.FeatureReader``."""
        (result,) = await self._lease_db.run("features_on", [Statement(sql.FEATURES_ON.encode(), ())], read_only=True)
        return frozenset(str(row[0]) for row in rows(result))

    async def leave_group(self, group: str, member_id: str) -> None:
        await self._lease_db.run(
            "leave_group",
            [
                Statement(sql.LEAVE_GROUP.encode(), (group, member_id)),
                Statement(sql.RELEASE_ALL_LEASES.encode(), (group, member_id)),
            ],
        )


def renewal(group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> list[Statement]:
    """``renew_leases``' statements, which a consumer's heartbeat sends
    with its report's in one operation (``groups.py``); ``renewed`` reads
    their results, the first ``len(renewal(...))`` of the operation's."""
    ttl_ms = _millis(ttl)
    return [
        Statement(
            sql.UPSERT_LEASE_MEMBER.encode(),
            (group, member.member_id, member.address, ttl_ms, member.console, member.version, _known_schema()),
        ),
        Statement(sql.FORGET_DEAD_MEMBERS.encode(), (group,)),
        Statement(sql.ENSURE_LEASES.encode(), (group, list(names))),
        Statement(sql.RENEW_LEASES.encode(), (group, member.member_id, ttl_ms)),
        Statement(sql.LIVE_MEMBERS.encode(), (group,)),
        Statement(sql.GROUP_LEASES.encode(), (group,)),
    ]


def renewed(results: Sequence[PGresult]) -> LeaseView:
    members = tuple(
        LeaseMember(str(row[0]), str(row[1]), str(row[2]), float(row[3]), str(row[4]), int(row[5]))
        for row in rows(results[4])
    )
    leases = tuple(
        Lease(
            str(row[0]),
            None if row[1] is None else str(row[1]),
            int(row[2]),
            None if row[3] is None else float(row[3]),
        )
        for row in rows(results[5])
    )
    return LeaseView(members, leases)
