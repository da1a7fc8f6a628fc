"""Deleting a subscription group while its consumers' sessions still work
on PostgreSQL: the deletion takes its locks in the order the sessions take
theirs (lease members, then leases, then the group's segments), so it waits
for a session's transaction instead of deadlocking with it.

Seen before the fix: a group deleted right after its consumer left failed
with "deadlock detected" (UNAVAILABLE to the caller) against the leaving
session's heartbeat, release or last commit round. (The store now sends a
deadlock's victim again, which would hide one here: this test makes one
attempt only.)"""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from service.store.grouping import GroupSpec, consumer_group, segment_lease
from service.store.leasing import LeaseMember
from service.store.postgres import PostgresStore, database
from tests.support.faults import wait_for_waiters

pytestmark = pytest.mark.postgres

GROUP = "ledger"
MEMBER = "worker#1"


async def test_a_group_deleted_under_a_session_s_transaction_waits_for_it(
    postgres_store: PostgresStore, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(database, "ROLLBACK_ATTEMPTS", 1)  # a deadlock's victim fails at once
    await postgres_store.create_group(GroupSpec(name=GROUP, segments=2))
    lease_group = consumer_group(GROUP)
    await postgres_store.consumer_leases.renew_leases(
        lease_group, LeaseMember(MEMBER, ""), [segment_lease(0), segment_lease(1)], 30.0
    )
    async with await psycopg.AsyncConnection.connect(postgres_url) as session:
        # A session's transaction in the order its store operations take
        # locks: its member row (a heartbeat, or leaving), its leases (renew
        # or release; a commit round's fencing check), the segments' rows (a
        # commit round's checkpoints).
        await session.execute(
            "UPDATE chronicle.lease_members SET expires_at = now() + interval '30 s'"
            " WHERE lease_group = %s AND member_id = %s",
            (lease_group, MEMBER),
        )
        deleting = asyncio.ensure_future(postgres_store.delete_group(GROUP))
        await asyncio.to_thread(wait_for_waiters, postgres_url)
        await session.execute(
            "UPDATE chronicle.leases SET expires_at = now() + interval '30 s' WHERE lease_group = %s AND owner = %s",
            (lease_group, MEMBER),
        )
        await session.execute("UPDATE chronicle.group_segments SET updated_at = now() WHERE group_name = %s", (GROUP,))
        await session.commit()  # raised DeadlockDetected above, or the deletion did
    assert await deleting is True
    assert await postgres_store.load_group(GROUP) is None
    view = await postgres_store.consumer_leases.renew_leases(lease_group, LeaseMember("late#2", ""), [], 30.0)
    assert [lease.name for lease in view.leases] == []
