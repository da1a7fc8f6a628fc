"""``LeaseStore`` for a store that serves one process (memory): that
process is the one member of every group and holds every lease, at epoch 1,
for as long as it runs. Nothing is written: there is no one to share with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from service.store.leasing import Lease, LeaseMember, LeaseView

SOLE_EPOCH = 1


class SoleOwnerLeases:
    # service/store/factory.py: check_shared_by_processes
    serves_one_process = True

    async def renew_leases(self, group: str, member: LeaseMember, names: Sequence[str], ttl: float) -> LeaseView:
        # Nothing lapses while the one process runs: no ``lapses_in``.
        leases = tuple(Lease(name, member.member_id, SOLE_EPOCH) for name in sorted(set(names)))
        return LeaseView((replace(member, lapses_in=None),), leases)

    async def change_leases(
        self, group: str, member_id: str, *, release: Sequence[str], acquire: Sequence[str], ttl: float
    ) -> list[Lease]:
        # The one member already holds everything (renew_leases says so), so
        # a caller following the fair share never asks for a change; if it
        # does, it gets what it asked for.
        return [Lease(name, member_id, SOLE_EPOCH) for name in acquire]

    async def leave_group(self, group: str, member_id: str) -> None:
        return None
