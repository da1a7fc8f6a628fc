"""``chronicle.v1.ClusterService``: the topology routing clients follow
(members, their addresses, the owner of each partition), and the hint a
member adds to a command's response when it does not own the command's
partition (``not_owner_hint``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import grpc

from chronicle.v1 import cluster_service_pb2 as pb
from chronicle.v1 import cluster_service_pb2_grpc as pb_grpc
from service.cluster.hashing import HASH_NAME
from service.cluster.ownership import Ownership, Topology
from service.errors import StoreUnavailable
from service.store.leasing import LeaseMember

NOT_OWNER_KEY = "chronicle-not-owner"
TOPOLOGY_EPOCH_KEY = "chronicle-topology-epoch"
_HASHES = {HASH_NAME: pb.PARTITION_HASH_CRC32}
# A watcher looks at the topology at least this often, in case a change
# came without a wake-up (a lease that lapsed on its own).
_RECHECK_SECONDS = 5.0


def encode_topology(topology: Topology, behind: frozenset[str] = frozenset()) -> pb.Topology:
    """``behind``: the ids of the members behind the cluster features on
    (``FeaturesBehind.behind``)."""
    return pb.Topology(
        epoch=topology.epoch,
        partition_count=topology.partition_count,
        hash=_HASHES[topology.hash_name],
        members=[
            pb.Member(
                member_id=m.member_id,
                address=m.address,
                console_address=m.console,
                version=m.version,
                schema_version=m.schema_version,
                behind_features=m.member_id in behind,
            )
            for m in topology.members
        ],
        partition_owners=list(topology.owners),
        answered_by=topology.answered_by,
    )


def not_owner_hint(ownership: Ownership, aggregate_id: str) -> tuple[tuple[str, str], ...] | None:
    """The trailing metadata that tells a routing client this member does
    not own ``aggregate_id``'s partition; None when it does."""
    partition = ownership.partition_of(aggregate_id)
    if ownership.owns_partition(partition):
        return None
    return ((NOT_OWNER_KEY, str(partition)), (TOPOLOGY_EPOCH_KEY, str(ownership.epoch)))


class ClusterService(pb_grpc.ClusterServiceServicer):
    def __init__(
        self,
        ownership: Ownership,
        *,
        behind: Callable[[Sequence[LeaseMember]], Sequence[LeaseMember]] | None = None,
    ) -> None:
        self._ownership = ownership
        self._behind = behind  # members behind the cluster features (None: the store has none)
        self._closing = asyncio.Event()

    def _topology(self) -> pb.Topology:
        topology = self._ownership.topology()
        behind = frozenset(m.member_id for m in self._behind(topology.members)) if self._behind else frozenset()
        return encode_topology(topology, behind)

    def close(self) -> None:
        """End every WatchTopology stream (UNAVAILABLE, SHUTTING_DOWN), so a
        stopping server does not wait for its watchers to hang up."""
        self._closing.set()

    async def GetTopology(
        self, request: pb.GetTopologyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetTopologyResponse:
        return pb.GetTopologyResponse(topology=self._topology())

    async def WatchTopology(
        self, request: pb.WatchTopologyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchTopologyResponse]:
        closing = asyncio.ensure_future(self._closing.wait())
        try:
            sent: pb.Topology | None = None
            while not self._closing.is_set():
                version = self._ownership.version
                topology = self._topology()
                if topology != sent:
                    yield pb.WatchTopologyResponse(topology=topology)
                    sent = topology
                change = asyncio.ensure_future(self._ownership.wait_for_change(version, _RECHECK_SECONDS))
                await asyncio.wait((change, closing), return_when=asyncio.FIRST_COMPLETED)
                change.cancel()
            raise StoreUnavailable("the server is shutting down; watch another member", reason="SHUTTING_DOWN")
        finally:
            closing.cancel()
