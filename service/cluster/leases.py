"""Sharing work among live replicas by leases in the store.

A replica is a *member* of each lease group it takes part in (the
partitions, the projections). Every ``interval`` seconds (a third of the
lease time ``ttl``) its ``LeaseKeeper`` sends one heartbeat per group, one
store operation: "I am alive, at this address; here are the leases I can
take; extend those I hold" (``LeaseStore.renew_leases``), and gets back the
group as the database sees it: the live members and every lease with its
holder. From that view alone the keeper decides what to change:

* **Fair share.** Each live member's share of the group's leases is as even
  as whole numbers allow (they differ by one at most), the larger shares to
  the first members in member-id order: every member computes the same
  shares from the same view, with no leader and no vote (``fair_shares``).
* **Rebalancing.** A member above its share gives up its least preferred
  leases; a member below it takes free (or expired) ones, most preferred
  first (``change_leases``, a second operation, only when there is
  something to change). Preferences are rendezvous hashes of member and
  lease, so members that go looking at the same moment mostly want
  different leases, and the database settles the rest (one UPDATE wins a
  lease, the other finds it taken). A member joining lowers everyone's
  share: the others give up leases at their next heartbeat, it takes them
  at its next. A member that does work under its leases may say what to
  do before it gives one up (``before_release``: a consumer of a
  subscription group commits what it acknowledged). A member leaving
  (``leave``) gives up all of its leases at once; a member that dies stops renewing, and its leases are free to take
  ``ttl`` seconds after its last heartbeat.
* **Stepping aside.** A member whose work under a lease stopped on
  something another member may be able to do (a projection meeting an
  event its plugin version cannot read, in a rolling upgrade) gives that
  lease up and does not take it again for ``STEP_ASIDE_TTLS`` lease times
  (``step_aside``). In a group that ``adopts`` (the projections', not the
  partitions'), a free lease that no member below its share took within
  ``ADOPT_AFTER_INTERVALS`` heartbeats is taken by a member that can hold
  it even above its share (it *adopts* it), and an adopted lease
  is never the one given up toward a fairer share: otherwise the lease a
  member stepped aside from would stay free while every member that can
  run it holds its share, or go back and forth.
* **Guarding.** Some leases are work whose storage a cluster feature
  changed (``service/store/features.py``: a ``tenant_keyed`` projection's
  documents under tenants' keys), which a member of an older version
  reads as absent and would build on. While a live member knows a schema
  below the feature's migration (``guard_below_schema``), a member that
  honours it neither gives such a lease up toward a fairer
  share nor leaves one free that it can take (``plan_changes``'
  ``guarded``): old members take only free leases, so holding them keeps
  the old ones out for as long as any new member lives. The schema alone
  decides, whether or not a feature is on yet: the member that turns one
  on cannot tell the moment it does, and an old member that joins after
  must find the leases already held.
* **Fencing.** Every change of a lease's holder adds one to its epoch; the
  epoch a member took a lease at is its fencing token (``fencing``). Work
  whose commit checks the token (a projection's batch) cannot commit once
  the lease moved, however late the old holder wakes up.
* **Holding locally.** A member treats a lease as its own from the moment
  it sent the heartbeat that renewed (or took) it, for ``ttl`` seconds by
  its own monotonic clock: the database's expiry, counted from a later
  moment, is later still, so a member stops acting as holder before anyone
  else can take the lease. If heartbeats fail (the database is away), its
  leases lapse on their own.

Leases are an optimisation wherever correctness is the database's job:
partitions only tell clients where an aggregate's cache is warm, and a
projection's exactly-once rests on its checkpoint (the fencing token only
stops a stale runner's batch earlier).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from service.store.base import LeaseStore
from service.store.leasing import Fencing, Lease, LeaseMember, LeaseView
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Looks at a group per heartbeat at most, when another member took leases
# this one went for (each look is one store operation more).
TAKE_ROUNDS = 3
# A member that stepped aside from a lease takes it again after this many
# lease times at the soonest: time for another member to see it free for
# ADOPT_AFTER_INTERVALS heartbeats and take it (about 4/3 of a lease time).
STEP_ASIDE_TTLS = 3
ADOPT_AFTER_INTERVALS = 2


@dataclass(frozen=True, slots=True)
class LeaseGroup:
    """A group this replica takes part in, and the leases of it that it can
    hold (a replica without a projection's plugin cannot run it)."""

    name: str
    keys: tuple[str, ...]
    # Whether a free lease nobody takes is adopted above a member's share
    # (module docstring, "Stepping aside"): for groups whose members step
    # aside (the projections'), not the partitions, which must stay fair.
    adopts: bool = False
    # Whether each lease this replica takes or gives up is logged (INFO):
    # for the projections' and reactions' group, where a lease is a runner
    # an operator looks for ("where does bank.transfers run now?"); not
    # the partitions', whose every move the topology already tells.
    logged: bool = False
    # Leases never handed to a member behind the cluster features (module
    # docstring, "Guarding").
    guarded: frozenset[str] = frozenset()


def fair_shares(member_ids: Sequence[str], total: int) -> dict[str, int]:
    """How many of ``total`` leases each member should hold: ``total //
    members`` each, and one more for the first ``total % members`` members
    in member-id order."""
    ordered = sorted(member_ids)
    if not ordered:
        return {}
    base, extra = divmod(total, len(ordered))
    return {member: base + (1 if rank < extra else 0) for rank, member in enumerate(ordered)}


def preference(member_id: str, name: str) -> int:
    """How much ``member_id`` wants lease ``name`` (rendezvous hashing):
    each member orders the leases its own way."""
    # Not CRC-32: it is linear, so two members' orders would be one order
    # XORed with a constant, and they would want the same leases.
    digest = hashlib.blake2b(f"{member_id}\x00{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True, slots=True)
class Plan:
    """What one member changes after a heartbeat."""

    release: tuple[str, ...] = ()
    acquire: tuple[str, ...] = ()


def plan_changes(
    view: LeaseView,
    member_id: str,
    known: frozenset[str],
    *,
    shunned: frozenset[str] = frozenset(),
    adopted: frozenset[str] = frozenset(),
    unwanted: frozenset[str] = frozenset(),
    guarded: frozenset[str] = frozenset(),
) -> Plan:
    """Toward ``member_id``'s fair share of ``view``: the leases to give up
    (above the share) or to take (below it, among the free ones it knows).
    ``shunned``: leases it stepped aside from, given up whatever its share
    and not taken; ``adopted``: leases it took above its share, kept;
    ``unwanted``: free leases nobody took for a while, taken above the
    share (module docstring, "Stepping aside"); ``guarded``: leases kept,
    and taken when free, whatever the share (a member behind the cluster
    features is live: module docstring, "Guarding")."""
    target = fair_shares([m.member_id for m in view.members], len(view.leases)).get(member_id, 0)
    mine = [lease.name for lease in view.leases if lease.owner == member_id]
    stepping_aside = tuple(name for name in mine if name in shunned)
    kept = [name for name in mine if name not in shunned]
    if len(kept) > target:
        givable = [name for name in kept if name not in adopted and name not in guarded]
        least_wanted = sorted(givable, key=lambda name: preference(member_id, name))
        return Plan(release=stepping_aside + tuple(least_wanted[: len(kept) - target]))
    free = [lease.name for lease in view.leases if lease.owner is None and lease.name in known - shunned]
    most_wanted = sorted(free, key=lambda name: preference(member_id, name), reverse=True)
    room = target - len(kept)
    adopting = tuple(name for name in most_wanted[room:] if name in unwanted or name in guarded)
    return Plan(release=stepping_aside, acquire=tuple(most_wanted[:room]) + adopting)


@dataclass(frozen=True, slots=True)
class _Held:
    epoch: int
    until: float  # monotonic clock


@dataclass(slots=True)
class _GroupState:
    group: LeaseGroup
    known: frozenset[str]
    held: dict[str, _Held] = field(default_factory=dict)
    view: LeaseView | None = None
    seen_at: float | None = None  # monotonic clock: when the store last showed us the group
    active: bool = True  # False once this replica left the group
    # Stepping aside (module docstring): the leases this member gave up,
    # each until when (monotonic clock); the ones it adopted; and since
    # when each free lease it can hold has been seen free.
    shunned: dict[str, float] = field(default_factory=dict)
    adopted: set[str] = field(default_factory=set)
    free_since: dict[str, float] = field(default_factory=dict)

    def planned(self, view: LeaseView, member_id: str, now: float, adopt_after: float, guarded: frozenset[str]) -> Plan:
        """``plan_changes`` for this member, with what it stepped aside from
        and adopted, and the leases it guards now."""
        for name, until in list(self.shunned.items()):
            if until <= now:
                del self.shunned[name]
        free = {lease.name for lease in view.leases if lease.owner is None and lease.name in self.known}
        self.free_since = {name: self.free_since.get(name, now) for name in free}
        self.adopted &= {lease.name for lease in view.leases if lease.owner == member_id}
        return plan_changes(
            view,
            member_id,
            self.known,
            shunned=frozenset(self.shunned),
            adopted=frozenset(self.adopted),
            unwanted=frozenset(name for name, since in self.free_since.items() if now - since >= adopt_after)
            if self.group.adopts
            else frozenset(),
            guarded=guarded,
        )


def _owners(view: LeaseView | None) -> object:
    if view is None:
        return None
    return (view.members, tuple((lease.name, lease.owner) for lease in view.leases))


def _patched(view: LeaseView, member_id: str, released: Sequence[str], taken: Sequence[Lease]) -> LeaseView:
    """``view`` after this member's own changes (the database's next view
    will show them too)."""
    gone = set(released)
    new = {lease.name: lease for lease in taken}
    leases = []
    for lease in view.leases:
        if lease.name in new:
            leases.append(new[lease.name])
        elif lease.name in gone:
            leases.append(Lease(lease.name, None, lease.epoch + 1))
        else:
            leases.append(lease)
    return LeaseView(view.members, tuple(leases))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a lease this member took came from: the member that held it at
    the previous heartbeat (None: nobody did, or there was none), its
    address, and whether that member's membership had expired (it stopped
    renewing: killed, hung, cut off from the store) rather than it giving
    the lease up or leaving the group."""

    member_id: str | None
    address: str = ""
    expired: bool = False

    def said(self) -> str:
        if self.member_id is None:
            return "it was free"
        if self.expired:
            return (
                f"from member {self.member_id} at {self.address or '(no address)'}, whose membership expired:"
                " it stopped without leaving (killed, hung or cut off from the store)"
            )
        return f"from member {self.member_id} at {self.address or '(no address)'}, which gave it up"


def origins(
    previous: LeaseView | None, view: LeaseView, names: Sequence[str], elapsed: float | None, slack: float = 0.0
) -> dict[str, Origin]:
    """Where each of ``names`` (leases just taken) came from, by the
    ``previous`` view (``elapsed`` seconds before ``view``, its successor).
    A holder missing from ``view``'s members either left (its leases were
    freed at once, its membership had time left) or expired (its membership
    had lapsed by now, by the time it had left in ``previous``, or had
    lapsed already while it held the lease). ``slack``: how much sooner
    than by ``elapsed`` the lapse may have been (the store's clock and
    this member's measure the time between heartbeats apart)."""
    if previous is None:
        return dict.fromkeys(names, Origin(None))
    owners = {lease.name: lease.owner for lease in previous.leases}
    before = {member.member_id: member for member in previous.members}
    live = {member.member_id for member in view.members}
    found = {}
    for name in names:
        owner = owners.get(name)
        member = before.get(owner) if owner is not None else None
        if owner is None:
            found[name] = Origin(None)
            continue
        # Gone without freeing its leases: it was no member any more in
        # ``previous`` while it still held this one (a member that leaves
        # frees them at once), or its membership had lapsed by now.
        lapsed = owner not in live and (
            member is None
            or (member.lapses_in is not None and elapsed is not None and elapsed + slack >= member.lapses_in)
        )
        found[name] = Origin(owner, member.address if member is not None else "", lapsed)
    return found


def _left(view: LeaseView, member_id: str) -> LeaseView:
    members = tuple(m for m in view.members if m.member_id != member_id)
    leases = tuple(
        Lease(lease.name, None, lease.epoch + 1) if lease.owner == member_id else lease for lease in view.leases
    )
    return LeaseView(members, leases)


class LeaseKeeper:
    """One replica's leases in every group it takes part in (see the module
    docstring). ``start`` runs the heartbeats; ``holds`` and ``fencing``
    answer from memory, without a store call; ``version`` goes up whenever
    a group's members or holders, as this replica knows them, change
    (``wait_for_change``)."""

    def __init__(
        self,
        store: LeaseStore,
        *,
        member: LeaseMember,
        groups: Sequence[LeaseGroup],
        ttl: float,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        before_release: Callable[[str, tuple[str, ...]], Awaitable[None]] | None = None,
        guard_below_schema: int | None = None,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"the lease time must be positive, got {ttl}")
        self.member = member
        self.ttl = ttl
        self.interval = interval if interval is not None else ttl / 3
        self._store = store
        self._clock = clock
        # Called with a group and the leases of it this member is about to
        # give up toward a fairer share, while it still holds them.
        self._before_release = before_release
        # A live member knowing a schema below this one does not honour the
        # cluster feature that changed how the groups' ``guarded`` leases'
        # work is stored: they are kept from it (module docstring,
        # "Guarding"). None: a store without features.
        self._guard_below_schema = guard_below_schema
        # Whether taking and giving up a ``logged`` group's leases is said
        # (INFO): from once the server started (service.app), its first
        # holdings being in its start-up lines.
        self.logging_changes = False
        self._groups = {g.name: _GroupState(g, frozenset(g.keys)) for g in groups}
        self.version = 0
        self._wakeup: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        # Per group: leases this replica took from members whose membership
        # had expired (a metric: replicas that died rather than stopped).
        self.taken_over: dict[str, int] = dict.fromkeys(self._groups, 0)

    @property
    def member_id(self) -> str:
        return self.member.member_id

    # -- answers from memory -------------------------------------------------

    def holds(self, group: str, name: str) -> bool:
        state = self._groups.get(group)
        held = state.held.get(name) if state is not None else None
        return held is not None and held.until > self._clock()

    def fencing(self, group: str, name: str) -> Fencing | None:
        """The token of lease ``name`` while this replica holds it, else None."""
        state = self._groups.get(group)
        held = state.held.get(name) if state is not None else None
        if held is None or held.until <= self._clock():
            return None
        return Fencing(group, name, self.member.member_id, held.epoch)

    def held(self, group: str) -> list[str]:
        """The leases of ``group`` this replica holds now."""
        state = self._groups.get(group)
        if state is None:
            return []
        now = self._clock()
        return sorted(name for name, held in state.held.items() if held.until > now)

    def view(self, group: str) -> LeaseView | None:
        """The group as the last heartbeat saw it, with this replica's own
        changes since (leaving it included); None before the first heartbeat."""
        state = self._groups.get(group)
        return state.view if state is not None else None

    def ages(self, group: str) -> tuple[float | None, dict[str, float]]:
        """For an operator: seconds since the store last showed this
        replica the group (None before the first heartbeat), and for each
        lease this replica holds, the seconds left before it would lapse
        without a renewal."""
        state = self._groups.get(group)
        if state is None:
            return None, {}
        now = self._clock()
        age = None if state.seen_at is None else now - state.seen_at
        return age, {name: held.until - now for name, held in sorted(state.held.items()) if held.until > now}

    def lapsing(self, group: str) -> tuple[dict[str, float], dict[str, float]]:
        """For an operator: the seconds left now before each live member's
        membership of ``group``, and each of its held leases, lapse unless
        renewed: what the store said at the last heartbeat (by its clock),
        less the time since; this replica's own leases as ``ages`` says.
        Empty before the first heartbeat, and where the store keeps no such
        times (the memory store's one member holds everything)."""
        state = self._groups.get(group)
        if state is None or state.view is None or state.seen_at is None:
            return {}, {}
        since = self._clock() - state.seen_at
        members = {m.member_id: m.lapses_in - since for m in state.view.members if m.lapses_in is not None}
        leases = {
            lease.name: lease.lapses_in - since
            for lease in state.view.leases
            if lease.owner is not None and lease.owner != self.member_id and lease.lapses_in is not None
        }
        return members, {**leases, **self.ages(group)[1]}

    async def wait_for_change(self, version: int, max_wait: float | None = None) -> int:
        """Return the current ``version`` once it differs from ``version``
        (at once if it already does), or after ``max_wait`` seconds."""
        if self.version == version:
            if self._wakeup is None or self._wakeup.done():
                self._wakeup = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max_wait):
                    await asyncio.shield(self._wakeup)
        return self.version

    def _changed(self) -> None:
        self.version += 1
        if self._wakeup is not None and not self._wakeup.done():
            self._wakeup.set_result(None)

    # -- heartbeats ------------------------------------------------------------

    async def beat(self) -> None:
        """One heartbeat of every group, the groups concurrently."""
        await asyncio.gather(*(self._beat(state) for state in self._groups.values() if state.active))

    async def _beat(self, state: _GroupState) -> None:
        me = self.member.member_id
        before = set(state.held)
        previous, previous_at = state.view, state.seen_at
        for _ in range(TAKE_ROUNDS):
            sent = self._clock()
            view = await self._store.renew_leases(state.group.name, self.member, state.group.keys, self.ttl)
            held = {lease.name: _Held(lease.epoch, sent + self.ttl) for lease in view.leases if lease.owner == me}
            for name in state.shunned:
                held.pop(name, None)  # not to be worked under while it is given up
            guarded = self._guarded(state, view)
            plan = state.planned(view, me, sent, ADOPT_AFTER_INTERVALS * self.interval, guarded)
            if not (plan.release or plan.acquire):
                break
            if plan.release and self._before_release is not None:
                await self._before_release(state.group.name, plan.release)
            for name in plan.release:  # no longer ours from the moment we decide to give them up
                held.pop(name, None)
            # A copy: a ``leave`` while the change is under way clears what
            # the state holds, and what the change takes must not go in it.
            state.held = dict(held)
            sent = self._clock()
            taken = await self._store.change_leases(
                state.group.name, me, release=plan.release, acquire=plan.acquire, ttl=self.ttl
            )
            target = fair_shares([m.member_id for m in view.members], len(view.leases)).get(me, 0)
            for lease in taken:
                held[lease.name] = _Held(lease.epoch, sent + self.ttl)
                # A guarded lease is kept while it is guarded, not adopted
                # for good: fair shares again once the old members left.
                if len(held) > target and lease.name not in guarded:
                    state.adopted.add(lease.name)
            view = _patched(view, me, plan.release, taken)
            if len(taken) == len(plan.acquire) or not state.active:
                break
            # Another member took some of the free leases first (survivors
            # of a member that died want about the same ones): look again
            # now rather than a heartbeat later, so a dead member's leases
            # are all taken within one heartbeat of their expiry.
            state.held = held
        if not state.active:
            return  # left the group meanwhile
        state.held = held
        gained = sorted(set(held) - before)
        # Half a heartbeat of slack: a member that left had at least two
        # heartbeats' time left (ttl less one), one that died none.
        elapsed = None if previous_at is None else sent - previous_at
        came_from = origins(previous, view, gained, elapsed, slack=self.interval / 2)
        self.taken_over[state.group.name] += sum(origin.expired for origin in came_from.values())
        if self.logging_changes:
            if state.group.logged:
                self._log_changes(state.group.name, before, set(held), came_from)
            else:
                self._log_takeovers(state.group.name, came_from)
        changed = _owners(state.view) != _owners(view)
        state.view = view
        state.seen_at = sent
        if changed:
            self._changed()

    def _guarded(self, state: _GroupState, view: LeaseView) -> frozenset[str]:
        """The leases of the group this member keeps, and takes when free,
        whatever its share: its ``guarded`` ones while a live member is
        behind the cluster features (module docstring, "Guarding")."""
        since = self._guard_below_schema
        if since is None or not state.group.guarded:
            return frozenset()
        if all(m.schema_version >= since for m in view.members):
            return frozenset()
        return state.group.guarded & state.known

    def _log_changes(self, group: str, before: set[str], after: set[str], came_from: dict[str, Origin]) -> None:
        """Say which leases of ``group`` this replica took (and from whom) and
        gave up (or lost: a lease it no longer holds at a heartbeat, expired
        or taken)."""
        for name in sorted(after - before):
            origin = came_from.get(name, Origin(None))
            log.log(
                logging.WARNING if origin.expired else logging.INFO,
                "this replica took lease %s of group %s (%s): it runs %s here now",
                name,
                group,
                origin.said(),
                name,
            )
        for name in sorted(before - after):
            log.info("this replica gave up lease %s of group %s: %s runs elsewhere now", name, group, name)

    def _log_takeovers(self, group: str, came_from: dict[str, Origin]) -> None:
        """Say which leases of ``group`` (the partitions) this replica took,
        one line per member they came from: WARNING for a member whose
        membership expired (a replica that died leaves no other trace), INFO
        for a rebalancing or a member that left."""
        by_origin: dict[Origin, list[str]] = {}
        for name, origin in came_from.items():
            by_origin.setdefault(origin, []).append(name)
        for origin, names in by_origin.items():
            log.log(
                logging.WARNING if origin.expired else logging.INFO,
                "this replica took %d lease(s) of group %s (%s): %s",
                len(names),
                group,
                origin.said(),
                ", ".join(sorted(names, key=lambda name: (len(name), name))),
            )

    def members(self, group: str) -> int:
        """The live members of ``group`` as the last heartbeat saw them (0
        before the first)."""
        view = self.view(group)
        return 0 if view is None else len(view.members)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="lease-heartbeats")

    async def _run(self) -> None:
        while True:
            await self.beat_safely()
            await asyncio.sleep(self.interval)

    async def beat_safely(self) -> None:
        """``beat``, logging a failure (once until the next success) instead
        of raising it: the leases then lapse on their own."""
        try:
            await self.beat()
        except Exception as error:
            if not self._failing:
                log.warning(
                    "lease heartbeat failed (%s: %s); this replica's leases lapse within %g s unless one succeeds",
                    type(error).__name__,
                    error,
                    self.ttl,
                )
            self._failing = True
            return
        if self._failing:
            log.info("lease heartbeats succeed again")
            self._failing = False

    def step_aside(self, group: str, name: str) -> None:
        """Stop holding lease ``name`` of ``group`` now, give it up at the
        next heartbeat, and take it again only after ``STEP_ASIDE_TTLS``
        lease times (module docstring, "Stepping aside")."""
        state = self._groups.get(group)
        if state is None or name not in state.known:
            return
        state.shunned[name] = self._clock() + STEP_ASIDE_TTLS * self.ttl
        state.adopted.discard(name)
        if state.held.pop(name, None) is not None:
            if state.group.logged and self.logging_changes:
                log.info(
                    "this replica gave up lease %s of group %s (stepping aside): %s runs elsewhere", name, group, name
                )
            self._changed()

    async def leave(self, group: str) -> None:
        """Give up every lease of ``group`` and stop taking part in it."""
        state = self._groups.get(group)
        if state is None or not state.active:
            return
        state.active = False
        if state.group.logged and self.logging_changes:  # a stopping replica: where its runners went from
            now = self._clock()
            for name in sorted(name for name, held in state.held.items() if held.until > now):
                log.info(
                    "this replica gave up lease %s of group %s (leaving it: stopping): %s runs elsewhere now",
                    name,
                    group,
                    name,
                )
        state.held.clear()
        if state.view is not None:
            state.view = _left(state.view, self.member.member_id)
        self._changed()
        try:
            # Bounded: a store that does not answer must not hold up a
            # shutdown; the leases then lapse on their own.
            async with asyncio.timeout(self.interval):
                await self._store.leave_group(group, self.member.member_id)
        except Exception as error:
            log.warning("could not leave lease group %s (%s); its leases lapse within %g s", group, error, self.ttl)

    async def stop(self, *, leave: bool = True) -> None:
        """Stop the heartbeats; with ``leave``, give up every lease at once
        (without: they lapse after ``ttl``, as when a replica dies)."""
        await cancel_and_wait(self._task, "the lease heartbeat", log)
        self._task = None
        if leave:
            for group in list(self._groups):
                await self.leave(group)


class KeeperLease:
    """One lease of a group, as a worker asks about it before each piece of
    work (a projection's runner before each batch)."""

    def __init__(self, keeper: LeaseKeeper, group: str, name: str) -> None:
        self._keeper = keeper
        self._group = group
        self._name = name

    def fencing(self) -> Fencing | None:
        return self._keeper.fencing(self._group, self._name)

    def step_aside(self) -> None:
        """Give the lease up for a while, for another replica to take
        (``LeaseKeeper.step_aside``)."""
        self._keeper.step_aside(self._group, self._name)

    def holder(self) -> str:
        """The address of the replica that holds the lease, as the last
        heartbeat saw it ("" if nobody does, or it is not known yet)."""
        view = self._keeper.view(self._group)
        if view is None:
            return ""
        owner = next((lease.owner for lease in view.leases if lease.name == self._name), None)
        return next((m.address for m in view.members if m.member_id == owner), "")
