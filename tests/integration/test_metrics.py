"""Prometheus metrics over HTTP, scraped while a real server works."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.store.memory import MemoryStore
from tests.support.blocking import ConflictOnce
from tests.support.grpc_client import Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.metrics import sample, scrape
from tests.support.security import JwtIssuer, bearer
from tests.support.waiting import eventually


@pytest.fixture
async def served() -> AsyncIterator[tuple[Application, Client, Any]]:
    store = ConflictOnce(MemoryStore())
    async with running_server(store, metrics_listen="127.0.0.1:0") as (app, client):
        yield app, client, store


async def test_command_counters_move_with_each_outcome(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    before = await scrape(app)
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    with pytest.raises(grpc.aio.AioRpcError):
        await client.submit(command("acc-1", bank.Withdraw(amount=5)))
    after = await scrape(app)
    opened = {"command_type": "bank.v1.OpenAccount", "outcome": "ok"}
    refused = {"command_type": "bank.v1.Withdraw", "outcome": "failed_precondition"}
    assert (
        sample(after, "chronicle_commands_total", **opened) == sample(before, "chronicle_commands_total", **opened) + 1
    )
    assert sample(after, "chronicle_commands_total", **refused) == 1
    assert sample(after, "chronicle_command_duration_seconds_count", command_type="bank.v1.OpenAccount") == 1


async def test_commands_and_events_are_counted_per_tenant_when_asked_for_the_first_n_tenants() -> None:
    """``--metrics-tenants 2``: acme and globex, the first two tenants
    seen, have series of their own; initech comes third and counts as
    ``(other tenants)``, an id of no tenant as ``(no tenant)``. A retry answered from
    its record is not counted again; a command refused as it was decoded
    is counted for its id's tenant."""
    async with running_server(MemoryStore(), metrics_listen="127.0.0.1:0", metrics_tenants=2) as (app, client):
        opened = command("acme:acc-1", bank.OpenAccount(owner="ann"))
        await client.submit(opened)
        await client.submit(opened)  # replayed
        await client.submit(command("acme:acc-1", bank.Deposit(amount=5)))
        with pytest.raises(grpc.aio.AioRpcError):
            await client.submit(command("acme:acc-1", bank.Withdraw(amount=500)))  # by the handler
        with pytest.raises(grpc.aio.AioRpcError):  # as it is decoded, before the pipeline
            await client.submit(command("acme:acc-1", bank.Deposit(amount=1), command_id="not-a-uuid"))
        await client.submit(command("globex:acc-1", bank.OpenAccount(owner="bob")))
        await client.submit(command("initech:acc-1", bank.OpenAccount(owner="cy")))
        await client.submit(command("acc-1", bank.OpenAccount(owner="di")))
        text = await scrape(app)

    def counted(name: str, **labels: str) -> float:
        return sample(text, name, **labels)

    assert counted("chronicle_tenant_commands_total", tenant="acme", outcome="accepted") == 2
    assert counted("chronicle_tenant_commands_total", tenant="acme", outcome="refused") == 2
    assert counted("chronicle_tenant_events_appended_total", tenant="acme") == 2
    assert counted("chronicle_tenant_commands_total", tenant="globex", outcome="accepted") == 1
    assert counted("chronicle_tenant_commands_total", tenant="(other tenants)", outcome="accepted") == 1
    assert counted("chronicle_tenant_commands_total", tenant="(no tenant)", outcome="accepted") == 1
    assert 'tenant="initech"' not in text


