"""Group commit under load gathers the next batch for a moment (as
PostgreSQL's commit_delay does); a lone append never waits."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from service.store.postgres.group_commit import Append, GroupCommitter, Outcome


class Writes:
    """A write callable whose batches the test completes by hand."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.pending: list[tuple[Sequence[Append], asyncio.Future[list[Outcome]]]] = []

    def __call__(self, appends: Sequence[Append]) -> asyncio.Future[list[Outcome]]:
        self.batches.append([a.aggregate_id for a in appends])
        written: asyncio.Future[list[Outcome]] = asyncio.get_running_loop().create_future()
        self.pending.append((appends, written))
        return written

    def finish(self) -> None:
        appends, written = self.pending.pop(0)
        written.set_result([[] for _ in appends])


def append(aggregate_id: str) -> Append:
    return Append(aggregate_id, (), 0, ())


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_after_a_batch_of_several_the_next_gathers_what_arrives_meanwhile() -> None:
    writes = Writes()
    group = GroupCommitter(writes, in_flight=1, gather=0.05)
    first = [group.append(append(f"a-{n}")) for n in range(2)]
    await turns()
    waiting = group.append(append("b-0"))  # queued while the first batch is written
    writes.finish()
    await asyncio.gather(*first)
    await turns()
    assert writes.batches == [["a-0", "a-1"]]  # b-0 waits for company
    late = [group.append(append(f"b-{n}")) for n in range(1, 4)]
    await asyncio.sleep(0.1)
    assert writes.batches == [["a-0", "a-1"], ["b-0", "b-1", "b-2", "b-3"]]
    writes.finish()
    await asyncio.gather(waiting, *late)


async def test_a_lone_append_is_written_at_once() -> None:
    writes = Writes()
    group = GroupCommitter(writes, in_flight=1, gather=3600)
    only = group.append(append("a"))
    await turns()
    waiting = group.append(append("b"))  # queued behind a batch of one: no load
    writes.finish()
    await only
    await turns()
    assert writes.batches == [["a"], ["b"]]
    writes.finish()
    await asyncio.wait_for(waiting, 5)


async def test_enough_queued_appends_go_at_once() -> None:
    writes = Writes()
    group = GroupCommitter(writes, in_flight=1, gather=3600, gather_below=3)
    first = [group.append(append(f"a-{n}")) for n in range(2)]
    await turns()
    queued = [group.append(append(f"b-{n}")) for n in range(3)]
    writes.finish()
    await asyncio.gather(*first)
    await turns()
    assert writes.batches == [["a-0", "a-1"], ["b-0", "b-1", "b-2"]]
    writes.finish()
    await asyncio.wait_for(asyncio.gather(*queued), 5)
