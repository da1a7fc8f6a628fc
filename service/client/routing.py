"""Sending each command to the replica that owns its aggregate.

A cluster's replicas share the aggregate ids out by partition
(``chronicle.v1.ClusterService``; docs/scaling.md): the owner of a
partition has its aggregates warm and meets no concurrent writer. ``Routes``
keeps the topology (members, the owner of each partition), one channel per
member, and chooses where each command goes:

* to the owner of the command's partition;
* to another member when the partition has no owner, or its owner just
  failed to answer (UNAVAILABLE: it is marked down for a second and the
  topology refreshed), or to the address the client was given (the seed)
  when no member is known. Every member executes every command, so this
  only costs the warm cache, never correctness;
* a read (``Routes.reader``: any member serves reads, they share the store)
  goes to the address given while it is not marked down, else to another
  live member, with the same books as a command's; not spread over the
  members, so that a client's reads never go back in the log (members may
  read from standbys that lag by different amounts; docs/scaling.md);
* the address given is the member it reaches, known by the member id that
  member answers with (``Topology.answered_by``), not by its spelling
  (``adopt``, ``seed_member``);
* the topology follows ``WatchTopology`` (from the seed, or any member when
  the seed's stream breaks), and is fetched again when a response says its
  member is not the owner (the hint in trailing metadata) with a newer
  epoch than the client's, or, once a second at most, with an older one
  (``Routes.adopt`` says when an older topology is taken).

A server that does not offer ``ClusterService`` (UNIMPLEMENTED) makes this
a plain client of the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from chronicle.v1 import cluster_service_pb2, cluster_service_pb2_grpc, command_service_pb2_grpc
from service.client.call_metadata import CallMetadata
from service.client.errors import RemoteError
from service.client.going_away import GOING_REASONS
from service.client.stopping import stop

log = logging.getLogger(__name__)

NOT_OWNER_KEY = "chronicle-not-owner"
TOPOLOGY_EPOCH_KEY = "chronicle-topology-epoch"
# A member that did not answer is tried again after this long; each time a
# call sent to it after that (a probe) fails before it answered anything,
# twice as long, up to the most.
DOWN_SECONDS = 1.0
MOST_DOWN_SECONDS = 30.0
# A topology of the client's partition count with a lower epoch than its own
# is taken only once fetches returned a lower one this many times in a row,
# each at least BEHIND_SECONDS after the one counted before (``Routes.adopt``);
# a hint with a lower epoch fetches the topology once per BEHIND_SECONDS at most.
BEHIND_FETCHES = 3
BEHIND_SECONDS = 1.0
# Reconnecting a broken topology watch waits this long at first, doubling.
_WATCH_BACKOFF = (0.2, 5.0)
_FETCH_TIMEOUT = 2.0


# How a call ends when its member is gone or going (killed, the connection
# lost, a server stopping). A routed stream's CANCELLED is always the
# server's: a call the client cancels itself ends in asyncio.CancelledError
# (grpc.aio raises it for a locally cancelled call), never in an
# AioRpcError, so it does not reach a reopening; and CommandStream cancels a
# call only when it has already broken (before reopening) or when the stream
# ends (then nothing is reopened).
MEMBER_GONE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED})
# The status gRPC itself (the server's core, so every client sees the same
# grpc-message) ends a call with once the call's connection outlived the
# server's --max-connection-age-seconds and its grace: the member closed an
# old connection (it sent GOAWAY at the age, and the channel opened a new
# one for new calls meanwhile), and is as alive as before.
CONNECTION_AGED = "max connection age"


def member_gone(error: RemoteError) -> bool:
    """Whether the member whose call ``error`` ended is gone or going: it is
    marked down (``Routes.unreachable``), and a routed stream's lane moves
    to another member; otherwise the lane reopens on the same one, and a
    unary send tries it again.

    A status that carries Chronicle's ErrorInfo was sent by a running
    member, which said why it ended the call (CREDENTIALS_CHANGED: its key
    or policy files were read again and the caller's grants changed; the
    caller is to open the call again there): the member is gone only if its
    reason says it is going (``GOING_REASONS``). A status without one
    (``RemoteError.reason`` is then the code's name) is gRPC's own: the
    connection broke or was refused, or the server stopped and cancelled
    its calls ("Cancelling all calls"), and the member counts as gone: it
    cannot be told from one that was killed without trying it again, and a
    call to try it first would hold up every failover (a member that is
    only unlucky is tried again after ``DOWN_SECONDS``). Except
    ``CONNECTION_AGED``, which only a live server sends. Should a gRPC
    release word that status otherwise, a call ended by a connection's age
    moves for a second as it did before: a warm cache lost, never a
    command."""
    if error.code not in MEMBER_GONE:
        return False
    if error.reason != error.code.name:  # an ErrorInfo: the member itself answered
        return error.reason in GOING_REASONS
    return error.message != CONNECTION_AGED


def unanswered(error: RemoteError) -> bool:
    """Whether ``error`` is the client's own deadline passing on a routed
    command (DEADLINE_EXCEEDED with no ErrorInfo: no member said it): the
    member did not answer within the attempt's time, as one that a client
    can no longer reach does not (its connection silently dead, or a new
    one not getting through). The member is marked down and the retry goes
    elsewhere; a member that was only slow loses its warm cache for a
    moment, never a command (a retry keeps the command's id)."""
    return bool(error.code == grpc.StatusCode.DEADLINE_EXCEEDED and error.reason == error.code.name)


def partition_of(aggregate_id: str, partition_count: int) -> int:
    """CRC-32 of the id's UTF-8 bytes, modulo the (power-of-two) count."""
    return zlib.crc32(aggregate_id.encode("utf-8")) & (partition_count - 1)


class Routes:
    def __init__(
        self,
        seed: grpc.aio.Channel,
        *,
        open_channel: Callable[[str], grpc.aio.Channel],
        call_metadata: Sequence[tuple[str, str]] | CallMetadata = (),
        clock: Callable[[], float] = time.monotonic,
        seed_address: str | None = None,
    ) -> None:
        self._seed = seed
        # The address ``seed`` reaches, as the client was given it: reads
        # prefer it, and it is marked down as a member is (None: not known,
        # and reads stay on ``seed``).
        self.seed_address = seed_address
        # The member id of the replica ``seed`` reaches, as it says itself
        # (``Topology.answered_by`` of what came over ``seed``); "" until
        # one said. That member goes by ``seed_address`` here, however it
        # advertises itself (see ``_take``).
        self._seed_commands = command_service_pb2_grpc.CommandServiceStub(seed)
        self._open_channel = open_channel
        self._metadata = CallMetadata.of(call_metadata)
        self._clock = clock
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._commands: dict[str, command_service_pb2_grpc.CommandServiceStub] = {}
        self.topology: cluster_service_pb2.Topology | None = None
        self._owners: list[str] = []  # address by partition, "" for none
        self._addresses: list[str] = []  # every member's
        # When each member's latest down period ends (kept once it has ended:
        # ``unreachable`` tells a probe's failure from an older call's by it).
        self._down: dict[str, float] = {}
        self._strikes: dict[str, int] = {}  # down periods since the member last answered
        # Fetched topologies in a row of the held partition count with a lower
        # epoch than the held one (counted at most once per BEHIND_SECONDS),
        # when the last was counted, and when a lower hint may fetch again.
        self._behind = 0
        self._behind_at = -math.inf
        self._behind_hint_at = -math.inf
        self._turn = 0
        self._watcher: asyncio.Task[None] | None = None
        self._refresh: asyncio.Task[None] | None = None
        self._unsupported = False
        self._closed = False  # close(): no watch is started again
        self.changes = 0  # topologies adopted (from the watch or a fetch)
        self.refreshes = 0  # fetches started between the watch's messages (a hint, a member gone)
        self.not_owner = 0  # responses whose member said it does not own the partition
        self.failovers = 0  # calls that found their member unavailable (then sent elsewhere)
        self._changed = asyncio.Event()
        self.seed_member = ""

    # -- where a command goes --------------------------------------------------

    def owner_of(self, aggregate_id: str) -> str | None:
        """The address of the owner of ``aggregate_id``'s partition, if known."""
        if not self._owners:
            return None
        return self._owners[partition_of(aggregate_id, len(self._owners))] or None

    def route(self, aggregate_id: str) -> tuple[command_service_pb2_grpc.CommandServiceStub, str | None]:
        """The stub to send ``aggregate_id``'s command on, and the member
        address it reaches (None: the seed)."""
        self.start()
        owner = self.owner_of(aggregate_id)
        if owner is not None and not self.is_down(owner):
            return self._stub(owner), owner
        return self._any_member()

    def stub_for(self, address: str | None) -> tuple[command_service_pb2_grpc.CommandServiceStub, str | None]:
        """The stub of member ``address`` unless it is down (then another
        member's): for a stream that was pinned to it."""
        if address is not None and not self.is_down(address):
            return self._stub(address), address
        return self._any_member()

    def reader(self) -> str | None:
        """The address a read goes to now: the address given
        (``seed_address``) while it is not marked down, else another live
        member, in turn (every member serves reads from the shared store,
        and a read with ``min_position`` waits for that position on any of
        them); the address given again when none is live. None when the
        address given is not known: the seed's channel. A read's failure
        and answer are booked as a command's (``unreachable``,
        ``answered``), so reads and commands step around the same members."""
        self.start()
        seed = self.seed_address
        if seed is None or not self.is_down(seed):
            return seed
        return self._live_member() or seed

    def channel_of(self, address: str) -> grpc.aio.Channel:
        """The channel to member ``address`` (opened at its first use)."""
        if address == self.seed_address:
            return self._seed
        self._stub(address)
        return self._channels[address]

    def _any_member(self) -> tuple[command_service_pb2_grpc.CommandServiceStub, str | None]:
        address = self._live_member()
        if address is None:
            return self._seed_commands, None
        return self._stub(address), address

    def _live_member(self) -> str | None:
        """A member not marked down, in turn; None when there is none."""
        live = [address for address in self._addresses if not self.is_down(address)]
        if not live:
            return None
        self._turn = (self._turn + 1) % len(live)
        return live[self._turn]

    def _stub(self, address: str) -> command_service_pb2_grpc.CommandServiceStub:
        if address == self.seed_address:
            return self._seed_commands  # the seed's member: its channel is the client's own
        stub = self._commands.get(address)
        if stub is None:
            channel = self._channels[address] = self._open_channel(address)
            stub = self._commands[address] = command_service_pb2_grpc.CommandServiceStub(channel)
        return stub

    def is_down(self, address: str) -> bool:
        """Whether ``address`` is marked down (``unreachable``) still."""
        return self._down.get(address, -math.inf) > self._clock()

    def now(self) -> float:
        """The routes' clock: what ``unreachable`` is told a call was sent at."""
        return self._clock()

    # -- what answers tell -------------------------------------------------------

    def unreachable(self, address: str | None, sent: float | None = None) -> None:
        """A call to member ``address`` ended as ``member_gone`` says a
        call to a member gone or going does, or ``unanswered``. ``sent``
        (``now()``; None: now) is when the call was sent, or for a stream,
        the later of its opening and its last answer.

        A call sent after the member's latest down period ended (or when it
        had none) marks it down: for ``DOWN_SECONDS``, doubled for each
        earlier down period since it last answered (``answered``), up to
        ``MOST_DOWN_SECONDS``. A call sent before that period ended adds
        nothing: it was in flight when the member was marked down, or sent
        to it all the same while it was (a stream pinned to it, the address
        given), and its failure is the outage already counted. So one
        outage seen by many calls at once is one second down, and only
        probes, the calls sent once the member is no longer marked down,
        double it: a member the client cannot reach but that keeps its
        partitions (it is alive to the database) costs one attempt now and
        then, not one a second."""
        if address is None:
            return
        self.failovers += 1
        now = self._clock()
        if (now if sent is None else sent) < self._down.get(address, -math.inf):
            return
        strikes = self._strikes[address] = self._strikes.get(address, 0) + 1
        self._down[address] = now + min(DOWN_SECONDS * 2 ** (strikes - 1), MOST_DOWN_SECONDS)
        self._refresh_soon()

    def answered(self, address: str | None) -> None:
        """A call to member ``address`` was answered: its next failure
        marks it down for ``DOWN_SECONDS`` again."""
        if address is not None and self._strikes:
            self._strikes.pop(address, None)

    def hinted(self, trailing_metadata: Any) -> None:
        """Look at a command's trailing metadata: a member that executed it
        without owning its partition, knowing a newer topology than this
        client's, makes the client fetch it; one knowing an older topology
        does too, once per ``BEHIND_SECONDS`` at most (the member's view may
        lag, or the epochs went back: ``adopt``)."""
        if not trailing_metadata:
            return
        found = {key: value for key, value in trailing_metadata if key in (NOT_OWNER_KEY, TOPOLOGY_EPOCH_KEY)}
        if NOT_OWNER_KEY not in found:
            return
        self.not_owner += 1
        epoch = str(found.get(TOPOLOGY_EPOCH_KEY, "0"))
        known = self.topology.epoch if self.topology is not None else -1
        if not epoch.isdigit():
            return
        if int(epoch) > known:
            self._refresh_soon()
        elif int(epoch) < known and self._clock() >= self._behind_hint_at:
            self._behind_hint_at = self._clock() + BEHIND_SECONDS
            self._refresh_soon()

    # -- the topology --------------------------------------------------------------

    def adopt(self, topology: cluster_service_pb2.Topology, *, fetched: bool = False, from_seed: bool = False) -> None:
        """Use ``topology`` unless the client knows a newer one.

        ``from_seed``: it came over the seed's channel, so its
        ``answered_by`` is the member the seed reaches (``seed_member``),
        learnt whether the topology is taken or not. That member goes by
        ``seed_address`` in ``owner_of``, the members and the books
        (``unreachable``, ``is_down``), so a seed spelt otherwise than the
        member advertises itself (``localhost:50051`` for
        ``127.0.0.1:50051``, a host name for its IP address) is one member,
        not two: a replica that died is marked down once, and no attempt is
        spent on it under its other name.

        Epochs order the topologies of one partition group only (an epoch is
        the sum of the group's lease epochs): a topology with another
        partition count is another group's (the replicas were restarted with
        another ``--partitions``) and is taken whatever its epoch. Of the
        client's group, one with a lower epoch is a view behind the
        client's: a member's view lags the database by up to a heartbeat,
        and a client that took whatever the member it asked last answered
        would flip between two members' views; it is not taken. Unless the
        database's epochs went back (a fresh or restored database), when
        every member's view is lower for good: a lower topology that a fetch
        (``fetched``: GetTopology, not the watch) returned is counted, once
        per ``BEHIND_SECONDS`` at most, and the ``BEHIND_FETCHES``-th in a
        row (with nothing of the held epoch or newer between them) is taken.
        They span two seconds at least: a view a heartbeat behind (a second,
        at the default lease time) has caught up by then, and answers the
        held epoch or a newer one, which ends the count. A client that a
        lower epoch's hint tells it routed wrong fetches (``hinted``), so it
        gets there."""
        if from_seed and topology.answered_by and topology.answered_by != self.seed_member:
            self.seed_member = topology.answered_by
            if self.topology is not None:
                self._take(self.topology)
        count = topology.partition_count
        if count < 1 or count & (count - 1) or len(topology.partition_owners) != count:
            log.warning(
                "ignoring a malformed topology (%d partitions, %d owners)", count, len(topology.partition_owners)
            )
            return
        if topology.hash != cluster_service_pb2.PARTITION_HASH_CRC32:
            log.warning("ignoring a topology with an unknown partition hash (%d)", topology.hash)
            return
        held = self.topology
        if held is not None and count == held.partition_count and topology.epoch < held.epoch:
            if not fetched:
                return
            if self._clock() - self._behind_at >= BEHIND_SECONDS:
                self._behind += 1
                self._behind_at = self._clock()
            if self._behind < BEHIND_FETCHES:
                return
            log.info(
                "the topology's epoch went back (%d after %d, %d fetches in a row): taking the lower one",
                topology.epoch,
                held.epoch,
                self._behind,
            )
        self._behind = 0
        self._behind_at = -math.inf
        self._take(topology)
        self.changes += 1
        self._changed.set()
        self._changed = asyncio.Event()

    def _take(self, topology: cluster_service_pb2.Topology) -> None:
        """Route by ``topology``: its members' addresses, the seed's member
        by ``seed_address`` (``adopt``)."""
        addresses = {member.member_id: member.address for member in topology.members}
        seed_member = addresses.get(self.seed_member)
        # Only the same port under another spelling of the host: a seed on
        # another port is a front (a load balancer, or the port
        # `--processes N` share) that reaches any member, not that one.
        if seed_member is not None and self.seed_address is not None and _port(seed_member) == _port(self.seed_address):
            addresses[self.seed_member] = self.seed_address
        self.topology = topology
        self._owners = [addresses.get(owner, "") for owner in topology.partition_owners]
        self._addresses = sorted(addresses.values())

    async def wait_for_topology(self, check: Callable[[cluster_service_pb2.Topology], bool]) -> None:
        """Return once a topology for which ``check`` holds is adopted."""
        while self.topology is None or not check(self.topology):
            await self._changed.wait()

    def start(self) -> None:
        """Start following the topology (once; needs a running event loop)."""
        if self._watcher is None and not self._unsupported and not self._closed:
            self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="chronicle-topology")

    async def first_topology(self) -> None:
        """Fetch the topology once, briefly (a client that cannot get it
        sends to the seed until the watch gets it), and start watching."""
        self.start()
        with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
            await self._fetch(self._seed)

    async def _fetch(self, channel: grpc.aio.Channel) -> None:
        stub = cluster_service_pb2_grpc.ClusterServiceStub(channel)
        try:
            response = await stub.GetTopology(
                cluster_service_pb2.GetTopologyRequest(), timeout=_FETCH_TIMEOUT, metadata=self._metadata()
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                self._unsupported = True
            raise
        self.adopt(response.topology, fetched=True, from_seed=channel is self._seed)

    def _refresh_soon(self) -> None:
        if self._unsupported or self._closed or (self._refresh is not None and not self._refresh.done()):
            return
        self.refreshes += 1
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_once(), name="chronicle-topology-refresh")

    async def _refresh_once(self) -> None:
        for channel in self._candidates():
            try:
                await self._fetch(channel)
                return
            except grpc.aio.AioRpcError:
                continue

    def _candidates(self) -> list[grpc.aio.Channel]:
        """Where to ask for the topology: the seed, then the members not down."""
        members = [address for address in self._addresses if address != self.seed_address and not self.is_down(address)]
        return [self._seed, *(self.channel_of(address) for address in members)]

    async def _watch(self) -> None:
        delay = _WATCH_BACKOFF[0]
        turn = 0
        while not self._unsupported:
            candidates = self._candidates()
            channel = candidates[turn % len(candidates)]
            call = cluster_service_pb2_grpc.ClusterServiceStub(channel).WatchTopology(
                cluster_service_pb2.WatchTopologyRequest(), metadata=self._metadata()
            )
            try:
                async for message in call:
                    self.adopt(message.topology, from_seed=channel is self._seed)
                    delay = _WATCH_BACKOFF[0]
            except grpc.aio.AioRpcError as error:
                if error.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.info("the server offers no ClusterService: commands go to %s only", "the address given")
                    self._unsupported = True
                    return
                log.debug("topology watch broke (%s); watching another member", error.code().name)
            except Exception:
                # A topology this client cannot take (a bug on either side):
                # the watch must go on, or the client would route by a stale
                # topology for good. Watch another member after the pause.
                log.exception("a topology from the watch could not be adopted; watching another member")
            finally:
                call.cancel()
            turn += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, _WATCH_BACKOFF[1])

    async def close(self) -> None:
        self._closed = True
        here = asyncio.get_running_loop()
        # A task of another loop is one of a loop that runs no more (the
        # client hands its close to its own loop while that runs): it cannot
        # be stopped, nor awaited, from here. Let go of it all the same: it
        # holds its last call, and that call the connection open.
        await stop(*(task for task in (self._watcher, self._refresh) if task is not None and task.get_loop() is here))
        self._watcher = self._refresh = None
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._commands.clear()


def _port(address: str) -> str:
    """The port of ``host:port`` (``[v6]:port`` too); "" without one."""
    _, colon, port = address.rpartition(":")
    return port if colon and port.isdecimal() else ""