async def test_commands_refused_take_no_tenant_label_before_the_tenants_a_command_is_accepted_for(
    tmp_path: Path,
) -> None:
    """Before: a principal refused SUBMIT_DENIED for ``junk1:x`` ...
    ``junk5:x`` took every label, and the real tenants after them counted
    as ``(other)``. A refusal counts under a tenant already labelled, or
    ``(other tenants)``; only an accepted command gives its tenant a label."""
    issuer = JwtIssuer()
    settings = replace(with_jwt_auth(tmp_path, issuer), metrics_listen="127.0.0.1:0", metrics_tenants=2)
    async with running_server(MemoryStore(), settings=settings) as (app, _):
        # bob may submit no bank command: every one is refused SUBMIT_DENIED.
        async with connect(app.address, interceptors=bearer(issuer.token("bob"))) as denied:
            for number in range(1, 6):
                with pytest.raises(grpc.aio.AioRpcError) as raised:
                    await denied.submit(command(f"junk{number}:x", bank.OpenAccount(owner="x"), user_id=""))
                assert details_of(raised.value).reason == "SUBMIT_DENIED"
        async with connect(app.address, interceptors=bearer(issuer.token("alice"))) as teller:
            await teller.submit(command("acme:acc-1", bank.OpenAccount(owner="ann"), user_id=""))
            await teller.submit(command("globex:acc-1", bank.OpenAccount(owner="bob"), user_id=""))
        async with connect(app.address, interceptors=bearer(issuer.token("bob"))) as denied:
            with pytest.raises(grpc.aio.AioRpcError):
                await denied.submit(command("acme:acc-2", bank.OpenAccount(owner="x"), user_id=""))
        text = await scrape(app)

    assert sample(text, "chronicle_tenant_commands_total", tenant="acme", outcome="accepted") == 1
    assert sample(text, "chronicle_tenant_commands_total", tenant="globex", outcome="accepted") == 1
    assert sample(text, "chronicle_tenant_commands_total", tenant="acme", outcome="refused") == 1
    assert sample(text, "chronicle_tenant_commands_total", tenant="(other tenants)", outcome="refused") == 5
    assert "junk" not in text


