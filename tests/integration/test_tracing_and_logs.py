"""OpenTelemetry spans of the command path (in-memory exporter), continuing
the client's trace; structured JSON logs naming the command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from chronicle.v1 import command_service_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.observability import tracing
from service.observability.logs import JsonFormatter
from service.processing.log_context import logging_command
from service.store.memory import MemoryStore
from tests.support.grpc_client import command, running_server
from tests.support.processes import cli, free_port, server_process

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


async def submit_traced(exporter: InMemorySpanExporter, message: object) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(MemoryStore(), tracer_provider=provider) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        request = command_service_pb2.SubmitRequest(command=command("acc-1", message))  # type: ignore[arg-type]
        traceparent = (("traceparent", f"00-{TRACE_ID}-{CLIENT_SPAN_ID}-01"),)
        with contextlib.suppress(grpc.aio.AioRpcError):
            await client.commands.Submit(request, metadata=traceparent)
    provider.shutdown()


async def test_a_command_is_traced_as_a_child_of_the_clients_span(exporter: InMemorySpanExporter) -> None:
    await submit_traced(exporter, bank.Deposit(amount=5))
    traced = [s for s in exporter.get_finished_spans() if s.context.trace_id == int(TRACE_ID, 16)]
    rpc = next(s for s in traced if s.kind == SpanKind.SERVER)
    work = next(s for s in traced if s.name == "command bank.v1.Deposit")
    assert rpc.name == "chronicle.v1.CommandService/Submit"
    assert rpc.parent is not None and rpc.parent.span_id == int(CLIENT_SPAN_ID, 16)
    assert work.parent is not None and work.parent.span_id == rpc.context.span_id
    assert work.attributes is not None and work.attributes["chronicle.version"] == 2


async def test_a_refused_command_span_carries_the_reason(exporter: InMemorySpanExporter) -> None:
    await submit_traced(exporter, bank.Withdraw(amount=500))
    work = next(s for s in exporter.get_finished_spans() if s.name == "command bank.v1.Withdraw")
    assert work.status.status_code == StatusCode.ERROR
    assert work.attributes is not None and work.attributes["chronicle.reason"] == "INSUFFICIENT_FUNDS"


def test_json_log_lines_name_the_command_being_processed() -> None:
    record = logging.LogRecord("chronicle.test", logging.WARNING, __file__, 1, "slow: %s", ("x",), None)
    record.duration_ms = 12.5
    with logging_command(command_id="c-1", correlation_id="", aggregate_id="acc-1"):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "slow: x"
    assert line["level"] == "WARNING"
    assert (line["command_id"], line["correlation_id"], line["aggregate_id"]) == ("c-1", "c-1", "acc-1")
    assert line["duration_ms"] == 12.5


@pytest.mark.slow
def test_the_server_logs_each_command_as_json(tmp_path: Path) -> None:
    command_id = str(uuid.uuid4())
    extra = ["--log-format", "json", "--log-level", "DEBUG"]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        cli(
            "submit",
            "acc-1",
            "bank.v1.OpenAccount",
            '{"owner": "ann"}',
            "--command-id",
            command_id,
            server=server.address,
        )
        tried = cli(
            "submit", "acc-1", "bank.v1.Withdraw", '{"amount": 5}', "--dry-run", server=server.address, check=False
        )
        assert "INSUFFICIENT_FUNDS" in tried.stderr
        server.stop()
        output = server.process.stdout.read() if server.process.stdout else ""
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    # A dry run's refusal is told apart from a command's: nothing was written.
    (dry,) = [line for line in lines if line.get("command_type") == "bank.v1.Withdraw"]
    assert (dry["outcome"], dry["reason"], dry["dry_run"]) == ("refused", "INSUFFICIENT_FUNDS", True)
    # What the server says as it starts is a record of the log too, not text
    # among the JSON a log shipper parses.
    (started,) = [line for line in lines if line["message"].startswith("Chronicle serving gRPC on")]
    assert f"serving gRPC on {server.address}" in started["message"] and "plugin bank_account" in started["message"]
    assert not any(line.startswith("Chronicle serving") for line in output.splitlines())
    (done,) = [line for line in lines if line.get("logger") == "chronicle.commands" and "dry_run" not in line]
    assert (done["command_id"], done["correlation_id"], done["aggregate_id"]) == (command_id, command_id, "acc-1")
    assert (done["command_type"], done["outcome"]) == ("bank.v1.OpenAccount", "ok")


def test_logs_and_metrics_name_no_payload_and_no_refusals_details(tmp_path: Path) -> None:
    """docs/security.md: the logs name aggregate ids and command types, not
    payloads, and the metrics port (no authentication) names command types
    and reasons; neither carries an owner's name, an amount or a balance."""
    metrics = f"127.0.0.1:{free_port()}"
    extra = ["--log-format", "json", "--log-level", "DEBUG", "--metrics-listen", metrics]
    with server_process(f"sqlite:///{tmp_path}/events.db", extra=extra) as server:
        cli("submit", "acc-1", "bank.v1.OpenAccount", '{"owner": "Zelda Quartermain"}', server=server.address)
        cli("submit", "acc-1", "bank.v1.Deposit", '{"amount": 424242}', server=server.address)
        withdrawal = cli(
            "submit", "acc-1", "bank.v1.Withdraw", '{"amount": 987654}', server=server.address, check=False
        )
        assert "the balance is 424242" in withdrawal.stderr  # the caller is told, the logs are not
        with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
            scraped = response.read().decode()
        server.stop()
        logged = server.process.stdout.read() if server.process.stdout else ""
    assert 'command_type="bank.v1.Withdraw",outcome="failed_precondition"' in scraped  # they saw the refusal
    assert "command bank.v1.Withdraw refused: INSUFFICIENT_FUNDS" in logged
    for secret in ("Zelda", "Quartermain", "424242", "987654"):
        assert secret not in logged
        assert secret not in scraped


