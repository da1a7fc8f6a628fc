"""docs/observability.md, claim by claim: each claim the other tests left
unasserted (or asserted only in part), checked over a real socket."""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry import propagate
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import CarrierT, Getter, TextMapPropagator, default_getter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags, set_span_in_context
from prometheus_client.parser import text_string_to_metric_families

from chronicle.v1 import command_service_pb2, command_service_pb2_grpc, event_service_pb2
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.errors import ConcurrencyConflict, StoreUnavailable
from service.observability.logs import JsonFormatter
from service.plugins.registry import Registry
from service.settings import Settings
from service.store.grouping import GroupParkedEvent, GroupSpec
from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import DocumentWrite, LogFilter, LogPage, NewEvent, ParkedEvent, RecordedEvent
from tests.support import plugins
from tests.support.blocking import GatedStore
from tests.support.console import authenticated, console, log_in, session_cookie
from tests.support.events import new_event
from tests.support.grpc_client import Client, command, details_of, running_server, with_jwt_auth
from tests.support.http import request
from tests.support.metrics import sample, scrape
from tests.support.processes import free_port, wait_until_serving
from tests.support.security import JwtIssuer
from tests.support.waiting import eventually

COMMANDS = "chronicle_commands_total"
REFUSALS = "chronicle_command_refusals_total"

# -- the endpoint ------------------------------------------------------------------


async def test_metrics_are_off_by_default_and_each_server_counts_in_a_registry_of_its_own() -> None:
    assert Settings().metrics_listen == ""
    async with running_server(MemoryStore()) as (quiet, _):
        assert quiet.metrics_server is None
    async with (
        running_server(MemoryStore(), metrics_listen="127.0.0.1:0") as (one, one_client),
        running_server(MemoryStore(), metrics_listen="127.0.0.1:0") as (other, _),
    ):
        await one_client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        ok = {"command_type": "bank.v1.OpenAccount", "outcome": "ok"}
        assert sample(await scrape(one), COMMANDS, **ok) == 1
        assert sample(await scrape(other), COMMANDS, **ok) == 0


# -- commands: outcomes and refusal reasons ------------------------------------------


async def test_every_outcome_is_ok_replayed_dry_run_or_the_refusals_grpc_code_in_lower_case() -> None:
    async with running_server(
        MemoryStore(), metrics_listen="127.0.0.1:0", max_message_bytes=64 * 1024, max_event_bytes=16 * 1024
    ) as (app, client):
        opening = command("acc-1", bank.OpenAccount(owner="ann"))
        await client.submit(opening)
        assert (await client.submit(opening)).replayed
        await client.commands.Submit(
            command_service_pb2.SubmitRequest(command=command("acc-1", bank.Deposit(amount=5)), dry_run=True)
        )
        refused = {
            "INSUFFICIENT_FUNDS": command("acc-1", bank.Withdraw(amount=500)),
            "WRONG_EXPECTED_VERSION": command("acc-1", bank.Deposit(amount=5), expected_version=7),
            "EVENT_TOO_LARGE": command("acc-2", bank.OpenAccount(owner="x" * 20_000)),
        }
        codes = {}
        for reason, sent in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.submit(sent)
            assert details_of(raised.value).reason == reason
            codes[reason] = raised.value.code().name.lower()
        text = await scrape(app)
    assert sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="ok") == 1
    assert sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="replayed") == 1
    assert sample(text, COMMANDS, command_type="bank.v1.Deposit", outcome="dry_run") == 1
    assert codes == {
        "INSUFFICIENT_FUNDS": "failed_precondition",
        "WRONG_EXPECTED_VERSION": "failed_precondition",
        "EVENT_TOO_LARGE": "invalid_argument",
    }
    assert sample(text, COMMANDS, command_type="bank.v1.Withdraw", outcome="failed_precondition") == 1
    assert sample(text, COMMANDS, command_type="bank.v1.Deposit", outcome="failed_precondition") == 1
    assert sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="invalid_argument") == 1
    for reason in refused:
        assert sample(text, REFUSALS, reason=reason) == 1, reason
    # Six commands answered (the replay and the dry run too), each timed.
    types = ("bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw")
    assert sum(sample(text, "chronicle_command_duration_seconds_count", command_type=t) for t in types) == 6