async def test_no_tenant_label_by_default(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    await client.submit(command("acme:acc-1", bank.OpenAccount(owner="ann")))
    text = await scrape(app)
    assert "chronicle_tenant_" not in text and "acme" not in text


async def test_a_conflict_is_counted_and_retried(served: tuple[Application, Client, Any]) -> None:
    app, client, store = served
    response = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    text = await scrape(app)
    assert store.conflicted
    assert response.version == 1  # retried and won
    assert sample(text, "chronicle_concurrency_conflicts_total") == 1
    assert sample(text, "chronicle_store_operation_duration_seconds_count", operation="append") == 2


async def test_workers_and_store_latency_are_reported(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    text = await scrape(app)
    assert sample(text, "chronicle_live_workers") == 1
    assert sample(text, "chronicle_queued_commands") == 0
    assert sample(text, "chronicle_store_operation_duration_seconds_count", operation="read_aggregate") >= 1


async def test_no_aggregate_id_becomes_a_label(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    await client.submit(command("acc-unique-7f3e", bank.OpenAccount(owner="ann")))
    assert "acc-unique-7f3e" not in await scrape(app)


async def test_refusals_before_a_command_is_read_are_counted(tmp_path: Any) -> None:
    from tests.support.security import POLICY, api_key_file, write

    async with running_server(
        MemoryStore(),
        metrics_listen="127.0.0.1:0",
        auth=True,
        policy_file=write(tmp_path / "policy.toml", POLICY),
        api_keys_file=api_key_file(tmp_path / "keys.toml", []),
    ) as (app, _):
        async with connect(app.address) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError):
                await anonymous.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        text = await scrape(app)
    assert sample(text, "chronicle_rpc_refusals_total", reason="NO_CREDENTIALS") == 1


def _unknown_type(aggregate_id: str) -> Any:
    from google.protobuf import any_pb2

    unknown = command(aggregate_id, bank.Deposit(amount=1))
    unknown.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nobody.v1.Knows"))
    return unknown


async def test_commands_refused_as_they_are_decoded_are_counted_as_refused_commands(
    served: tuple[Application, Client, Any],
) -> None:
    """A command refused between the gate and the pipeline (a command id
    that is no UUID, a type no plugin registered), on each command RPC,
    counts as a command and as a refusal by its reason, as one the pipeline
    refused does, and not as an RPC refused before a command was read. A
    type no plugin registered is no label: it counts as "(unknown)". (None
    of the three counters moved.)"""
    from chronicle.v1 import command_service_pb2 as cs

    app, client, _ = served
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    before = await scrape(app)
    not_a_uuid = [command("acc-1", bank.Deposit(amount=1), command_id=f"fixed-cmd-{i}") for i in range(5)]
    with pytest.raises(grpc.aio.AioRpcError):
        await client.submit(not_a_uuid[0])
    with pytest.raises(grpc.aio.AioRpcError):
        await client.submit(_unknown_type("acc-1"))
    with pytest.raises(grpc.aio.AioRpcError):  # one batch of two: both refused, as the audit records both
        await client.commands.SubmitBatch(cs.SubmitBatchRequest(commands=not_a_uuid[1:3]))
    async for answer in client.commands.SubmitStream(iter([cs.SubmitRequest(command=not_a_uuid[3])])):
        assert answer.error.reason == "INVALID_COMMAND_ID"
    pages = [
        cs.SubmitPage(
            requests=[cs.SubmitRequest(command=not_a_uuid[4]), cs.SubmitRequest(command=_unknown_type("acc-2"))]
        )
    ]
    answered = [r.error.reason async for page in client.commands.SubmitStreamPages(iter(pages)) for r in page.results]
    assert answered == ["INVALID_COMMAND_ID", "UNKNOWN_COMMAND_TYPE"]
    after = await scrape(app)

    def moved(name: str, **labels: str) -> float:
        return sample(after, name, **labels) - sample(before, name, **labels)

    invalid = "invalid_argument"
    assert moved("chronicle_commands_total", command_type="bank.v1.Deposit", outcome=invalid) == 5
    assert moved("chronicle_commands_total", command_type="(unknown)", outcome=invalid) == 2
    assert moved("chronicle_command_refusals_total", reason="INVALID_COMMAND_ID") == 5
    assert moved("chronicle_command_refusals_total", reason="UNKNOWN_COMMAND_TYPE") == 2
    assert "chronicle_rpc_refusals_total{" not in after  # not counted twice
    assert "nobody.v1.Knows" not in after
    # Nothing was waited for: the latency histogram is of the pipeline's commands.
    assert moved("chronicle_command_duration_seconds_count", command_type="bank.v1.Deposit") == 0


async def test_a_command_stream_message_that_does_not_parse_is_refused_audited_and_counted() -> None:
    """As a Submit whose bytes do not parse is: an RPC refused before a
    command was read (MALFORMED_REQUEST), one audit entry. (It was neither.)"""
    from service.store.base import AuditQuery

    store = MemoryStore()
    async with running_server(store, metrics_listen="127.0.0.1:0") as (app, client):
        for method in ("SubmitStream", "SubmitStreamPages"):
            raw = client.channel.stream_stream(
                f"/chronicle.v1.CommandService/{method}",
                request_serializer=lambda data: data,
                response_deserializer=lambda data: data,
            )
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in raw(iter([b"\xff\xff\xff"])):
                    pass
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        text = await scrape(app)
        entries = await store.read_audit(AuditQuery(limit=10))
    assert sample(text, "chronicle_rpc_refusals_total", reason="MALFORMED_REQUEST") == 2
    assert [e.reason for e in entries] == ["MALFORMED_REQUEST"] * 2


async def test_open_subscriptions_are_counted(served: tuple[Application, Client, Any]) -> None:
    from chronicle.v1 import event_service_pb2

    app, client, _ = served
    stream = client.events.Subscribe(event_service_pb2.SubscribeRequest())
    assert (await stream.read()).HasField("caught_up")
    assert sample(await scrape(app), "chronicle_subscriptions") == 1
    stream.cancel()


async def test_subscription_lag_is_the_slowest_subscribers_distance_from_the_head() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    from service.observability.subscriptions import LagSampler, SubscriptionTracker
    from tests.support.events import new_event

    store = MemoryStore()
    await store.append("a-1", [new_event(), new_event(), new_event()], 0)
    tracker = SubscriptionTracker()
    registry = CollectorRegistry()
    lag = Gauge("lag", "test", registry=registry)
    sampler = LagSampler(store, tracker, lag)
    with tracker.tracking(0) as slow, tracker.tracking(0) as fast:
        tracker.moved(slow, 1)
        tracker.moved(fast, 3)
        await sampler.sample()
        assert registry.get_sample_value("lag") == 2
    await sampler.sample()
    assert registry.get_sample_value("lag") == 0


async def test_group_commit_counters_on_postgresql(postgres_url: str) -> None:
    from service.store.postgres import PostgresStore

    async with running_server(PostgresStore(postgres_url, pool_size=4), metrics_listen="127.0.0.1:0") as (
        app,
        client,
    ):
        before = await scrape(app)
        await asyncio.gather(
            *(client.submit(command(f"acc-batch-{i}", bank.OpenAccount(owner="ann"))) for i in range(12))
        )
        after = await scrape(app)

    def moved(name: str) -> float:
        return sample(after, name) - sample(before, name)

    # Twelve appends of one event each, in as many transactions or fewer.
    assert moved("chronicle_store_batched_appends_total") == 12
    assert 1 <= moved("chronicle_store_batches_total") <= 12
    assert moved("chronicle_store_unbatched_appends_total") == 0


async def test_stores_without_group_commit_do_not_report_batches(served: tuple[Application, Client, Any]) -> None:
    app, client, _ = served
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    assert "chronicle_store_batches" not in await scrape(app)


async def test_a_reaction_s_commands_are_counted_by_outcome() -> None:
    async with running_server(MemoryStore(), metrics_listen="127.0.0.1:0", poll_seconds=0.05) as (app, client):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=10)))
        await client.submit(command("closed", bank.OpenAccount(owner="bob")))
        await client.submit(command("closed", bank.CloseAccount()))
        transfer = bank.TransferMoney(source_account_id="acc-1", target_account_id="closed", amount=5)
        await client.submit(command("t-1", transfer))
        counted = {"reaction": "bank.transfers"}

        async def refunded() -> bool:
            text = await scrape(app)
            # The debit, the refund and the record of it; the credit refused.
            return (
                sample(text, "chronicle_reaction_commands_total", **counted, outcome="accepted") == 3
                and sample(text, "chronicle_reaction_commands_total", **counted, outcome="refused") == 1
            )

        await eventually(refunded, what="the transfer refunded")


