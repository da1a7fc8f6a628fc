"""Which partitions this replica owns, and the topology clients route by.

The partitions of the aggregate hash space (``hashing.py``) are the leases
of one group, ``partitions/<count>`` (replicas configured with another
count form a group of their own and never mix their answers). Owning a
partition means: clients that route send its aggregates' commands here, so
their state stays warm in this replica's workers. It is never a condition of
executing a command: a replica executes whatever reaches it, under the
database's checks, and says so (``owns`` is False) when it is not the owner,
so that a routing client refreshes its topology.
"""

from __future__ import annotations

from dataclasses import dataclass

from service.cluster.hashing import HASH_NAME, check_partition_count, partition_of
from service.cluster.leases import LeaseGroup, LeaseKeeper
from service.store.leasing import LeaseMember


def partition_group(partition_count: int) -> LeaseGroup:
    check_partition_count(partition_count)
    return LeaseGroup(f"partitions/{partition_count}", tuple(str(p) for p in range(partition_count)))


@dataclass(frozen=True, slots=True)
class Topology:
    """What a routing client needs: every live member and its address, the
    owner of each partition (a member id, "" while it has none), the hash
    and partition count, and an epoch that grows with every change of a
    partition's owner (the sum of the partitions' lease epochs)."""

    epoch: int
    partition_count: int
    members: tuple[LeaseMember, ...]
    owners: tuple[str, ...]
    answered_by: str
    hash_name: str = HASH_NAME


class Ownership:
    def __init__(self, keeper: LeaseKeeper, partition_count: int) -> None:
        self.partition_count = check_partition_count(partition_count)
        self.group = partition_group(partition_count)
        self._keeper = keeper
        self._names = self.group.keys  # str(partition), made once
        self._epoch = (-1, 0)  # (keeper version, topology epoch) cached for hints

    @property
    def version(self) -> int:
        """Goes up when the topology may have changed (``wait_for_change``)."""
        return self._keeper.version

    async def wait_for_change(self, version: int, max_wait: float | None = None) -> int:
        return await self._keeper.wait_for_change(version, max_wait)

    def partition_of(self, aggregate_id: str) -> int:
        return partition_of(aggregate_id, self.partition_count)

    def owns_partition(self, partition: int) -> bool:
        return self._keeper.holds(self.group.name, self._names[partition])

    def owns(self, aggregate_id: str) -> bool:
        return self.owns_partition(partition_of(aggregate_id, self.partition_count))

    @property
    def epoch(self) -> int:
        """The topology's epoch, without building the topology each time."""
        version, epoch = self._epoch
        if version != self._keeper.version:
            version, epoch = self._keeper.version, self.topology().epoch
            self._epoch = (version, epoch)
        return epoch

    def owned(self) -> list[int]:
        return sorted(int(name) for name in self._keeper.held(self.group.name))

    def topology(self) -> Topology:
        view = self._keeper.view(self.group.name)
        owners = [""] * self.partition_count
        epoch = 0
        members: tuple[LeaseMember, ...] = ()
        if view is not None:
            members = view.members
            for lease in view.leases:
                epoch += lease.epoch
                if lease.owner is not None and lease.name.isdigit() and int(lease.name) < self.partition_count:
                    owners[int(lease.name)] = lease.owner
        return Topology(
            epoch=epoch,
            partition_count=self.partition_count,
            members=members,
            owners=tuple(owners),
            answered_by=self._keeper.member_id,
        )
