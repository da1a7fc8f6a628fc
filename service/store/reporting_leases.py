"""The leases of a consumer session's ``LeaseKeeper``, whose every renewal
(its heartbeat) carries the session's report in the same write.

A session both renews its segments' leases and reports what it does
(``ConsumerReport``) once a heartbeat. Two writes a heartbeat for each
consumer of each group were one too many: the report rides in the
renewal's transaction (``GroupStore.renew_consumer``). So it is written
exactly when the member is renewed: a consumer shown heard from is one
whose leases were renewed then, and a store that refuses the heartbeat
refuses both at once (the consumer is silent and its leases lapse, as
they would have anyway). The lease semantics are the renewal's own, the
report changes none of them; the keeper (``service/cluster/leases.py``)
does not know it is there."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from service.store.base import GroupStore
from service.store.grouping import ConsumerReport, consumer_group
from service.store.leasing import Lease, LeaseMember, LeaseView


class ReportingLeases:
    """``LeaseStore`` of group ``name``'s consumer leases for one session:
    ``renew_leases`` is ``renew_consumer`` with ``report()`` as it is at
    that moment; taking, giving up and leaving are the group's leases'."""

    def __init__(self, groups: GroupStore, name: str, report: Callable[[], ConsumerReport]) -> None:
        self._groups = groups
        self._name = name
        self._lease_group = consumer_group(name)
        self._report = report

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        if group != self._lease_group:
            raise ValueError(f"a session of group {self._name!r} renews {self._lease_group!r}, not {group!r}")
        return await self._groups.renew_consumer(self._name, member, names, ttl, self._report())

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        return await self._groups.consumer_leases.change_leases(
            group, member_id, release=release, acquire=acquire, ttl=ttl
        )

    async def leave_group(self, group: str, member_id: str) -> None:
        await self._groups.consumer_leases.leave_group(group, member_id)