async def test_refusals_sampled_out_of_the_audit_log_are_counted() -> None:
    from google.protobuf import any_pb2

    from chronicle.v1 import command_service_pb2
    from service.store.base import AuditQuery
    from service.store.records import AuditEntry

    store = MemoryStore()
    async with running_server(store, metrics_listen="127.0.0.1:0") as (app, client):
        unknown = command("acc-1", bank.OpenAccount(owner="ann"))
        unknown.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nobody.v1.Knows"))
        request = command_service_pb2.SubmitRequest(command=unknown)
        # With authentication off every caller is anonymous: a flood of them is sampled.
        outcomes = await asyncio.gather(*(client.commands.Submit(request) for _ in range(200)), return_exceptions=True)
        assert all(isinstance(o, grpc.aio.AioRpcError) for o in outcomes)

        async def entries() -> list[AuditEntry]:
            return await store.read_audit(AuditQuery(limit=1000))

        async def all_counted() -> bool:
            return sum(e.occurrences for e in await entries()) == 200

        await eventually(all_counted, what="every refusal counted in the audit log")
        text = await scrape(app)
    sampled = sample(text, "chronicle_audit_refusals_sampled_total", reason="UNKNOWN_COMMAND_TYPE")
    assert sampled == sum(e.occurrences for e in await entries() if e.occurrences > 1) > 100


