"""A worker remembers the last command ids it settled (``RECENT_COMMANDS``),
so that a retry of one is answered from its record without running the
handler, at a bounded cost per cached aggregate."""

from __future__ import annotations

import asyncio
import sys
import uuid

from domain_plugins.box.protos.box.v1 import box_pb2
from service.plugins.registry import Registry
from service.processing.commands import BatchResult, CommandBatch, CommandRequest
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.processing.worker import RECENT_COMMANDS
from service.store.base import Store
from service.store.memory import MemoryStore
from tests.support import counted_plugin
from tests.support.counted_plugin import RUNS

REGISTRY = Registry([counted_plugin.counted])


def rename(aggregate_id: str, name: str) -> CommandRequest:
    spec = REGISTRY.command(box_pb2.RenameBox.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(
        command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=box_pb2.RenameBox(name=name)
    )


def a_router() -> Router:
    return Router(CommandExecutor(Store.of(MemoryStore()), REGISTRY), idle_timeout=3600)


def start(router: Router, command: CommandRequest) -> asyncio.Future[BatchResult]:
    return router.start(CommandBatch((command,)))


async def test_retries_queued_with_their_original_wait_for_it_and_do_not_run() -> None:
    # Queued together, the retries would have been one series with their
    # original; on a warm aggregate the original is decided before they queue.
    for warm in (False, True):
        router = a_router()
        name = uuid.uuid4().hex
        if warm:
            await router.submit(rename("box-1", f"first-{name}"))
        command = rename("box-1", name)
        answers = await asyncio.gather(*(start(router, command) for _ in range(4)))
        assert [answer.replayed for answer in answers] == [False, True, True, True]
        assert len({answer.results[0].events[0].event_id for answer in answers}) == 1
        assert RUNS[name] == 1, f"warm={warm}"
        await router.close()


async def test_a_worker_remembers_only_the_last_commands_it_settled() -> None:
    router = a_router()
    names = [uuid.uuid4().hex for _ in range(RECENT_COMMANDS + 1)]
    commands = [rename("box-1", name) for name in names]
    for command in commands:
        await start(router, command)
    worker = router._workers["box-1"]
    assert worker._recent is not None and len(worker._recent) == RECENT_COMMANDS
    # The newest is answered without its handler, the oldest (forgotten) runs
    # it again; both from the record.
    newest, oldest = await start(router, commands[-1]), await start(router, commands[0])
    assert newest.replayed and oldest.replayed
    assert RUNS[names[-1]] == 1
    assert RUNS[names[0]] > 1  # its inline attempt, then the async path that reads the record
    await router.close()


async def test_what_a_worker_remembers_stays_a_small_array_however_many_commands_it_settled() -> None:
    # Paid per cached aggregate (docs/deployment.md's sizing): 152 bytes at
    # most, where a set of the ids as strings would be about 1,400.
    router = a_router()
    for round_ in range(4 * RECENT_COMMANDS):
        await asyncio.gather(*(start(router, rename(f"box-{i}", f"n{round_}")) for i in range(50)))
    sizes = {sys.getsizeof(worker._recent) for worker in router._workers.values()}
    assert max(sizes) <= 152, sizes
    await router.close()
