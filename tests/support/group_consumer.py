"""A consumer of a subscription group in a process of its own, for tests
that kill one (SIGKILL: no goodbye, its connection just drops).

    python -m tests.support.group_consumer ADDRESS GROUP NAME ACK_FIRST

It acknowledges the first ACK_FIRST events it receives and holds the rest
unacknowledged; each event it receives is one JSON line on stdout
(``event_id``, ``aggregate_id``, ``version``, ``acked``), written once the
ack (if any) is sent.
"""

from __future__ import annotations

import asyncio
import json
import sys

from service.client import ChronicleClient


async def consume(address: str, group: str, name: str, ack_first: int) -> None:
    acked = 0
    async with (
        ChronicleClient.connect(address) as client,
        client.consume(group, consumer=name, max_in_flight=50) as deliveries,
    ):
        async for delivery in deliveries:
            event = delivery.event
            ack = acked < ack_first
            if ack:
                await delivery.ack()
                acked += 1
            line = {"event_id": event.event_id, "aggregate_id": event.aggregate_id, "version": event.version}
            print(json.dumps({**line, "acked": ack}), flush=True)


if __name__ == "__main__":
    address, group, name, ack_first = sys.argv[1:5]
    asyncio.run(consume(address, group, name, int(ack_first)))