async def test_group_consumers_lag_and_parked_events_are_measured() -> None:
    from prometheus_client import CollectorRegistry, Gauge

    from service.client import ChronicleClient
    from service.observability.subscriptions import GroupSampler
    from service.store.grouping import GroupParkedEvent, GroupSpec
    from tests.support.events import new_event

    store = MemoryStore()
    await store.append("a-1", [new_event(), new_event(), new_event()], 0)
    await store.create_group(GroupSpec(name="billing", segments=2))
    await store.create_group(GroupSpec(name="audit", segments=1, start_position=3))
    await store.commit_segment("billing", 0, expected_position=0, new_position=2, acknowledged=1, skipped=1)
    parked = GroupParkedEvent(event_id="e", position=1, segment=1, aggregate_id="a-1", attempts=5, reason="x")
    await store.park("billing", [parked, replace(parked, event_id="f", position=3)])
    await store.dismiss_parked("billing", ["f"])
    registry = CollectorRegistry()
    lag = Gauge("lag", "test", ["group"], registry=registry)
    parked_gauge = Gauge("parked", "test", ["group"], registry=registry)
    skipped = Gauge("skipped", "test", ["group"], registry=registry)
    dismissed = Gauge("dismissed", "test", ["group"], registry=registry)
    sampler = GroupSampler(store, store, lag=lag, parked=parked_gauge, skipped=skipped, dismissed=dismissed)
    await sampler.sample()
    assert registry.get_sample_value("lag", {"group": "billing"}) == 3  # segment 1 is still at 0
    assert registry.get_sample_value("lag", {"group": "audit"}) == 0
    assert registry.get_sample_value("parked", {"group": "billing"}) == 1
    assert registry.get_sample_value("skipped", {"group": "billing"}) == 1
    assert registry.get_sample_value("dismissed", {"group": "billing"}) == 1
    assert registry.get_sample_value("dismissed", {"group": "audit"}) == 0
    # A scrape (on the metrics server's thread) may come at any moment of a
    # sample: at each, every group still has its value.
    seen: list[float | None] = []
    setting = lag.labels

    def watched(**labels: str) -> Any:
        seen.extend(registry.get_sample_value("lag", {"group": name}) for name in ("billing", "audit"))
        return setting(**labels)

    lag.labels = watched  # type: ignore[method-assign,assignment]
    await sampler.sample()
    lag.labels = setting  # type: ignore[method-assign]
    assert len(seen) == 4 and None not in seen, seen
    await store.delete_group("billing")
    await sampler.sample()
    assert registry.get_sample_value("lag", {"group": "billing"}) is None
    assert registry.get_sample_value("skipped", {"group": "billing"}) is None

    async with (
        running_server(MemoryStore(), metrics_listen="127.0.0.1:0", anonymous_admin=True) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        await client.groups.create("billing")
        async with client.consume("billing", consumer="worker") as consumer:
            deliveries = aiter(consumer)
            waiting = asyncio.ensure_future(anext(deliveries))
            await asyncio.wait_for(consumer.joined.wait(), 20)
            assert sample(await scrape(app), "chronicle_group_consumers") == 1
            waiting.cancel()


# Read models that fail: one stops at every deposit (and retries), one parks
# a deposit of 13.
watched = Plugin("watched")
stopping = watched.projection("watched.stopping", aggregate_types=["Account"], retry_seconds=0.05)
parking = watched.projection(
    "watched.parking", aggregate_types=["Account"], on_failure="park", max_attempts=1, retry_seconds=0.01
)


@stopping.on(bank.MoneyDeposited)
def _never(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    raise RuntimeError("this handler never works")


@parking.on(bank.MoneyDeposited)
def _not_13(event: bank.MoneyDeposited, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.amount == 13:
        raise ValueError("13 is unlucky")
    documents.put(envelope.aggregate_id, event)


async def test_each_projection_and_reaction_reports_its_position_lag_failure_and_parked_count() -> None:
    """An operator can alert on a read model that stopped, is behind or
    parks, and on a reaction that parks, from the metrics alone. (No metric
    said any of it: only each replica's console.)"""
    from domain_plugins import bank_account
    from domain_plugins.box.protos.box.v1 import box_pb2 as box
    from service.plugins.registry import Registry
    from tests.support import plugins

    registry = Registry([bank_account.plugin, plugins.gates, watched])
    async with running_server(MemoryStore(), registry=registry, metrics_listen="127.0.0.1:0", poll_seconds=0.05) as (
        app,
        client,
    ):
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=13)))
        await client.submit(command("source", box.ArchiveBox()))
        await client.submit(command("source", box.RenameBox(name="ann")))  # relayed to "gated", shut: parked
        head = await app.store.log.log_head()
        sampler = app.group_sampler
        assert sampler is not None
        text = ""

        async def settled() -> bool:
            nonlocal text
            await sampler.sample()  # as its loop does every 5 s
            text = await scrape(app)
            return (
                sample(text, "chronicle_projection_failing", projection="watched.stopping") == 1
                and sample(text, "chronicle_projection_parked_events", projection="watched.parking") == 1
                and sample(text, "chronicle_projection_lag_positions", projection="bank.balances_by_owner") == 0
                and sample(text, "chronicle_reaction_parked_commands", reaction="gates.relay") == 1
            )

        await eventually(settled, what="the read models and the reaction settled")
    stopped = {"projection": "watched.stopping"}
    position = sample(text, "chronicle_projection_position", **stopped)
    assert position < head  # before the deposit it cannot get past
    assert sample(text, "chronicle_projection_lag_positions", **stopped) == head - position > 0
    for name in ("watched.parking", "bank.balances_by_owner"):
        assert sample(text, "chronicle_projection_position", projection=name) == head, name
        assert sample(text, "chronicle_projection_failing", projection=name) == 0, name
    relay = {"reaction": "gates.relay"}
    assert sample(text, "chronicle_reaction_position", **relay) == head
    assert sample(text, "chronicle_reaction_lag_positions", **relay) == 0
    assert sample(text, "chronicle_reaction_failing", **relay) == 0
    assert 'chronicle_projection_failing{projection="watched.stopping"} 1.0' in text


