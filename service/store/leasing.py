"""What the lease role (``base.LeaseStore``) reads and writes.

A *lease group* is a set of named leases that live replicas share out among
themselves (``service/cluster/leases.py``): the partitions of the aggregate
hash space, the projections. A member of a group is a replica that has said
recently that it is alive (a heartbeat); a lease is held by at most one
member at a time, until it expires unless renewed. Every change of a lease's
holder increases its ``epoch``: the epoch a holder took a lease at is its
*fencing token*, and work committed under a token that is no longer current
is refused (``Fencing``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LeaseMember:
    """A live member of a lease group, the address clients reach it at and
    the URL of its console ("" when it serves none; migration 18 on
    PostgreSQL, 15 on SQLite).

    ``lapses_in``: in a view the store returned, the seconds its membership
    had left then (by the store's clock) unless it beat again; None where
    the store keeps no such time (the memory store's one member). Not part
    of what a member is (left out of comparisons)."""

    member_id: str
    address: str
    console: str = ""
    lapses_in: float | None = field(default=None, compare=False)
    # Its Chronicle version (service.version.described) and the schema
    # version its code knows (its store's newest migration; the store
    # writes its own at each heartbeat): "" and 0 for a member of a version
    # from before migration 22 (SQLite 19), or a store that keeps neither.
    # Left out of comparisons, as lapses_in: what a member runs, not who.
    version: str = field(default="", compare=False)
    schema_version: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Lease:
    """One lease of a group: who holds it (None: nobody, or its holder let it
    expire) and how many times its holder changed.

    ``lapses_in``: in a view the store returned, the seconds its holder's
    hold had left then (by the store's clock) unless renewed; None for a
    free lease, or where nothing lapses (the memory store's sole owner).
    Left out of comparisons."""

    name: str
    owner: str | None
    epoch: int
    lapses_in: float | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class LeaseView:
    """A group as one transaction saw it: its live members (by member id)
    and every one of its leases (by name)."""

    members: tuple[LeaseMember, ...]
    leases: tuple[Lease, ...]


@dataclass(frozen=True, slots=True)
class Fencing:
    """A fencing token: the lease ``name`` of ``group`` as ``member_id`` took
    it, at ``epoch``. A write guarded by it commits only while that lease is
    still held by that member at that epoch."""

    group: str
    name: str
    member_id: str
    epoch: int