async def rpc_span_of(
    exporter: InMemorySpanExporter, sent: command_service_pb2.SubmitRequest, store: Any = None
) -> Any:
    """The SERVER span of Submit ``sent`` (refused or not)."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(store or MemoryStore(), tracer_provider=provider) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        exporter.clear()
        with contextlib.suppress(grpc.aio.AioRpcError):
            await client.commands.Submit(sent)
    provider.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    return span


@pytest.mark.parametrize(
    ("sent", "code", "reason"),
    [
        (command("acc-1", bank.Deposit(amount=5)), 0, None),
        (command("acc-1", bank.Deposit(amount=5), command_id="fixed-cmd-1"), 3, "INVALID_COMMAND_ID"),
        (command("acc-1", bank.Withdraw(amount=500)), 9, "INSUFFICIENT_FUNDS"),
        (command("acc-1", bank.OpenAccount(owner="bob")), 6, "ACCOUNT_ALREADY_OPEN"),
    ],
    ids=["ok", "refused as decoded", "refused by the handler", "already exists"],
)
async def test_an_rpc_span_carries_its_grpc_status_code_and_a_refusal_its_reason(
    exporter: InMemorySpanExporter, sent: Any, code: int, reason: str | None
) -> None:
    """OpenTelemetry's gRPC server spans: ``rpc.grpc.status_code`` on every
    span; status unset for the codes that are the caller's (a refusal),
    told apart by that code. (A refused Submit's span had no code at all and
    looked like a success.)"""
    span = await rpc_span_of(exporter, command_service_pb2.SubmitRequest(command=sent))
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == code
    assert span.attributes.get("chronicle.reason") == reason
    assert span.status.status_code == StatusCode.UNSET


async def test_a_command_stream_s_span_ends_with_the_code_it_was_refused_with(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(MemoryStore(), tracer_provider=provider) as (_, client):
        raw = client.channel.stream_stream(
            "/chronicle.v1.CommandService/SubmitStream",
            request_serializer=lambda data: data,
            response_deserializer=lambda data: data,
        )
        with pytest.raises(grpc.aio.AioRpcError):
            async for _ in raw(iter([b"\xff\xff\xff"])):
                pass
    provider.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert span.name == "chronicle.v1.CommandService/SubmitStream"
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 3
    assert span.attributes["chronicle.reason"] == "MALFORMED_REQUEST"


class StoreAway(MemoryStore):
    """A store that answers reads and refuses every write, as one away does."""

    away = False

    async def append(self, *args: Any, **kwargs: Any) -> Any:
        if self.away:
            from service.errors import StoreUnavailable

            raise StoreUnavailable("the store is away", reason="STORE_UNAVAILABLE")
        return await super().append(*args, **kwargs)


async def test_an_rpc_span_the_server_failed_has_an_error_status(exporter: InMemorySpanExporter) -> None:
    """UNAVAILABLE is one of the codes a server span's status is ERROR for."""
    store = StoreAway()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(store, tracer_provider=provider) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        exporter.clear()
        store.away = True
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.Deposit(amount=5)))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    provider.shutdown()
    (span,) = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert span.attributes is not None and span.attributes["rpc.grpc.status_code"] == 14
    assert span.attributes["chronicle.reason"] == "STORE_UNAVAILABLE"
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description is not None and span.status.description.startswith("UNAVAILABLE")