class AlwaysConflicting:
    """Delegates to ``inner``; every append that writes events loses a
    version race, as if another replica always wrote first."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner
        self.appends = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **kw: Any
    ) -> list[RecordedEvent]:
        if events:
            self.appends += 1
            raise ConcurrencyConflict(aggregate_id, expected_version)
        return await self.inner.append(aggregate_id, events, expected_version, **kw)


async def test_retries_are_conflicts_minus_aborted_commands() -> None:
    store = AlwaysConflicting(MemoryStore())
    async with running_server(store, metrics_listen="127.0.0.1:0", conflict_retries=3) as (app, client):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        text = await scrape(app)
    assert raised.value.code() == grpc.StatusCode.ABORTED
    conflicts = sample(text, "chronicle_concurrency_conflicts_total")
    aborted = sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="aborted")
    assert (conflicts, aborted) == (3, 1)
    retries = store.appends - 1  # every attempt after the first
    assert retries == conflicts - aborted


def with_jwt(tmp_path: Path, issuer: JwtIssuer, **overrides: object) -> Settings:
    return replace(
        with_jwt_auth(tmp_path, issuer),
        **overrides,  # type: ignore[arg-type]
    )


async def test_refusals_of_credentials_and_of_the_policy_are_counted_by_reason(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    settings = with_jwt(tmp_path, issuer, metrics_listen="127.0.0.1:0")
    expired = (("authorization", f"Bearer {issuer.token('alice', expires_in=-120)}"),)
    bob = (("authorization", f"Bearer {issuer.token('bob')}"),)  # may submit boxes only
    async with running_server(MemoryStore(), settings=settings) as (app, client):
        sent = command_service_pb2.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        reasons = []
        for metadata in (expired, bob):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.commands.Submit(sent, metadata=metadata, timeout=30)
            reasons.append(details_of(raised.value).reason)
        text = await scrape(app)
    assert reasons == ["TOKEN_EXPIRED", "SUBMIT_DENIED"]
    assert sample(text, "chronicle_rpc_refusals_total", reason="TOKEN_EXPIRED") == 1
    assert sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="permission_denied") == 1
    assert sample(text, REFUSALS, reason="SUBMIT_DENIED") == 1


# -- gauges -----------------------------------------------------------------------------


async def test_queued_commands_and_rpcs_in_flight_are_gauged_and_queue_wait_is_timed() -> None:
    store = GatedStore(MemoryStore())
    async with running_server(store, metrics_listen="127.0.0.1:0", queue_depth=2, max_concurrent_rpcs=3) as (
        app,
        client,
    ):
        held = [asyncio.ensure_future(client.submit(command("acc-1", bank.OpenAccount(owner="ann"))))]
        await store.entered.wait()
        held += [asyncio.ensure_future(client.submit(command("acc-1", bank.Deposit(amount=n)))) for n in (1, 2)]

        async def two_queued() -> bool:
            return sample(await scrape(app), "chronicle_queued_commands") == 2

        await eventually(two_queued, what="two commands queued behind the held one")
        queued_at = time.perf_counter()
        text = await scrape(app)
        assert sample(text, "chronicle_rpcs_in_flight") == 3
        assert sample(text, "chronicle_live_workers") == 1
        # Every RPC slot is taken: one RPC more is refused before it is
        # read, and counted; a health check is not counted, and answered.
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-2", bank.OpenAccount(owner="bob")))
        assert details_of(raised.value).reason == "TOO_MANY_REQUESTS"
        checked = await health_pb2_grpc.HealthStub(client.channel).Check(health_pb2.HealthCheckRequest())
        assert checked.status == health_pb2.HealthCheckResponse.SERVING
        await asyncio.sleep(0.2)  # the queued commands wait at least this long (a lower bound, not a race)
        store.gate.set()
        waited = time.perf_counter() - queued_at
        assert [(await call).version for call in held] == [1, 2, 3]

        async def drained() -> bool:
            text = await scrape(app)
            return sample(text, "chronicle_queued_commands") == 0 and sample(text, "chronicle_rpcs_in_flight") == 0

        await eventually(drained, what="the gauges back to zero")
        text = await scrape(app)
    assert sample(text, "chronicle_rpc_refusals_total", reason="TOO_MANY_REQUESTS") == 1
    assert sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="resource_exhausted") == 0
    # "queue wait included": each deposit's time covers its wait in the queue.
    assert sample(text, "chronicle_command_duration_seconds_count", command_type="bank.v1.Deposit") == 2
    assert sample(text, "chronicle_command_duration_seconds_sum", command_type="bank.v1.Deposit") >= 2 * waited


async def test_a_full_queue_is_counted_as_resource_exhausted_and_its_reason() -> None:
    store = GatedStore(MemoryStore())
    async with running_server(store, metrics_listen="127.0.0.1:0", queue_depth=1) as (app, client):
        held = asyncio.ensure_future(client.submit(command("acc-1", bank.OpenAccount(owner="ann"))))
        await store.entered.wait()
        queued = asyncio.ensure_future(client.submit(command("acc-1", bank.Deposit(amount=1))))
        await eventually(lambda: app.router.queued >= 1, what="the second command queued")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.Deposit(amount=2)))
        store.gate.set()
        await held
        await queued
        text = await scrape(app)
    details = details_of(raised.value)
    assert (details.code, details.reason, details.retry) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "AGGREGATE_QUEUE_FULL",
        True,
    )
    assert sample(text, COMMANDS, command_type="bank.v1.Deposit", outcome="resource_exhausted") == 1
    assert sample(text, REFUSALS, reason="AGGREGATE_QUEUE_FULL") == 1


class HeldLog:
    """Delegates to ``inner``; reading the log for aggregate ``held`` waits
    until ``gate`` is set (``entered`` once one waits)."""

    def __init__(self, inner: MemoryStore, held: str) -> None:
        self.inner = inner
        self.held = held
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def read_log(
        self, after_position: int, log_filter: LogFilter, limit: int, *, max_bytes: int | None = None
    ) -> LogPage:
        if log_filter.aggregate_id == self.held:
            self.entered.set()
            await self.gate.wait()
        return await self.inner.read_log(after_position, log_filter, limit, max_bytes=max_bytes)


async def test_subscription_lag_is_the_slowest_open_subscriptions_distance_from_the_head() -> None:
    memory = MemoryStore()
    await memory.append("acc-9", [new_event(), new_event(), new_event()], 0)
    store = HeldLog(memory, held="acc-held")
    async with running_server(store, metrics_listen="127.0.0.1:0") as (app, client):
        sampler = app.lag_sampler
        assert sampler is not None and sampler._interval == 5.0  # "sampled every 5 s"
        stream = client.events.Subscribe(event_service_pb2.SubscribeRequest(aggregate_id="acc-held"))
        try:
            await store.entered.wait()  # open at position 0, reading
            await sampler.sample()
            text = await scrape(app)
            assert sample(text, "chronicle_subscriptions") == 1
            assert sample(text, "chronicle_subscription_lag_positions") == 3
            store.gate.set()
            assert (await stream.read()).caught_up.position == 3

            async def caught_up() -> bool:
                # The server marks the subscription moved once the caught-up mark is sent.
                await sampler.sample()
                return sample(await scrape(app), "chronicle_subscription_lag_positions") == 0

            await eventually(caught_up, what="the subscription's lag back to 0")
        finally:
            store.gate.set()
            stream.cancel()


async def test_group_lag_and_parked_events_are_sampled_from_the_store_replays_included() -> None:
    store = MemoryStore()
    await store.append("a-1", [new_event(), new_event(), new_event()], 0)
    await store.create_group(GroupSpec(name="billing", segments=2))
    await store.commit_segment("billing", 0, expected_position=0, new_position=3, acknowledged=3)
    parked = GroupParkedEvent(event_id="e-1", position=1, segment=1, aggregate_id="a-1", attempts=5, reason="x")
    await store.park("billing", [parked])
    assert await store.replay_parked("billing", ["e-1"]) == 1  # asked for, not acknowledged yet
    async with running_server(store, metrics_listen="127.0.0.1:0") as (app, _):
        sampler = app.group_sampler
        assert sampler is not None and sampler._interval == 5.0  # "sampled every 5 s"
        await sampler.sample()
        text = await scrape(app)
    assert sample(text, "chronicle_group_lag_positions", group="billing") == 3  # segment 1 is at 0
    assert sample(text, "chronicle_group_parked_events", group="billing") == 1


async def test_on_postgresql_a_retried_command_id_is_appended_alone_and_loads_are_one_operation(
    postgres_url: str,
) -> None:
    from service.store.postgres import PostgresStore

    deposit = command("acc-1", bank.Deposit(amount=5))
    async with running_server(PostgresStore(postgres_url, pool_size=2)) as (_, first):
        await first.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await first.submit(deposit)
    # The retry reaches a server that did not run it (another replica, or
    # this one restarted): its worker does not know the id, so the retry is
    # decided and appended, and the append finds the record. (A server whose
    # worker settled the id answers from the record without an append.)
    async with running_server(PostgresStore(postgres_url, pool_size=2), metrics_listen="127.0.0.1:0") as (
        app,
        client,
    ):
        before = await scrape(app)
        retried = await client.submit(deposit)
        after = await scrape(app)

    def moved(name: str) -> float:
        return sample(after, name) - sample(before, name)

    assert (retried.replayed, retried.version) == (True, 2)  # answered from the command record
    # Each append of the retry went to a batch, which refused itself, and then alone.
    unbatched = moved("chronicle_store_unbatched_appends_total")
    assert unbatched >= 1
    assert moved("chronicle_store_batched_appends_total") == unbatched
    # PostgreSQL loads an aggregate (snapshot and events) in one round trip: one operation.
    families = text_string_to_metric_families(after)
    operations = {s.labels["operation"] for f in families for s in f.samples if "operation" in s.labels}
    assert {"append", "load_from_snapshot"} <= operations
    assert "load_snapshot" not in operations


# -- reactions (and a plugin's bug) ---------------------------------------------------------------------------


async def test_a_parked_reaction_command_is_counted_refused_and_parked() -> None:
    registry = Registry([bank_account.plugin, plugins.gates])
    async with running_server(MemoryStore(), registry=registry, metrics_listen="127.0.0.1:0", poll_seconds=0.05) as (
        app,
        client,
    ):
        await client.submit(command("source", box.ArchiveBox()))
        await client.submit(command("source", box.RenameBox(name="ann")))
        relay = {"reaction": "gates.relay"}

        async def parked() -> bool:
            return sample(await scrape(app), "chronicle_reaction_commands_total", **relay, outcome="parked") == 1

        await eventually(parked, what="the relayed command parked")
        text = await scrape(app)
    # Its on_refused does not expect it: the refusal is counted as refused, and parked.
    assert sample(text, "chronicle_reaction_commands_total", **relay, outcome="refused") == 1
    assert sample(text, "chronicle_reaction_commands_total", **relay, outcome="accepted") == 0
    assert sample(text, "chronicle_reaction_commands_total", **relay, outcome="ignored") == 0


async def test_a_refusal_on_refused_ignores_is_counted_refused_and_ignored_not_parked() -> None:
    registry = Registry([bank_account.plugin, plugins.gates])
    async with running_server(MemoryStore(), registry=registry, metrics_listen="127.0.0.1:0", poll_seconds=0.05) as (
        app,
        client,
    ):
        await client.submit(command("source", box.ArchiveBox()))
        await client.submit(command("source", box.RenameBox(name="harmless")))  # the relay ignores its refusal
        relay = {"reaction": "gates.relay"}

        async def ignored() -> bool:
            return sample(await scrape(app), "chronicle_reaction_commands_total", **relay, outcome="ignored") == 1

        await eventually(ignored, what="the relayed command's refusal ignored")
        text = await scrape(app)
    assert sample(text, "chronicle_reaction_commands_total", **relay, outcome="refused") == 1
    assert sample(text, "chronicle_reaction_commands_total", **relay, outcome="parked") == 0


REACTION_OUTCOMES = ("accepted", "replayed", "refused", "parked")


def relay_counts(text: str) -> dict[str, float]:
    """``chronicle_reaction_commands_total`` of the relay, by outcome."""
    return {
        o: sample(text, "chronicle_reaction_commands_total", reaction="gates.relay", outcome=o)
        for o in REACTION_OUTCOMES
    }


async def parked_relay_command(app: Application, client: Client) -> reaction_pb.ReplayParkedCommandRequest:
    """The relay's command to the gate "gated" (never opened), refused and
    parked; the request that replays it."""
    await client.submit(command("source", box.ArchiveBox()))
    await client.submit(command("source", box.RenameBox(name="ann")))

    async def parked() -> bool:
        return relay_counts(await scrape(app))["parked"] == 1

    await eventually(parked, what="the relayed command parked")
    listed = await client.reactions.ListParkedCommands(reaction_pb.ListParkedCommandsRequest(reaction="gates.relay"))
    (entry,) = listed.commands
    return reaction_pb.ReplayParkedCommandRequest(reaction="gates.relay", command_id=entry.command_id)


async def test_an_administrator_s_replays_of_a_parked_reaction_command_are_counted_by_outcome() -> None:
    registry = Registry([plugins.gates])
    async with running_server(
        MemoryStore(), registry=registry, metrics_listen="127.0.0.1:0", poll_seconds=0.05, anonymous_admin=True
    ) as (app, client):
        replay = await parked_relay_command(app, client)
        assert relay_counts(await scrape(app)) == {"accepted": 0, "replayed": 0, "refused": 1, "parked": 1}

        # The gate still shut: refused again, still parked (not parked twice).
        again = await client.reactions.ReplayParkedCommand(replay)
        assert (again.accepted, again.reason) == (False, "GATE_SHUT")
        after_refused = await scrape(app)

        await client.submit(command("gated", box.ArchiveBox()))
        through = await client.reactions.ReplayParkedCommand(replay)
        assert through.accepted
        after_accepted = await scrape(app)
        status = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name="gates.relay"))
    assert relay_counts(after_refused) == {"accepted": 0, "replayed": 0, "refused": 2, "parked": 1}
    assert relay_counts(after_accepted) == {"accepted": 1, "replayed": 0, "refused": 2, "parked": 1}
    # GetReaction's counts say the same as the metric.
    assert (status.accepted, status.refused, status.replayed) == (1, 2, 0)


class LosesAReplaysOutcome(MemoryStore):
    """A memory store that fails the first commit of the relay's parked
    commands without its checkpoint moving (what a replay writes after its
    command ran), as if the server died between the replayed command and
    writing down its outcome."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    async def commit_projection(
        self,
        name: str,
        *,
        expected_position: int,
        new_position: int,
        writes: Sequence[DocumentWrite],
        fencing: Fencing | None = None,
        parked: Sequence[ParkedEvent] = (),
    ) -> None:
        if name == "gates.relay" and new_position == expected_position and not self.lost:
            self.lost += 1
            raise StoreUnavailable("the server died before the replay's outcome was written down")
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )


async def test_a_replay_sent_again_after_its_outcome_was_lost_is_counted_replayed() -> None:
    store = LosesAReplaysOutcome()
    async with running_server(
        store, registry=Registry([plugins.gates]), metrics_listen="127.0.0.1:0", poll_seconds=0.05, anonymous_admin=True
    ) as (app, client):
        replay = await parked_relay_command(app, client)
        await client.submit(command("gated", box.ArchiveBox()))
        with pytest.raises(grpc.aio.AioRpcError) as lost:
            await client.reactions.ReplayParkedCommand(replay)
        assert lost.value.code() == grpc.StatusCode.UNAVAILABLE and store.lost == 1
        after_lost = await scrape(app)
        # Sent again under the same id: answered from its command record.
        again = await client.reactions.ReplayParkedCommand(replay)
        assert again.accepted
        after_again = await scrape(app)
        renamed = [e for e in await store.read_aggregate("gated") if e.event_type == "box.v1.BoxRenamed"]
    assert len(renamed) == 1 and renamed[0].command_id == again.command_id  # run once
    assert relay_counts(after_lost) == {"accepted": 1, "replayed": 0, "refused": 1, "parked": 1}
    assert relay_counts(after_again) == {"accepted": 1, "replayed": 1, "refused": 1, "parked": 1}


