"""What consumers of a subscription group received and acknowledged, and
the group's promises checked against it and against the log (the
invariant checker's part for groups):

* nothing skipped: every event of the log the group reads was acknowledged
  by some consumer, and the group's own accounting (its checkpoints'
  count of acknowledged events) counts each exactly once;
* one aggregate, one consumer at a time, in order: what each consumer
  received of an aggregate is in version order (a redelivery repeats the
  last version, never goes back);
* at least once: an event a consumer received and did not acknowledge
  before it died was delivered to another consumer.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from service.client import ChronicleClient, Delivery, GroupInfo
from service.client.results import Event


class Seen(Protocol):
    """What the checks need of an event a consumer received (a client's
    ``Event``, or a line a consumer in another process wrote)."""

    @property
    def event_id(self) -> str: ...

    @property
    def aggregate_id(self) -> str: ...

    @property
    def version(self) -> int: ...


@dataclass
class ConsumerRecord:
    """One consumer's deliveries (in arrival order) and acknowledgements."""

    name: str
    received: list[Seen] = field(default_factory=list)
    acked: set[str] = field(default_factory=set)

    def unacked(self) -> set[str]:
        return {e.event_id for e in self.received} - self.acked


@dataclass
class GroupLedger:
    consumers: dict[str, ConsumerRecord] = field(default_factory=dict)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def consumer(self, name: str) -> ConsumerRecord:
        return self.consumers.setdefault(name, ConsumerRecord(name))

    def acked(self) -> set[str]:
        return set().union(*(c.acked for c in self.consumers.values()))

    def check_order(self) -> None:
        """Each consumer received each aggregate's events in version order."""
        for record in self.consumers.values():
            last: dict[str, int] = {}
            for event in record.received:
                before = last.get(event.aggregate_id, 0)
                assert event.version >= before, (
                    f"{record.name} received {event.aggregate_id} v{event.version} after v{before}"
                )
                last[event.aggregate_id] = event.version

    def check_complete(self, expected: dict[str, Event], group: GroupInfo) -> None:
        """Every expected event acknowledged, and counted once by the group."""
        missing = set(expected) - self.acked()
        assert not missing, f"{len(missing)} events never acknowledged, e.g. {sorted(missing)[:3]}"
        assert group.acknowledged == len(expected), (group.acknowledged, len(expected))
        assert group.parked == 0
        assert group.position == group.log_head and group.lag == 0

    def check_redelivered(self, dead: ConsumerRecord) -> None:
        """What ``dead`` held unacknowledged went to another consumer."""
        others = set().union(*(c.acked for c in self.consumers.values() if c is not dead))
        lost = dead.unacked() - others
        assert not lost, f"{len(lost)} events {dead.name} held were never delivered to another consumer"


async def consume_into(
    client: ChronicleClient,
    group: str,
    record: ConsumerRecord,
    ledger: GroupLedger,
    *,
    handle: Callable[[Delivery], Awaitable[bool]] | None = None,
    max_in_flight: int = 100,
) -> None:
    """Consume ``group`` as ``record.name`` until cancelled, writing every
    delivery down and acking it (unless ``handle`` says not to)."""
    async with client.consume(group, consumer=record.name, max_in_flight=max_in_flight) as deliveries:
        async for delivery in deliveries:
            record.received.append(delivery.event)
            ack = True if handle is None else await handle(delivery)
            if ack:
                await delivery.ack()
                record.acked.add(delivery.event.event_id)
            ledger.changed.set()


def by_aggregate(events: list[Seen]) -> dict[str, list[int]]:
    versions: dict[str, list[int]] = defaultdict(list)
    for event in events:
        versions[event.aggregate_id].append(event.version)
    return versions
