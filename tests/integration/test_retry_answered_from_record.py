"""A retry of a command the server already committed (or recorded refused)
is answered from its record: without running the handler when the
aggregate's worker settled it, and correctly (handler run, its failure not
masking the record) when the worker does not remember it. Real server, real
socket; the handler counts its runs (tests/support/counted_plugin.py)."""

from __future__ import annotations

import asyncio
import math
import uuid
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import command_pb2, command_service_pb2
from domain_plugins.box.protos.box.v1 import box_pb2
from service.app import Application
from service.plugins.registry import Registry
from service.store.base import StoreAdapter
from service.store.sqlite import SqliteStore
from tests.support import counted_plugin
from tests.support.counted_plugin import REFUSED_PREFIX, RUNS, SLOW_PREFIX
from tests.support.grpc_client import Client, command, reason_of, running_server

REGISTRY = Registry([counted_plugin.counted])


def rename(aggregate_id: str, name: str) -> command_pb2.Command:
    return command(aggregate_id, box_pb2.RenameBox(name=name), command_id=str(uuid.uuid4()))


def fresh(prefix: str = "") -> tuple[str, str]:
    """An aggregate id and a name no other test uses."""
    return f"counted-{uuid.uuid4().hex[:8]}", f"{prefix}{uuid.uuid4().hex[:8]}"


def event_ids(response: command_service_pb2.SubmitResponse) -> list[str]:
    return [event.event_id for event in response.events]


async def test_a_retry_after_commit_is_answered_without_running_the_handler(store: StoreAdapter) -> None:
    aggregate_id, name = fresh()
    built = rename(aggregate_id, name)
    async with running_server(store, registry=REGISTRY) as (_, client):
        first = await client.submit(built)
        again = await client.submit(built)
    assert (first.replayed, again.replayed) == (False, True)
    assert (again.version, event_ids(again)) == (first.version, event_ids(first))
    assert RUNS[name] == 1


async def test_a_retry_of_a_recorded_refusal_is_refused_alike_without_running_the_handler(
    store: StoreAdapter,
) -> None:
    aggregate_id, name = fresh(REFUSED_PREFIX)
    built = rename(aggregate_id, name)
    reasons = []
    async with running_server(store, registry=REGISTRY) as (_, client):
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.submit(built)
            assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            reasons.append(reason_of(refused.value))
    assert reasons == ["NAME_REFUSED", "NAME_REFUSED"]
    assert RUNS[name] == 1


async def test_retries_queued_behind_a_slow_original_get_its_answer_without_running_it(store: StoreAdapter) -> None:
    aggregate_id, name = fresh(SLOW_PREFIX)
    built = rename(aggregate_id, name)
    async with running_server(store, registry=REGISTRY) as (app, client):
        original = asyncio.ensure_future(client.submit(built))
        # Three retries queue on the aggregate's worker while the original
        # runs its (blocking) handler or appends.
        await _until_running(app, aggregate_id)
        retries = [asyncio.ensure_future(client.submit(built)) for _ in range(3)]
        answers = await asyncio.gather(original, *retries)
    assert [answer.replayed for answer in answers] == [False, True, True, True]
    assert {(answer.version, tuple(event_ids(answer))) for answer in answers} == {
        (answers[0].version, tuple(event_ids(answers[0])))
    }
    assert RUNS[name] == 1


async def _until_running(app: Application, aggregate_id: str) -> None:
    """Until the original's worker took it: looked at on every turn of the
    loop (not polled every few ms), since the whole command may take less."""
    async with asyncio.timeout(10):
        while (worker := app.router._workers.get(aggregate_id)) is None or not worker.busy:  # noqa: ASYNC110
            await asyncio.sleep(0)


async def test_a_retry_after_the_worker_left_runs_the_handler_and_answers_from_the_record(
    store: StoreAdapter,
) -> None:
    # The worker that committed it is gone, so nothing cheap says the id is
    # recorded: the handler runs on the state after the command, and fails
    # there (HandlerFailed, a plugin's bug); the record answers all the same.
    aggregate_id, name = fresh()
    built = rename(aggregate_id, name)
    async with running_server(store, registry=REGISTRY) as (app, client):
        first = await client.submit(built)
        assert app.router.drop_idle(math.inf) == 1
        again = await client.submit(built)
    assert again.replayed and (again.version, event_ids(again)) == (first.version, event_ids(first))
    assert RUNS[name] == 2


async def test_a_retry_on_a_restarted_server_answers_from_the_record(tmp_path: Path) -> None:
    # As after eviction: the handler runs again, fails, and the record answers.
    aggregate_id, name = fresh()
    built = rename(aggregate_id, name)
    async with running_server(SqliteStore(tmp_path / "events.db"), registry=REGISTRY) as (_, client):
        first = await client.submit(built)
    async with running_server(SqliteStore(tmp_path / "events.db"), registry=REGISTRY) as (_, client):
        again = await client.submit(built)
    assert again.replayed and (again.version, event_ids(again)) == (first.version, event_ids(first))
    assert RUNS[name] == 2


async def test_a_handler_failure_on_a_warm_aggregate_does_not_mask_a_command_committed_elsewhere(
    store: StoreAdapter,
) -> None:
    # Replica A commits the rename; replica B loads the aggregate after it
    # (through a refused command, which keeps its cache warm) and is then
    # sent the retry: its handler fails on the renamed state.
    aggregate_id, name = fresh()
    built = rename(aggregate_id, name)
    async with (
        running_server(store, registry=REGISTRY) as (_, a),
        running_server(store, registry=REGISTRY) as (_, b),
    ):
        first = await a.submit(built)
        await _refused(b, rename(aggregate_id, f"{REFUSED_PREFIX}{name}"))
        again = await b.submit(built)
    assert again.replayed and (again.version, event_ids(again)) == (first.version, event_ids(first))
    assert RUNS[name] == 2


async def _refused(client: Client, built: command_pb2.Command) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await client.submit(built)
    assert reason_of(refused.value) == "NAME_REFUSED"