async def test_a_projection_is_reported_by_the_replica_that_runs_it_and_moves_with_it(postgres_url: str) -> None:
    """Two replicas: one runs the read model and reports it, the other does
    not; when the first leaves, the second takes it over and reports it,
    and the first no longer does."""
    from tests.support.cluster import replica, runners_of

    name = "bank.balances_by_owner"
    series = f'chronicle_projection_position{{projection="{name}"}}'

    async def sampled(app: Application) -> str:
        assert app.group_sampler is not None
        await app.group_sampler.sample()  # as its loop does every 5 s
        return await scrape(app)

    async def reports(app: Application) -> bool:
        text = await sampled(app)
        return series in text and sample(text, "chronicle_projection_lag_positions", projection=name) == 0

    async with (
        replica(postgres_url, metrics_listen="127.0.0.1:0") as (first, client),
        replica(postgres_url, metrics_listen="127.0.0.1:0") as (second, _),
    ):
        apps = [first, second]
        await eventually(lambda: len(runners_of(apps, name)) == 1, within=20, what="one replica running it")
        (holder,) = runners_of(apps, name)
        (other,) = [app for app in apps if app is not holder]
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await eventually(lambda: reports(holder), within=20, what="the holder reporting it")
        assert series not in await sampled(other)
        await holder.projections.stop()
        await holder.leases.stop(leave=True)  # it leaves: the other takes its leases
        await eventually(lambda: reports(other), within=20, what="the other replica reporting it")
        assert series not in await sampled(holder)
