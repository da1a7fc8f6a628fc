"""A ``LeaseStore`` kept in this process's memory, shared for real among
its members: the consumers of a subscription group on the memory store,
whose one process serves every consumer (a replica's own partitions and
projections there use ``sole_owner.py``: one member).

Same semantics as PostgreSQL's leases (``postgres/leases.py``): a member
is live until ``ttl`` after its last renewal, a lease held until ``ttl``
after its holder's last renewal, each change of holder adds one to the
epoch. Every method runs without awaiting, so on one event loop each is
atomic, as a transaction is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from service.store.leasing import Fencing, Lease, LeaseMember, LeaseView


@dataclass(slots=True)
class _Member:
    member: LeaseMember
    expires_at: float


@dataclass(slots=True)
class _Lease:
    owner: str | None = None
    epoch: int = 0
    expires_at: float = float("-inf")


class LocalLeases:
    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._members: dict[str, dict[str, _Member]] = {}
        self._leases: dict[str, dict[str, _Lease]] = {}

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        now = self._clock()
        members = self._members.setdefault(group, {})
        members[member.member_id] = _Member(member, now + ttl)
        leases = self._leases.setdefault(group, {})
        for name in names:
            leases.setdefault(name, _Lease())
        for lease in leases.values():
            if lease.owner == member.member_id and lease.expires_at > now:
                lease.expires_at = now + ttl
        return self.view(group)

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        now = self._clock()
        leases = self._leases.setdefault(group, {})
        for name in release:
            lease = leases.get(name)
            if lease is not None and lease.owner == member_id:
                lease.owner, lease.epoch, lease.expires_at = None, lease.epoch + 1, float("-inf")
        taken = []
        for name in acquire:
            lease = leases.get(name)
            if lease is not None and (lease.owner is None or lease.expires_at <= now):
                lease.owner, lease.epoch, lease.expires_at = member_id, lease.epoch + 1, now + ttl
                taken.append(Lease(name, member_id, lease.epoch))
        return taken

    async def leave_group(self, group: str, member_id: str) -> None:
        self._members.get(group, {}).pop(member_id, None)
        for lease in self._leases.get(group, {}).values():
            if lease.owner == member_id:
                lease.owner, lease.epoch, lease.expires_at = None, lease.epoch + 1, float("-inf")

    # -- beyond LeaseStore: what the group store reads and checks ------------

    def view(self, group: str) -> LeaseView:
        """The group now: its live members, its leases (an expired one
        without owner)."""
        now = self._clock()
        members = tuple(
            replace(m.member, lapses_in=m.expires_at - now)
            for _, m in sorted(self._members.get(group, {}).items())
            if m.expires_at > now
        )
        leases = tuple(
            Lease(name, lease.owner, lease.epoch, lease.expires_at - now)
            if lease.expires_at > now
            else Lease(name, None, lease.epoch)
            for name, lease in sorted(self._leases.get(group, {}).items())
        )
        return LeaseView(members, leases)

    def holds(self, fencing: Fencing) -> bool:
        """Whether ``fencing``'s lease is still held by its member at its epoch."""
        lease = self._leases.get(fencing.group, {}).get(fencing.name)
        return (
            lease is not None
            and lease.owner == fencing.member_id
            and lease.epoch == fencing.epoch
            and lease.expires_at > self._clock()
        )

    def drop_group(self, group: str) -> None:
        self._members.pop(group, None)
        self._leases.pop(group, None)