async def test_each_command_of_a_batch_gets_its_own_span(exporter: InMemorySpanExporter) -> None:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(MemoryStore(), tracer_provider=provider) as (_, client):
        sent = [command("acc-1", bank.OpenAccount(owner="ann")), command("acc-1", bank.Deposit(amount=5))]
        await client.commands.SubmitBatch(command_service_pb2.SubmitBatchRequest(commands=sent))
    provider.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans() if s.name.startswith("command ")}
    assert set(spans) == {"command bank.v1.OpenAccount", "command bank.v1.Deposit"}
    ids = {s.attributes["chronicle.command_id"] for s in spans.values() if s.attributes is not None}
    assert ids == {c.command_id for c in sent}


def test_spans_are_made_only_when_someone_collects_them(monkeypatch: pytest.MonkeyPatch) -> None:
    # The API's default proxy drops every span: making them would only cost.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    assert not tracing.wanted(None)
    assert tracing.wanted(TracerProvider())
    # A provider set for the process (the SDK, opentelemetry-instrument).
    monkeypatch.setattr(trace, "get_tracer_provider", TracerProvider)
    assert tracing.wanted(None)


async def test_every_command_span_ends_when_many_callers_share_an_aggregate(exporter: InMemorySpanExporter) -> None:
    """The tracing middleware's hooks after a command run where the
    aggregate's worker finishes it, in the call's own context: with many
    callers on one worker, each command's span is the one that ends."""
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_server(MemoryStore(), tracer_provider=provider) as (_, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        sent = [command("acc-1", bank.Deposit(amount=1)) for _ in range(30)]
        sent += [command("acc-1", bank.Withdraw(amount=10**9)) for _ in range(5)]  # refused
        await asyncio.gather(*(client.submit(c) for c in sent), return_exceptions=True)
    provider.shutdown()
    ended = [s for s in exporter.get_finished_spans() if s.name.startswith("command ")]
    ids = sorted(str(s.attributes["chronicle.command_id"]) for s in ended if s.attributes is not None)
    assert ids == sorted([c.command_id for c in sent] + [ids_of_open(ended)])


def ids_of_open(spans: list[Any]) -> str:
    """The command id of the account's opening, among ``spans``."""
    (opening,) = [s for s in spans if s.name == "command bank.v1.OpenAccount"]
    return str(opening.attributes["chronicle.command_id"])
