"""``chronicle group`` as an operator types it, against a real server over a
real socket: the groups and their state, a group's parked events, replaying
them, and dismissing them (``DismissParked``: all named or none, refused
clearly, audited); and the Python client's ``groups.dismiss``."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2
from chronicle.v1 import subscription_group_service_pb2 as pb
from chronicle.v1 import subscription_group_service_pb2_grpc as pb_grpc
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import Application
from service.client import ChronicleClient, NotFound
from service.store.postgres import PostgresStore
from service.store.sqlite import SqliteStore
from tests.support.grpc_client import TEST_SETTINGS, Client, command, running_server
from tests.support.processes import cli
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow  # CLI processes

GROUP = "billing"
UNKNOWN_ID = "3f0c6a6e-8d0c-4a57-9e1b-2f7a4b9c1d23"


@asynccontextmanager
async def consuming(
    raw: Client, consumer: str
) -> AsyncIterator[grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.ConsumeResponse]]:
    call = pb_grpc.SubscriptionGroupServiceStub(raw.channel).Consume()
    try:
        await call.write(pb.ConsumeRequest(start=pb.ConsumeStart(group=GROUP, consumer=consumer)))
        joined = await asyncio.wait_for(call.read(), 20)
        assert joined is not grpc.aio.EOF and joined.HasField("joined"), joined
        yield call
    finally:
        call.cancel()


async def take(call: grpc.aio.StreamStreamCall[pb.ConsumeRequest, pb.ConsumeResponse], count: int) -> list[pb.Delivery]:
    taken: list[pb.Delivery] = []
    while len(taken) < count:
        message = await asyncio.wait_for(call.read(), 20)
        assert message is not grpc.aio.EOF and message.HasField("deliveries"), message
        taken += message.deliveries.deliveries
    return taken


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[Application, Client, ChronicleClient]]:
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    settings = replace(TEST_SETTINGS, anonymous_admin=True, poll_seconds=0.05, lease_seconds=30.0)
    try:
        async with (
            running_server(store, settings=settings) as (app, raw),
            ChronicleClient.connect(app.address) as client,
        ):
            yield app, raw, client
    finally:
        await store.close()


async def chronicle(app: Application, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(cli, *args, server=app.address, check=False)


def lines(result: subprocess.CompletedProcess[str]) -> list[dict[str, object]]:
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


async def three_parked(raw: Client, client: ChronicleClient) -> list[str]:
    """Three accounts opened, their events parked by a consumer that nacks
    them (one attempt allowed): their event ids, by position."""
    for n in range(3):
        await raw.submit(command(f"acc-{n}", bank.OpenAccount(owner="ann")))
    await client.groups.create(GROUP, max_delivery_attempts=1, segments=1)
    async with consuming(raw, "failing") as call:
        delivered = await take(call, 3)
        ids = [d.event.event_id for d in delivered]
        await call.write(pb.ConsumeRequest(nack=pb.Nack(event_ids=ids, reason="cannot parse")))

        async def parked() -> bool:
            return (await client.groups.get(GROUP)).parked == 3

        await eventually(parked, what="three events parked")
    return [d.event.event_id for d in sorted(delivered, key=lambda d: d.event.position)]


async def test_an_operator_lists_groups_and_parked_events_then_replays_and_dismisses_them(
    served: tuple[Application, Client, ChronicleClient],
) -> None:
    app, raw, client = served
    first, second, third = await three_parked(raw, client)
    (listed,) = lines(await chronicle(app, "group"))
    assert (listed["name"], listed["parked"], listed["lag"], listed["acknowledged"]) == (GROUP, "3", "0", "0")
    assert (listed["position"], listed["log_head"], listed["consumers"]) == ("3", "3", [])
    assert lines(await chronicle(app, "group", GROUP)) == [listed]
    shown = lines(await chronicle(app, "group", GROUP, "--parked"))
    assert [(p["event_id"], p["reason"], p["attempts"], p["replaying"]) for p in shown] == [
        (event_id, "cannot parse", 1, False) for event_id in (first, second, third)
    ]

    async with consuming(raw, "fixed") as call:
        assert lines(await chronicle(app, "group", GROUP, "--dismiss", first, third)) == [
            {"group": GROUP, "dismissed": 2}
        ]
        assert lines(await chronicle(app, "group", GROUP, "--replay", second)) == [{"group": GROUP, "replaying": 1}]
        (replayed,) = await take(call, 1)  # the one replayed; the dismissed ones never come
        assert (replayed.event.event_id, replayed.replayed) == (second, True)
        await call.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[second])))

        async def settled() -> bool:
            info = await client.groups.get(GROUP)
            return (info.parked, info.acknowledged) == (0, 1)  # dismissed ones are not acknowledged

        await eventually(settled, what="nothing parked, the replay acknowledged")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(call.read(), 0.5)
    assert lines(await chronicle(app, "group", GROUP, "--parked")) == []
    # What the group did not process: the two dismissed, counted as such.
    (listed,) = lines(await chronicle(app, "group", GROUP))
    counts = ("acknowledged", "skipped", "dismissed", "parked")
    assert [listed[count] for count in counts] == ["1", "0", "2", "0"]

    audit = await raw.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
    dismissals = [(e.aggregate_id, e.reason) for e in audit.entries if e.command_type.endswith("/DismissParked")]
    assert dismissals == [(f"group:{GROUP}", "")]


async def test_bad_dismissals_are_refused_in_one_line_and_dismiss_nothing(
    served: tuple[Application, Client, ChronicleClient],
) -> None:
    app, raw, client = served
    first, second, third = await three_parked(raw, client)

    async def refused(*args: str) -> tuple[int, str]:
        result = await chronicle(app, "group", *args)
        assert result.stdout == ""
        return result.returncode, result.stderr.splitlines()[0]

    code, said = await refused(GROUP, "--dismiss", first, UNKNOWN_ID)
    assert (code, ": ".join(said.split(": ")[:2])) == (1, "error: NOT_FOUND PARKED_EVENT_NOT_FOUND")
    assert UNKNOWN_ID in said and first not in said
    code, said = await refused(GROUP, "--dismiss", first, "not-an-id")
    assert (code, ": ".join(said.split(": ")[:2])) == (1, "error: INVALID_ARGUMENT INVALID_EVENT_ID")
    code, said = await refused("nope", "--dismiss", first)
    assert (code, ": ".join(said.split(": ")[:2])) == (1, "error: NOT_FOUND GROUP_NOT_FOUND")
    code, said = await refused("nope")
    assert (code, ": ".join(said.split(": ")[:2])) == (1, "error: NOT_FOUND GROUP_NOT_FOUND")
    code, said = await refused("--parked")
    assert code == 2 and said.startswith(
        "error: --parked, --replay, --replay-all, --dismiss and --set act on one group"
    )
    assert (await client.groups.get(GROUP)).parked == 3  # nothing half done

    with pytest.raises(grpc.aio.AioRpcError) as empty:
        await pb_grpc.SubscriptionGroupServiceStub(raw.channel).DismissParked(pb.DismissParkedRequest(group=GROUP))
    assert empty.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at least one" in (empty.value.details() or "")

    # The Python client: all or none, the missing ids in the metadata.
    with pytest.raises(NotFound) as missing:
        await client.groups.dismiss(GROUP, [first, UNKNOWN_ID])
    assert (missing.value.reason, missing.value.metadata["event_ids"]) == ("PARKED_EVENT_NOT_FOUND", UNKNOWN_ID)
    assert await client.groups.dismiss(GROUP, [first.upper()]) == 1  # any form of the UUID
    assert [p.event_id for p in await client.groups.parked(GROUP)] == [second, third]

    audit = await raw.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
    dismissals = sorted(e.reason for e in audit.entries if e.command_type.endswith("/DismissParked"))
    assert dismissals == sorted(
        [
            "",
            "PARKED_EVENT_NOT_FOUND",
            "PARKED_EVENT_NOT_FOUND",
            "INVALID_EVENT_ID",
            "INVALID_EVENT_ID",
            "GROUP_NOT_FOUND",
        ]
    )


async def test_an_operator_changes_a_groups_settings_with_set_and_bad_ones_are_refused_clearly(
    served: tuple[Application, Client, ChronicleClient],
) -> None:
    app, raw, client = served
    await client.groups.create(GROUP, segments=4)
    (shown,) = lines(
        await chronicle(
            app, "group", GROUP, "--set", "ack_timeout=1.5s", "retry_backoff=250ms", "max_delivery_attempts=3"
        )
    )
    assert (shown["name"], shown["ack_timeout"], shown["retry_backoff"], shown["max_delivery_attempts"]) == (
        GROUP,
        "1.500s",
        "0.250s",
        3,
    )
    info = await client.groups.get(GROUP)
    assert (info.ack_timeout.ToMilliseconds(), info.max_retry_backoff.ToMilliseconds(), info.segments) == (
        1500,
        60_000,
        4,
    )

    missing = await chronicle(app, "group", "missing", "--set", "ack_timeout=1m")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND GROUP_NOT_FOUND:"), missing.stderr
    resized = await chronicle(app, "group", GROUP, "--set", "segments=8")
    assert resized.returncode == 1, resized.stderr
    assert resized.stderr.startswith("error: INVALID_ARGUMENT SETTING_NOT_UPDATABLE:"), resized.stderr
    too_long = await chronicle(app, "group", GROUP, "--set", "ack_timeout=2h")
    assert too_long.stderr.startswith("error: INVALID_ARGUMENT BAD_GROUP_SETTING:"), too_long.stderr
    # Refused before anything is sent: exit 2, the mistake named.
    soon = await chronicle(app, "group", GROUP, "--set", "ack_timeout=soon")
    assert soon.returncode == 2 and "ack_timeout: expected a duration such as 500ms" in soon.stderr, soon.stderr
    refiltered = await chronicle(app, "group", GROUP, "--set", "filter=Account")
    assert refiltered.returncode == 2 and "'filter' is no setting an update changes" in refiltered.stderr
    assert await client.groups.get(GROUP) == info

    # The bound on a consumer that answers nothing: 0 turns it off.
    assert info.max_unanswered_timeouts == 3  # the default
    (unbounded,) = lines(await chronicle(app, "group", GROUP, "--set", "max_unanswered_timeouts=0"))
    assert (unbounded["max_unanswered_timeouts"], unbounded["ack_timeout"]) == (0, "1.500s")
    too_many = await chronicle(app, "group", GROUP, "--set", "max_unanswered_timeouts=101")
    assert too_many.stderr.startswith("error: INVALID_ARGUMENT BAD_GROUP_SETTING:"), too_many.stderr

    audit = await raw.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
    updates = [(e.aggregate_id, e.reason) for e in audit.entries if e.command_type.endswith("/UpdateGroup")]
    assert updates == [
        (f"group:{GROUP}", "BAD_GROUP_SETTING"),
        (f"group:{GROUP}", ""),
        (f"group:{GROUP}", "BAD_GROUP_SETTING"),
        (f"group:{GROUP}", "SETTING_NOT_UPDATABLE"),
        ("group:missing", "GROUP_NOT_FOUND"),
        (f"group:{GROUP}", ""),
    ]


async def test_chronicle_group_shows_each_consumers_replica_events_in_flight_and_last_answer(tmp_path: Path) -> None:
    """The consumer's report, as ListGroups carries it from the store (SQLite
    here): the replica it is connected to, its events in flight, how long
    ago it joined, last answered and was last heard from (a report each
    half second: the lease time over three)."""
    store = SqliteStore(tmp_path / "events.db")
    await store.open()
    settings = replace(TEST_SETTINGS, anonymous_admin=True, poll_seconds=0.05, lease_seconds=1.5)
    try:
        async with (
            running_server(store, settings=settings) as (app, raw),
            ChronicleClient.connect(app.address) as client,
        ):
            for n in range(3):
                await raw.submit(command(f"acc-{n}", bank.OpenAccount(owner="ann")))
            await client.groups.create(GROUP, segments=1, ack_timeout=60)
            async with consuming(raw, "worker") as call:
                first, *_ = await take(call, 3)
                await call.write(pb.ConsumeRequest(ack=pb.Ack(event_ids=[first.event.event_id])))

                async def two_in_flight() -> bool:
                    (info,) = await client.groups.list()
                    return [(c.in_flight, c.HasField("since_last_answer")) for c in info.consumers] == [(2, True)]

                await eventually(two_in_flight, what="the consumer's report: two events in flight, one acked")
                (listed,) = lines(await chronicle(app, "group", GROUP))
    finally:
        await store.close()
    consumers = listed["consumers"]
    assert isinstance(consumers, list) and len(consumers) == 1
    consumer: dict[str, object] = consumers[0]
    assert (consumer["replica_address"], consumer["replica_id"]) == (app.leases.member.address, app.leases.member_id)
    assert consumer["in_flight"] == 2 and consumer["segments"] == [0]
    for field in ("since_last_answer", "since_last_heard", "since_connected"):
        assert str(consumer[field]).endswith("s") and float(str(consumer[field])[:-1]) < 30, consumer
    # Connected before it answered: it joined, then took its events in and acked one.
    assert float(str(consumer["since_connected"])[:-1]) >= float(str(consumer["since_last_answer"])[:-1])


async def test_an_operator_creates_updates_and_deletes_a_group_from_the_command_line(
    served: tuple[Application, Client, ChronicleClient],
) -> None:
    app, raw, client = served
    for n in range(2):
        await raw.submit(command(f"acc-{n}", bank.OpenAccount(owner="ann")))
    (created,) = lines(
        await chronicle(
            app,
            "group",
            "create",
            GROUP,
            "--aggregate-types",
            "Account",
            "Transfer",
            "--event-types",
            "bank.v1.AccountOpened",
            "--origin",
            "web",
            "--start-from",
            "1",
            "--segments",
            "4",
            "--max-delivery-attempts",
            "7",
            "--retry-backoff",
            "250ms",
            "--max-retry-backoff",
            "2m",
            "--ack-timeout",
            "1.5s",
            "--max-unanswered-timeouts",
            "0",
        )
    )
    assert created["name"] == GROUP
    assert created["filter"] == {
        "aggregate_types": ["Account", "Transfer"],
        "event_types": ["bank.v1.AccountOpened"],
        "origin": "web",
        "tenant": "",
    }
    info = await client.groups.get(GROUP)
    assert (info.segments, info.max_delivery_attempts, info.max_unanswered_timeouts) == (4, 7, 0)
    assert (
        info.retry_backoff.ToMilliseconds(),
        info.max_retry_backoff.ToMilliseconds(),
        info.ack_timeout.ToMilliseconds(),
    ) == (250, 120_000, 1500)
    assert info.position == 1  # --start-from 1: after the first event

    (at_end,) = lines(await chronicle(app, "group", "create", "tail-only", "--start-from", "end"))
    assert (at_end["position"], at_end["segments"], at_end["max_delivery_attempts"]) == ("2", 16, 5)

    # The RPC's refusals, said as every command says them: exit 1.
    again = await chronicle(app, "group", "create", GROUP)
    assert again.returncode == 1 and again.stderr.startswith("error: ALREADY_EXISTS GROUP_EXISTS:"), again.stderr
    badly_named = await chronicle(app, "group", "create", "no spaces")
    assert badly_named.returncode == 1, badly_named.stderr
    assert badly_named.stderr.startswith("error: INVALID_ARGUMENT BAD_GROUP_NAME:"), badly_named.stderr
    odd = await chronicle(app, "group", "create", "odd", "--segments", "3")
    assert odd.stderr.startswith("error: INVALID_ARGUMENT BAD_GROUP_SETTING:"), odd.stderr
    # Mistakes on the line: exit 2, nothing sent (0 would be the RPC's default, not 0).
    zero = await chronicle(app, "group", "create", "zero", "--segments", "0")
    assert zero.returncode == 2 and "must be 1 or more" in zero.stderr, zero.stderr
    soon = await chronicle(app, "group", "create", "soon", "--ack-timeout", "soon")
    assert soon.returncode == 2 and "expected a duration such as 500ms" in soon.stderr, soon.stderr
    nowhere = await chronicle(app, "group", "create", "nowhere", "--start-from", "middle")
    assert nowhere.returncode == 2 and "expected 'beginning', 'end' or a position" in nowhere.stderr

    (updated,) = lines(
        await chronicle(app, "group", "update", GROUP, "--ack-timeout", "2s", "--max-unanswered-timeouts", "5")
    )
    assert (updated["ack_timeout"], updated["max_unanswered_timeouts"], updated["max_delivery_attempts"]) == (
        "2s",
        5,
        7,
    )
    refiltered = await chronicle(app, "group", "update", GROUP, "--aggregate-types", "Loan")
    assert refiltered.returncode == 2 and "fixed at a group's creation" in refiltered.stderr, refiltered.stderr
    nothing = await chronicle(app, "group", "update", GROUP)
    assert nothing.stderr.startswith("error: INVALID_ARGUMENT NO_SETTING_GIVEN:"), nothing.stderr
    resized = await chronicle(app, "group", "update", GROUP, "--segments", "8")
    assert resized.stderr.startswith("error: INVALID_ARGUMENT SETTING_NOT_UPDATABLE:"), resized.stderr
    missing = await chronicle(app, "group", "update", "missing", "--ack-timeout", "1s")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND GROUP_NOT_FOUND:")

    # Deleting asks for the name again, and says first what would go.
    unconfirmed = await chronicle(app, "group", "delete", GROUP)
    assert unconfirmed.returncode == 2 and "nothing was deleted" in unconfirmed.stderr, unconfirmed.stderr
    assert f"chronicle group delete {GROUP} --confirm {GROUP}" in unconfirmed.stderr
    mistyped = await chronicle(app, "group", "delete", GROUP, "--confirm", "tail-only")
    assert mistyped.returncode == 2 and "--confirm said 'tail-only'" in mistyped.stderr, mistyped.stderr
    assert [g.name for g in await client.groups.list()] == [GROUP, "tail-only"]
    assert lines(await chronicle(app, "group", "delete", GROUP, "--confirm", GROUP)) == [
        {"group": GROUP, "deleted": True}
    ]
    assert [g.name for g in await client.groups.list()] == ["tail-only"]
    gone = await chronicle(app, "group", "delete", GROUP, "--confirm", GROUP)
    assert gone.returncode == 1 and gone.stderr.startswith("error: NOT_FOUND GROUP_NOT_FOUND:"), gone.stderr
    unknown = await chronicle(app, "group", "delete", GROUP)
    assert unknown.returncode == 1 and unknown.stderr.startswith("error: NOT_FOUND GROUP_NOT_FOUND:")

    audit = await raw.admin.QueryAudit(admin_service_pb2.QueryAuditRequest())
    done = [(e.command_type.rpartition("/")[2], e.aggregate_id, e.reason) for e in reversed(audit.entries)]
    assert [entry for entry in done if entry[0] == "DeleteGroup"] == [
        ("DeleteGroup", f"group:{GROUP}", ""),
        ("DeleteGroup", f"group:{GROUP}", "GROUP_NOT_FOUND"),
    ]


async def test_group_create_and_delete_on_postgresql(postgres_store: PostgresStore) -> None:
    settings = replace(TEST_SETTINGS, anonymous_admin=True, poll_seconds=0.05)
    async with (
        running_server(postgres_store, settings=settings) as (app, _raw),
        ChronicleClient.connect(app.address) as client,
    ):
        (created,) = lines(
            await chronicle(app, "group", "create", GROUP, "--aggregate-types", "Account", "--segments", "2")
        )
        assert (created["filter"]["aggregate_types"], created["segments"]) == (["Account"], 2)  # type: ignore[index]
        assert (await client.groups.get(GROUP)).segments == 2
        assert lines(await chronicle(app, "group", "delete", GROUP, "--confirm", GROUP)) == [
            {"group": GROUP, "deleted": True}
        ]
        assert await client.groups.list() == []