# -- labels ---------------------------------------------------------------------------------


async def test_labels_stay_bounded_whatever_callers_send() -> None:
    from google.protobuf import any_pb2

    async with running_server(MemoryStore(), metrics_listen="127.0.0.1:0") as (app, client):
        unknown = command("acc-unbounded-9d1c", bank.OpenAccount(owner="ann"))
        unknown.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/made.up.TypeName9d1c"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(unknown)
        await client.submit(command("acc-unbounded-9d1c", bank.OpenAccount(owner="ann")))
        text = await scrape(app)
    assert details_of(raised.value).reason == "UNKNOWN_COMMAND_TYPE"
    assert "9d1c" not in text  # neither the caller's type name nor its aggregate id


# -- logs ---------------------------------------------------------------------------------


class JsonLines(logging.Handler):
    """Each record as ``--log-format json`` writes it, formatted as it is
    logged (the command's ids are read then, from the running task)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@contextmanager
def json_lines(*names: str) -> Iterator[JsonLines]:
    handler = JsonLines()
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


class LoggingInTheWorker:
    """Delegates to ``inner``; logs from inside the aggregate's worker (its
    append), and fails there for ``away`` as a store that is away does, and
    for ``broken`` as a bug would (an unexpected exception)."""

    def __init__(self, inner: MemoryStore) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **kw: Any
    ) -> list[RecordedEvent]:
        logging.getLogger("tests.claims.worker").info("appending to %s", aggregate_id)
        if aggregate_id == "away":
            raise StoreUnavailable("the database is away")
        if aggregate_id == "broken":
            raise RuntimeError("a bug")
        return await self.inner.append(aggregate_id, events, expected_version, **kw)


async def test_each_command_is_one_line_at_the_level_of_its_outcome_and_worker_lines_name_it(
    tmp_path: Path,
) -> None:
    issuer = JwtIssuer()
    settings = with_jwt(tmp_path, issuer)
    alice = (("authorization", f"Bearer {issuer.token('alice')}"),)
    with json_lines("chronicle.commands", "tests.claims.worker") as logged:
        async with running_server(LoggingInTheWorker(MemoryStore()), settings=settings) as (_, client):
            sent = {
                "ok": command("acc-1", bank.OpenAccount(owner="ann"), user_id=""),
                "refused": command("acc-1", bank.Withdraw(amount=5), user_id=""),
                "away": command("away", bank.OpenAccount(owner="ann"), user_id=""),
                "failed": command("broken", bank.OpenAccount(owner="ann"), user_id=""),
            }
            sent["ok"].correlation_id = "c-9"
            codes = []
            for built in sent.values():
                request = command_service_pb2.SubmitRequest(command=built)
                try:
                    await client.commands.Submit(request, metadata=alice, timeout=30)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
    assert codes == [
        grpc.StatusCode.OK,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INTERNAL,
    ]
    lines = {line["command_id"]: line for line in logged.lines if line["logger"] == "chronicle.commands"}
    assert len([line for line in logged.lines if line["logger"] == "chronicle.commands"]) == 4  # one per command
    ok, refused, away, failed = (lines[built.command_id] for built in sent.values())
    assert (ok["level"], ok["outcome"]) == ("DEBUG", "ok")
    assert (refused["level"], refused["outcome"], refused["reason"]) == ("INFO", "refused", "INSUFFICIENT_FUNDS")
    # Any error with a reason is a refusal, the store's absence too; only the unexpected is a failure.
    assert (away["level"], away["outcome"], away["reason"]) == ("INFO", "refused", "STORE_UNAVAILABLE")
    assert (failed["level"], failed["outcome"]) == ("WARNING", "failed")
    for outcome, line in zip(sent, (ok, refused, away, failed), strict=True):
        built = sent[outcome]
        assert {"time", "level", "logger", "message"} <= set(line)
        assert line["aggregate_id"] == built.aggregate_id
        assert line["principal"] == "alice"
        assert line["command_type"] == built.payload.type_url.rpartition("/")[2]
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0
    assert ok["correlation_id"] == "c-9"
    # What the worker logged while writing (the refusal's record too) names the command.
    worker = [line for line in logged.lines if line["logger"] == "tests.claims.worker"]
    assert [(line["command_id"], line["aggregate_id"]) for line in worker] == [
        (built.command_id, built.aggregate_id) for built in sent.values()
    ]


async def test_a_failing_handler_is_logged_as_a_refusal_with_its_reason() -> None:
    registry = Registry([plugins.faulty])  # its handler raises on a deposit of FAIL_AMOUNT
    with json_lines("chronicle.commands") as logged:
        async with running_server(MemoryStore(), registry=registry) as (_, client):
            crashing = command("w-1", bank.Deposit(amount=plugins.FAIL_AMOUNT))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await client.submit(crashing)
    assert details_of(raised.value).code == grpc.StatusCode.INTERNAL
    (line,) = [line for line in logged.lines if line["command_id"] == crashing.command_id]
    assert (line["level"], line["outcome"], line["reason"]) == ("INFO", "refused", "HANDLER_FAILED")


def test_json_logs_go_to_stderr_and_both_settings_have_their_variables(tmp_path: Path) -> None:
    address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {
        **os.environ,
        "CHRONICLE_LOG_FORMAT": "json",
        "CHRONICLE_LOG_LEVEL": "DEBUG",
        "CHRONICLE_METRICS_LISTEN": metrics,
        "CHRONICLE_SHUTDOWN_DRAIN": "0",
    }
    command_line = [sys.executable, "-m", "service", "serve", "--listen", address, "--database-url", "memory://"]
    with (tmp_path / "out").open("w") as out, (tmp_path / "err").open("w") as err:
        process = subprocess.Popen(command_line, stdout=out, stderr=err, text=True, env=env)
    try:
        wait_until_serving(address, 30.0, process)
        with grpc.insecure_channel(address) as channel:
            sent = command_service_pb2.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann")))
            command_service_pb2_grpc.CommandServiceStub(channel).Submit(sent, timeout=30)
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
            text = response.read().decode()
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert sample(text, COMMANDS, command_type="bank.v1.OpenAccount", outcome="ok") == 1
    written = (tmp_path / "err").read_text().splitlines()
    # Every line Python's logging wrote is an object (gRPC's core may write lines of its own).
    entries = [json.loads(line) for line in written if line.startswith("{")]
    as_text = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
    assert not [line for line in written if as_text.match(line)]  # --log-format text's lines
    (done,) = [e for e in entries if e["logger"] == "chronicle.commands"]
    assert (done["level"], done["aggregate_id"], done["outcome"]) == ("DEBUG", "acc-1", "ok")
    assert done["time"].endswith("+00:00")
    assert "chronicle.commands" not in (tmp_path / "out").read_text()


# -- traces ---------------------------------------------------------------------------------


async def test_a_command_span_names_its_aggregate_and_correlation_and_whether_it_was_replayed() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(MemoryStore(), tracer_provider=provider) as (_, client):
        opening = command("acc-1", bank.OpenAccount(owner="ann"))
        opening.correlation_id = "corr-1"
        await client.submit(opening)
        await client.submit(opening)
        await client.events.GetAggregate(event_service_pb2.GetAggregateRequest(aggregate_id="acc-1"))
    provider.shutdown()
    spans = exporter.get_finished_spans()
    commands = [s for s in spans if s.name == "command bank.v1.OpenAccount"]
    assert len(commands) == 2
    first, again = (dict(s.attributes or {}) for s in commands)
    assert first == {
        "chronicle.command_id": opening.command_id,
        "chronicle.command_type": "bank.v1.OpenAccount",
        "chronicle.aggregate_type": "Account",
        "chronicle.aggregate_id": "acc-1",
        "chronicle.correlation_id": "corr-1",
        "chronicle.version": 1,
        "chronicle.replayed": False,
    }
    assert again["chronicle.replayed"] is True
    # Every RPC, not only commands, is a SERVER span.
    servers = {s.name for s in spans if s.kind == SpanKind.SERVER}
    assert servers == {"chronicle.v1.CommandService/Submit", "chronicle.v1.EventService/GetAggregate"}


class OneHeaderPropagator(TextMapPropagator):
    """A propagator of its own: the trace id in ``x-claims-trace``."""

    def extract(
        self, carrier: CarrierT, context: Context | None = None, getter: Getter[CarrierT] = default_getter
    ) -> Context:
        found = getter.get(carrier, "x-claims-trace")
        if not found:
            return context or Context()
        parent = SpanContext(int(found[0], 16), 0x1234, is_remote=True, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return set_span_in_context(NonRecordingSpan(parent), context)

    def inject(self, carrier: CarrierT, context: Context | None = None, setter: Any = None) -> None:
        raise NotImplementedError

    @property
    def fields(self) -> set[str]:
        return {"x-claims-trace"}


async def test_the_clients_trace_is_read_through_the_globally_configured_propagator() -> None:
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    configured = propagate.get_global_textmap()
    propagate.set_global_textmap(OneHeaderPropagator())
    try:
        async with running_server(MemoryStore(), tracer_provider=provider) as (_, client):
            request = command_service_pb2.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann")))
            await client.commands.Submit(request, metadata=(("x-claims-trace", trace_id),))
    finally:
        propagate.set_global_textmap(configured)
        provider.shutdown()
    (rpc,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert rpc.context.trace_id == int(trace_id, 16)
    assert rpc.parent is not None and rpc.parent.span_id == 0x1234


def test_the_otel_extra_installs_what_the_documented_route_runs_pinned_as_the_project_pins() -> None:
    """``pip install 'chronicle[otel]'`` brings ``opentelemetry-instrument``
    (opentelemetry-distro) and the OTLP exporter the documented command
    uses; ``dev`` has them too, so that ``make lock`` pins them, and
    constraints.txt does. (The extra held only the API and the SDK.)"""
    import tomllib

    root = Path(__file__).parents[2]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[<>=~!\[ ;]", requirement, maxsplit=1)[0].lower() for requirement in requirements}

    otel = names(extras["otel"])
    assert {"opentelemetry-distro", "opentelemetry-exporter-otlp-proto-grpc"} <= otel
    assert otel <= names(extras["dev"])
    pinned = {line.partition("==")[0].lower() for line in (root / "constraints.txt").read_text().splitlines()}
    assert otel | {"opentelemetry-instrumentation", "opentelemetry-proto"} <= pinned


def _documented_instrument_command() -> tuple[dict[str, str], list[str]]:
    """The variables and the command of docs/observability.md's
    ``opentelemetry-instrument`` block, as an operator would copy them."""
    doc = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
    (block,) = [b for b in re.findall(r"```sh\n(.*?)```", doc, re.S) if "opentelemetry-instrument" in b]
    words = block.replace("\\\n", " ").split()
    variables = dict(word.split("=", 1) for word in words if re.fullmatch(r"OTEL_\w+=\S+", word))
    command = [word for word in words if "=" not in word]
    return variables, command


def test_the_documented_route_to_traces_exports_spans_over_otlp(tmp_path: Path) -> None:
    """``opentelemetry-instrument chronicle serve`` with the documented
    variables, as the otel extra installs it: the spans reach an OTLP
    collector, a refused Submit's with its status code. (The extra brought
    only the API and the SDK: no opentelemetry-instrument, no exporter.)"""
    from concurrent.futures import ThreadPoolExecutor

    scripts = Path(sys.executable).parent
    if not (scripts / "opentelemetry-instrument").exists():
        pytest.skip("the otel extra is not installed here (make installs it with dev)")
    # Imported by name: the package is there only with the otel extra, and
    # typed only where it is.
    service_pb2 = importlib.import_module("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    received: list[Any] = []

    def export(request: Any, context: Any) -> Any:
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received.extend((resource, span) for span in scope_spans.spans)
        return service_pb2.ExportTraceServiceResponse()

    collector = grpc.server(ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(
        export,
        request_deserializer=service_pb2.ExportTraceServiceRequest.FromString,
        response_serializer=service_pb2.ExportTraceServiceResponse.SerializeToString,
    )
    service_name = "opentelemetry.proto.collector.trace.v1.TraceService"
    collector.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service_name, {"Export": handler}),))
    port = collector.add_insecure_port("127.0.0.1:0")
    collector.start()
    variables, command_line = _documented_instrument_command()
    assert command_line[:3] == ["opentelemetry-instrument", "chronicle", "serve"], command_line
    variables["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{port}"  # the collector is here
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "server.log"
    with log.open("w") as output:
        server = subprocess.Popen(
            [
                *[str(scripts / word) for word in command_line[:2]],
                "serve",
                "--listen",
                address,
                "--database-url",
                "memory://",
            ],
            env={**os.environ, **variables},
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_until_serving(address, process=server)
        refused = command("acc-1", bank.Deposit(amount=1), command_id="fixed-cmd-1")
        with grpc.insecure_channel(address) as channel:
            stub = command_service_pb2_grpc.CommandServiceStub(channel)
            with pytest.raises(grpc.RpcError):
                stub.Submit(command_service_pb2.SubmitRequest(command=refused), timeout=10)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)  # the spans are sent as the process ends
        collector.stop(None)
    submits = [(resource, span) for resource, span in received if span.name == "chronicle.v1.CommandService/Submit"]
    assert submits, log.read_text()
    ((resource, span),) = submits
    attributes = {a.key: a.value for a in span.attributes}
    assert resource["service.name"] == "chronicle"
    assert attributes["rpc.grpc.status_code"].int_value == 3
    assert attributes["chronicle.reason"].string_value == "INVALID_COMMAND_ID"


# -- limits -----------------------------------------------------------------------------------


def test_the_limits_default_to_the_documented_values() -> None:
    settings = Settings()
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert settings.max_concurrent_rpcs == 1000
    assert settings.max_subscriptions == 1000
    assert settings.queue_depth == 64
    assert settings.max_workers == 100_000


async def test_a_message_over_the_size_limit_is_refused_by_grpc_naming_the_size() -> None:
    store = MemoryStore()
    async with running_server(store, max_message_bytes=64 * 1024, max_event_bytes=16 * 1024) as (_, client):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.OpenAccount(owner="x" * 100_000)))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "")  # no ErrorInfo
    assert str(64 * 1024) in details.message
    assert await store.log_head() == 0


# -- the console --------------------------------------------------------------------------------


async def test_the_consoles_bad_tokens_and_denied_pages_are_counted_by_reason(tmp_path: Path) -> None:
    from service.app import start
    from tests.support.security import api_key_file

    settings = authenticated(tmp_path, metrics_listen="127.0.0.1:0")
    settings = replace(
        settings,
        api_keys_file=api_key_file(tmp_path / "k.toml", [("bob-key-0123456789", "bob", [])]),
    )
    store = MemoryStore()
    await store.append("acc-1", [new_event()], 0)
    app = await start(settings, store=store)
    try:
        address = console(app)
        assert (await log_in(address, "eyJhbGciOiJub25lIn0.e30.bm90LXNpZ25lZA")).status == 401  # signed by nobody
        cookie = session_cookie(await log_in(address, "bob-key-0123456789"))
        denied = await request(address, "GET", "/aggregates/acc-1", headers={"Cookie": cookie})
        assert denied.status == 403
        text = await scrape(app)
    finally:
        await app.stop(grace=0.5, drain=0)
    assert sample(text, "chronicle_console_refusals_total", reason="INVALID_TOKEN") == 1
    assert sample(text, "chronicle_console_refusals_total", reason="READ_DENIED") == 1
