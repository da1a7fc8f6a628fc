"""The comments of protos/chronicle/v1/*.proto, claim by claim, where no
other test asserted the claim: raw gRPC stubs over a real socket, as a
client in any language sees the API, on the memory store.

AdminService
- ``QueryAudit``: ``limit`` 0 means the 100 newest entries, newest first;
  up to 1000, more is LIMIT_TOO_LARGE; ``since`` is inclusive, ``until``
  exclusive; a command is found by the id it was sent with, in any UUID
  form (it was found only by the canonical form), and ``AuditEntry.peer``
  is empty for a command that reached its handler, set for one refused
  before;
- ``ExportLog`` with an ``ArchiveRule``: ``limit`` 0 means 100, in id
  order, a deleted aggregate never matches; LIMIT_TOO_LARGE, INVALID_RULE,
  INVALID_TIMESTAMP and INVALID_SELECTION for bad rules;
- ``DeleteAggregate``: the tombstone's AggregateDeleted names the principal
  who deleted it, the reason and the archive (at most 1000 characters,
  TEXT_TOO_LONG beyond);
- ``ForgetAggregate`` of an aggregate whose events were written before
  encryption at rest was on is NOT_ENCRYPTED, and they stay readable;
- ``ImportLogResponse.records`` counts every record read, the header and
  the end included.

CommandService
- ``Command.metadata``: at most 64 entries, keys of 1 to 128 printable
  characters, values of at most 4,096 characters (INVALID_METADATA), copied
  to the events; keys beginning with ``chronicle.`` (any letter case) are the
  server's (INVALID_METADATA);
- ``Command.origin``, ``user_id``, ``correlation_id``, ``causation_id``: at
  most 200 printable characters (INVALID_FIELD), copied to the events; an
  aggregate id of 200 characters is taken; an origin beginning with
  ``reaction:`` (any letter case) is the server's (RESERVED_ORIGIN); one
  beginning or ending with a space is refused (INVALID_FIELD), as is a
  metadata key so padded (INVALID_METADATA);
- ``Command.timestamp`` is informational: events carry the server's time,
  and the events of a batch (of 100 commands, the most) share one;
- ``SubmitStream``: each answer names the command id as sent ("" for a
  request without a command), and ``CommandError.retry_after`` is set for
  a refusal worth retrying (ABORTED); a command stream (and a paged one)
  still open when its server stops ends UNAVAILABLE SHUTTING_DOWN, the answers it gave
  standing.

EventService
- ``ReadAggregate``: more than 100 ``event_types`` or a malformed ``origin``
  is INVALID_FILTER; forwards, ``from_version`` 1 reads as 0; the
  tombstone's type may be named;
- ``Subscribe`` with ``from_end`` ignores ``after_position``, even one
  beyond the end of the log.

ProjectionService
- ``GetDocument`` and ``ListDocuments`` with a ``min_position`` no log can
  reach (above 2^63 - 1) are POSITION_BEYOND_END, as ``ReadAggregate`` is
  (they were INVALID_POSITION);
- ``ListDocuments``' ``page_size`` 0 means 100; ``ListParkedEvents``'
  ``page_size`` is at most 1000 (PAGE_SIZE_TOO_LARGE); a malformed
  projection name or key is INVALID_PROJECTION / INVALID_KEY.

ReactionService
- ``ListParkedCommands``: oldest first, ``parked_at_us`` in microseconds
  since the Unix epoch.

ClusterService
- ``WatchTopology`` ends with UNAVAILABLE, reason SHUTTING_DOWN, when its
  member stops.

SubscriptionGroupService
- a consumer's name starts with a letter or digit (BAD_CONSUMER_NAME), of
  1 to 100 characters;
- ``ListGroups`` lists the groups by name;
- ``ListParked``'s ``after_position`` past 2^63-1 is INVALID_POSITION;
- an event nacked without a reason is parked with the reason "NACKED".

Where a test waits, it waits for an outcome (``eventually``); the bounds
only make a broken build fail rather than hang."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, timestamp_pb2

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import cluster_service_pb2 as cluster
from chronicle.v1 import cluster_service_pb2_grpc as cluster_grpc
from chronicle.v1 import command_pb2, event_pb2
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import projection_service_pb2 as pj
from chronicle.v1 import reaction_service_pb2 as rx
from chronicle.v1 import subscription_group_service_pb2 as groups
from chronicle.v1 import subscription_group_service_pb2_grpc as groups_grpc
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.errors import ConcurrencyConflict
from service.plugins.registry import Registry
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from service.store.records import NewEvent, RecordedEvent
from tests.support import plugins
from tests.support.grpc_client import (
    Client,
    ErrorDetails,
    asking_again_if_lost,
    command,
    connect,
    details_of,
    running_server,
    with_jwt_auth,
)
from tests.support.security import JwtIssuer, bearer
from tests.support.transfer import exported, imported
from tests.support.waiting import eventually

BALANCES = "bank.balances_by_owner"
TOMBSTONE = "chronicle.v1.AggregateDeleted"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """A client of a server on the memory store; anonymous callers administer."""
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, connected):
        yield connected


async def refusal(call: Any) -> ErrorDetails:
    """The details of a call (or a stream's first read) that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return details_of(raised.value)


def said(details: ErrorDetails) -> tuple[grpc.StatusCode, str, list[str]]:
    return details.code, details.reason, details.field_violations


async def submitted_together(client: Client, commands: Sequence[command_pb2.Command]) -> list[cs.SubmitStreamResponse]:
    """``commands`` over one SubmitStream (each must be accepted)."""
    answers = [a async for a in client.commands.SubmitStream(iter(cs.SubmitRequest(command=c) for c in commands))]
    assert all(a.HasField("ok") for a in answers), [a.error for a in answers if a.HasField("error")]
    return answers


async def open_accounts(client: Client, ids: Sequence[str], owner: str = "ann") -> int:
    """Open an account for each id; the log position of the last one."""
    answers = await submitted_together(client, [command(i, bank.OpenAccount(owner=owner)) for i in ids])
    return int(answers[-1].ok.events[-1].position)


async def read(client: Client, aggregate_id: str, **fields: Any) -> list[event_pb2.Event]:
    request = ev.ReadAggregateRequest(aggregate_id=aggregate_id, **fields)
    return [e async for e in client.events.ReadAggregate(request, timeout=10)]


async def audit(client: Client, **fields: Any) -> list[admin.AuditEntry]:
    response = await client.admin.QueryAudit(admin.QueryAuditRequest(**fields), timeout=10)
    return list(response.entries)


# -- AdminService -------------------------------------------------------------------------


async def test_query_audit_takes_the_100_newest_unless_told_and_at_most_1000(client: Client) -> None:
    await open_accounts(client, [f"acc-{n:03}" for n in range(105)])
    everything = await audit(client, limit=1000)
    assert len(everything) == 105
    times = [e.time.ToMicroseconds() for e in everything]
    assert times == sorted(times, reverse=True)  # newest first
    assert await audit(client) == everything[:100]  # 0 means 100: the newest
    assert await audit(client, limit=3) == everything[:3]
    assert said(await refusal(client.admin.QueryAudit(admin.QueryAuditRequest(limit=1001)))) == (
        INVALID,
        "LIMIT_TOO_LARGE",
        ["limit"],
    )


async def test_query_audit_since_is_inclusive_and_until_exclusive(client: Client) -> None:
    await open_accounts(client, [f"acc-{n}" for n in range(9)])
    everything = await audit(client)
    moment = everything[4].time
    at = moment.ToMicroseconds()
    since = await audit(client, since=moment)
    until = await audit(client, until=moment)
    assert since == [e for e in everything if e.time.ToMicroseconds() >= at]
    assert until == [e for e in everything if e.time.ToMicroseconds() < at]
    assert everything[4] in since and everything[4] not in until


async def test_query_audit_finds_a_command_by_the_id_it_was_sent_with_in_any_uuid_form(client: Client) -> None:
    """Command ids are UUIDs in any RFC 4122 form, compared as UUIDs; the
    audit kept a command that reached its handler under the canonical form
    only, so a client that filtered by the id it had sent found nothing."""
    accepted = command("acc-1", bank.OpenAccount(owner="ann"), command_id=str(uuid.uuid4()).upper())
    await client.submit(accepted)
    overdrawn = command("acc-1", bank.Withdraw(amount=5), command_id=str(uuid.uuid4()).upper())
    assert (await refusal(client.submit(overdrawn))).reason == "INSUFFICIENT_FUNDS"
    unknown = command("acc-1", bank.Deposit(amount=1), command_id="{" + str(uuid.uuid4()).upper() + "}")
    unknown.payload.CopyFrom(any_pb2.Any(type_url="type.googleapis.com/nobody.v1.Knows"))
    assert (await refusal(client.submit(unknown))).reason == "UNKNOWN_COMMAND_TYPE"
    for sent, reason, reached_its_handler in (
        (accepted, "", True),
        (overdrawn, "INSUFFICIENT_FUNDS", True),
        (unknown, "UNKNOWN_COMMAND_TYPE", False),
    ):
        canonical = str(uuid.UUID(sent.command_id))
        found = await audit(client, command_id=sent.command_id)
        assert [(e.command_id, e.reason) for e in found] == [(canonical, reason)], sent.command_id
        assert await audit(client, command_id=canonical) == found
        (entry,) = found
        assert (entry.peer == "") == reached_its_handler, entry.peer


async def test_an_archive_rule_takes_100_by_default_in_id_order_and_never_a_deleted_aggregate(client: Client) -> None:
    await open_accounts(client, [f"acc-{n:03}" for n in range(102)])
    await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-000"), timeout=10)
    (header, *rest) = await exported(client, rule=admin.ArchiveRule(aggregate_type="Account"))
    assert list(header.header.aggregate_ids) == [f"acc-{n:03}" for n in range(1, 101)]
    assert {r.event.event.aggregate_id for r in rest if r.HasField("event")} == set(header.header.aggregate_ids)
    for rule, include_commands, expected in (
        (admin.ArchiveRule(aggregate_type="Account", limit=1001), False, ("LIMIT_TOO_LARGE", ["rule.limit"])),
        (admin.ArchiveRule(), False, ("INVALID_RULE", ["rule.aggregate_type"])),
        (
            admin.ArchiveRule(aggregate_type="Account", last_event_types=["a\nb"]),
            False,
            ("INVALID_RULE", ["rule.last_event_types[0]"]),
        ),
        (
            admin.ArchiveRule(aggregate_type="Account", untouched_since=timestamp_pb2.Timestamp(seconds=2**62)),
            False,
            ("INVALID_TIMESTAMP", ["rule.untouched_since"]),
        ),
        (admin.ArchiveRule(aggregate_type="Account"), True, ("INVALID_SELECTION", ["include_commands"])),
    ):
        details = await refusal(exported(client, rule=rule, include_commands=include_commands))
        assert said(details) == (INVALID, *expected), rule


async def test_a_tombstone_names_who_deleted_the_aggregate_why_and_where_it_was_archived(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    async with running_server(
        MemoryStore(),
        settings=with_jwt_auth(tmp_path, issuer),
    ) as (app, _):
        async with connect(app.address, interceptors=bearer(issuer.token("alice"))) as alice:
            await alice.submit(command("acc-1", bank.OpenAccount(owner="ann"), user_id=""))
        async with connect(app.address, interceptors=bearer(issuer.token("root"))) as root:
            too_long = admin.DeleteAggregateRequest(aggregate_id="acc-1", archive="a" * 1001)
            assert said(await refusal(root.admin.DeleteAggregate(too_long))) == (INVALID, "TEXT_TOO_LONG", ["archive"])
            archive = "archive-" + "a" * 992  # 1000 characters: taken
            before = time.time_ns() // 1000
            deleted = await root.admin.DeleteAggregate(
                admin.DeleteAggregateRequest(aggregate_id="acc-1", reason="closed", archive=archive), timeout=10
            )
    tombstone = event_pb2.AggregateDeleted()
    assert deleted.tombstone.payload.Unpack(tombstone)
    assert (tombstone.deleted_by, tombstone.reason, tombstone.archive) == ("root", "closed", archive)
    assert before <= tombstone.deleted_at.ToMicroseconds() <= time.time_ns() // 1000  # the server's clock


async def test_an_aggregate_written_before_encryption_was_on_cannot_be_forgotten() -> None:
    """Its events are in the clear, with no key to erase: NOT_ENCRYPTED,
    and they stay readable."""
    store = MemoryStore()
    async with running_server(store) as (_, plain):
        await plain.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    async with running_server(store, anonymous_admin=True, master_keys=f"k1:{new_master_key()}") as (_, client):
        forget = client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-1"), timeout=10)
        assert said(await refusal(forget))[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "NOT_ENCRYPTED")
        (event,) = await read(client, "acc-1")
    opened = bank.AccountOpened()
    assert not event.redacted and event.payload.Unpack(opened) and opened.owner == "ann"


async def test_an_import_counts_every_record_it_read_the_header_and_the_end_included() -> None:
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, source):
        await open_accounts(source, ["acc-1", "acc-2", "acc-3"])
        records = await exported(source)
    async with running_server(MemoryStore(), anonymous_admin=True) as (_, target):
        response = await imported(target, records)
    assert [r.WhichOneof("record") for r in records] == ["header", "event", "event", "event", "end"]
    assert (response.records, response.events_written) == (5, 3)


# -- CommandService -----------------------------------------------------------------------


async def test_command_metadata_is_bounded_as_documented_and_copied_to_the_events(client: Client) -> None:
    accepted: list[dict[str, str]] = [
        {f"k{n}": "v" for n in range(64)},
        {"k" * 128: "v"},
        {"k": "v" * 4096},
    ]
    for n, metadata in enumerate(accepted):
        response = await client.submit(command(f"acc-{n}", bank.OpenAccount(owner="ann"), metadata=metadata))
        assert dict(response.events[0].metadata) == metadata
    refused: list[tuple[dict[str, str], str]] = [
        ({f"k{n}": "v" for n in range(65)}, "command.metadata"),
        ({"k" * 129: "v"}, f"command.metadata[{'k' * 128!r}]"),
        ({"": "v"}, "command.metadata['']"),
        ({"a\tb": "v"}, "command.metadata['a\\tb']"),
        ({"k": "v" * 4097}, "command.metadata['k']"),
    ]
    for metadata, field in refused:
        details = await refusal(client.submit(command("acc-9", bank.OpenAccount(owner="ann"), metadata=metadata)))
        assert said(details) == (INVALID, "INVALID_METADATA", [field])
    assert await read(client, "acc-9") == []


async def test_every_metadata_key_under_the_chronicle_prefix_is_the_servers(client: Client) -> None:
    """Not only the two keys the server writes today (``chronicle.imported``,
    ``chronicle.reaction_hops``): a key it starts writing later must not be
    in events clients wrote, meaning something else. In any letter case."""
    # The refusal says what a client's key would forge, the key spelt in any case.
    why = {
        "chronicle.imported": "an import sets it",
        "chronicle.reaction_hops": "the server sets it on the commands reactions send",
        "chronicle.trace_id": "kept for keys it may write later",
        "Chronicle.Imported": "an import sets it",
        "CHRONICLE.REACTION_HOPS": "the server sets it on the commands reactions send",
    }
    for key, explained in why.items():
        details = await refusal(
            client.submit(command("acc-9", bank.OpenAccount(owner="ann"), metadata={"fine": "v", key: "x"}))
        )
        assert said(details) == (INVALID, "INVALID_METADATA", [f"command.metadata[{key!r}]"])
        assert "reserved" in details.message
        assert explained in details.message, (key, details.message)
    assert await read(client, "acc-9") == []
    # Padded to slip past the prefix, or only padded: refused as padded.
    for key in (" chronicle.reaction_hops", "tenant "):
        details = await refusal(client.submit(command("acc-9", bank.OpenAccount(owner="ann"), metadata={key: "x"})))
        assert said(details) == (INVALID, "INVALID_METADATA", [f"command.metadata[{key!r}]"])
        assert "must not begin or end with a space" in details.message
    assert await read(client, "acc-9") == []
    # Keys that only look alike stay the client's own.
    metadata = {"chronicle": "v", "chronicle_trace": "v", "app.chronicle.trace": "v"}
    response = await client.submit(command("acc-8", bank.OpenAccount(owner="ann"), metadata=metadata))
    assert dict(response.events[0].metadata) == metadata


TEXTS = ("origin", "user_id", "correlation_id", "causation_id")


async def test_a_commands_texts_are_at_most_200_printable_characters_and_copied_to_its_events(client: Client) -> None:
    fine = command("a" * 200, bank.OpenAccount(owner="ann"))
    for name in TEXTS:
        setattr(fine, name, name[0] * 200)
    (event,) = (await client.submit(fine)).events
    assert (event.aggregate_id, event.origin, event.user_id, event.correlation_id, event.causation_id) == (
        "a" * 200,
        "o" * 200,
        "u" * 200,
        "c" * 200,
        "c" * 200,
    )
    for name in TEXTS:
        too_long = command("acc-9", bank.OpenAccount(owner="ann"))
        setattr(too_long, name, "x" * 201)
        assert said(await refusal(client.submit(too_long))) == (INVALID, "INVALID_FIELD", [f"command.{name}"])
    assert await read(client, "acc-9") == []


async def test_a_reactions_origin_is_the_servers(client: Client) -> None:
    """A reaction's commands carry ``reaction:<name>``, and a reaction may
    rely on it (the bank's transfers take only account events their own
    commands caused): a client's command may not claim it, in any case."""
    for origin in ("reaction:bank.transfers", "Reaction:bank.transfers", "REACTION:", "reaction:anything"):
        claiming = command("acc-9", bank.OpenAccount(owner="ann"))
        claiming.origin = origin
        details = await refusal(client.submit(claiming))
        assert said(details) == (INVALID, "RESERVED_ORIGIN", ["command.origin"])
        assert "reserved" in details.message
    assert await read(client, "acc-9") == []
    # Padded to look like one in the audit and the console: refused as padded.
    for origin in (" reaction:bank.transfers", "web ", "  "):
        padded = command("acc-9", bank.OpenAccount(owner="ann"))
        padded.origin = origin
        details = await refusal(client.submit(padded))
        assert said(details) == (INVALID, "INVALID_FIELD", ["command.origin"])
        assert "must not begin or end with a space" in details.message
    assert await read(client, "acc-9") == []
    # Origins that only look alike stay the client's own.
    for n, origin in enumerate(("reaction", "reactions:x", "web reaction:x")):
        alike = command(f"acc-{n}", bank.OpenAccount(owner="ann"))
        alike.origin = origin
        assert (await client.submit(alike)).events[0].origin == origin


async def test_events_carry_the_servers_time_and_a_batchs_events_share_one(client: Client) -> None:
    """``Command.timestamp`` is informational; a batch of the most commands
    (100) is one decision, with one time."""
    stamped = command("acc-1", bank.OpenAccount(owner="ann"))
    stamped.timestamp.FromMicroseconds(978_307_200_000_000)  # the client's clock: 2001-01-01
    before = time.time_ns() // 1000
    (opened,) = (await client.submit(stamped)).events
    batch = [command("acc-1", bank.Deposit(amount=1)) for _ in range(100)]
    response = await client.commands.SubmitBatch(cs.SubmitBatchRequest(commands=batch), timeout=30)
    after = time.time_ns() // 1000
    assert before <= opened.timestamp.ToMicroseconds() <= after
    assert response.version == 101
    moments = {r.events[0].timestamp.ToMicroseconds() for r in response.results}
    assert len(moments) == 1 and before <= moments.pop() <= after


async def test_a_streams_answers_name_the_command_id_as_sent(client: Client) -> None:
    upper = command("acc-1", bank.OpenAccount(owner="ann"), command_id=str(uuid.uuid4()).upper())
    requests = [cs.SubmitRequest(command=upper), cs.SubmitRequest()]
    sent_as, without = [a async for a in client.commands.SubmitStream(iter(requests), timeout=10)]
    assert (sent_as.command_id, sent_as.WhichOneof("result")) == (upper.command_id, "ok")
    assert (without.command_id, without.WhichOneof("result"), without.error.reason) == ("", "error", "MISSING_COMMAND")


@pytest.mark.parametrize("method", ["SubmitStream", "SubmitStreamPages"])
async def test_a_command_stream_ends_unavailable_when_its_server_stops_and_its_answers_stand(method: str) -> None:
    store = MemoryStore()
    async with running_server(store) as (app, client):
        call = getattr(client.commands, method)(timeout=20)
        sent = cs.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann")))
        await call.write(sent if method == "SubmitStream" else cs.SubmitPage(requests=[sent]))
        answered = await call.read()
        (answer,) = [answered] if method == "SubmitStream" else answered.results
        assert answer.ok.version == 1
        await app.stop(grace=0.5, drain=0.0)  # the stream still open

        async def to_the_end() -> None:
            while await call.read() is not grpc.aio.EOF:
                pass

        ended = await refusal(to_the_end())
        assert (ended.code, ended.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
    head = await store.head("acc-1")
    assert head is not None and head.version == 1


class AlwaysConflicting(MemoryStore):
    """Every append that writes events loses a version race, as if another
    replica always wrote first."""

    async def append(
        self, aggregate_id: str, events: Sequence[NewEvent], expected_version: int, **kw: Any
    ) -> list[RecordedEvent]:
        if events:
            raise ConcurrencyConflict(aggregate_id, expected_version)
        return await super().append(aggregate_id, events, expected_version, **kw)


async def test_a_streamed_refusal_worth_retrying_says_after_how_long() -> None:
    async with running_server(AlwaysConflicting(), conflict_retries=1) as (_, client):
        sent = cs.SubmitRequest(command=command("acc-1", bank.OpenAccount(owner="ann")))
        (answer,) = [a async for a in client.commands.SubmitStream(iter([sent]), timeout=10)]
    assert (answer.error.code, answer.error.reason) == (grpc.StatusCode.ABORTED.value[0], "CONCURRENCY_CONFLICT")
    assert answer.error.HasField("retry_after")
    assert answer.error.retry_after.ToNanoseconds() > 0


# -- EventService -------------------------------------------------------------------------


async def test_read_aggregate_checks_its_filter_and_reads_from_version_1_as_from_0(client: Client) -> None:
    await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
    await client.submit(command("acc-1", bank.Deposit(amount=5)))
    deposits = ["bank.v1.MoneyDeposited"]
    assert [e.version for e in await read(client, "acc-1", event_types=deposits * 100)] == [2]
    for fields, field in (({"event_types": deposits * 101}, "event_types"), ({"origin": "a\nb"}, "origin")):
        assert said(await refusal(read(client, "acc-1", **fields))) == (INVALID, "INVALID_FILTER", [field])
    assert await read(client, "acc-1", from_version=1) == await read(client, "acc-1", from_version=0)
    assert [e.version for e in await read(client, "acc-1", from_version=1)] == [1, 2]
    # The tombstone's type may be named, as no plugin declares it.
    await client.admin.DeleteAggregate(admin.DeleteAggregateRequest(aggregate_id="acc-1"), timeout=10)
    (tombstone,) = await read(client, "acc-1", event_types=[TOMBSTONE])
    assert (tombstone.version, tombstone.deleted, tombstone.event_type) == (3, True, TOMBSTONE)


async def test_subscribe_from_the_end_ignores_after_position_even_beyond_the_end(client: Client) -> None:
    head = await open_accounts(client, ["acc-1"])
    call = client.events.Subscribe(ev.SubscribeRequest(from_end=True, after_position=2**64 - 1), timeout=20)
    try:
        first = await call.read()
        assert first.WhichOneof("kind") == "caught_up" and first.caught_up.position == head
        await client.submit(command("acc-1", bank.Deposit(amount=1)))
        while (live := await call.read()).WhichOneof("kind") != "event":
            pass
        assert (live.event.aggregate_id, live.event.version) == ("acc-1", 2)
    finally:
        call.cancel()


# -- ProjectionService --------------------------------------------------------------------


@pytest.mark.parametrize("position", [2**63, 2**64 - 1])
async def test_a_projection_read_waiting_for_a_position_no_log_reaches_is_position_beyond_end(
    client: Client, position: int
) -> None:
    """As ReadAggregate's ``min_position`` is; these were INVALID_POSITION."""
    await open_accounts(client, ["acc-1"])
    beyond = (INVALID, "POSITION_BEYOND_END")
    assert said(await refusal(read(client, "acc-1", min_position=position)))[:2] == beyond
    for call in (
        client.projections.GetDocument(
            pj.GetDocumentRequest(projection=BALANCES, key="owner:ann", min_position=position), timeout=10
        ),
        client.projections.ListDocuments(
            pj.ListDocumentsRequest(projection=BALANCES, min_position=position), timeout=10
        ),
    ):
        assert said(await refusal(call))[:2] == beyond


async def test_documents_come_100_to_a_page_by_default_and_parked_events_at_most_1000(client: Client) -> None:
    # Each owner's document and each account's: 52 and 50, 102 in all.
    await open_accounts(client, [f"acc-{n:02}" for n in range(51)], owner="ann")
    head = await open_accounts(client, [f"other-{n:02}" for n in range(49)], owner="bob")
    page = await client.projections.ListDocuments(
        pj.ListDocumentsRequest(projection=BALANCES, min_position=head), timeout=20
    )
    assert len(page.documents) == 100 and page.next_page_token
    rest = await client.projections.ListDocuments(
        pj.ListDocumentsRequest(projection=BALANCES, page_token=page.next_page_token), timeout=20
    )
    assert len(rest.documents) == 2 and not rest.next_page_token
    await client.projections.ListParkedEvents(pj.ListParkedEventsRequest(projection=BALANCES, page_size=1000))
    too_many = pj.ListParkedEventsRequest(projection=BALANCES, page_size=1001)
    assert said(await refusal(client.projections.ListParkedEvents(too_many))) == (
        INVALID,
        "PAGE_SIZE_TOO_LARGE",
        ["page_size"],
    )


# -- ReactionService ----------------------------------------------------------------------


async def test_parked_commands_are_listed_oldest_first() -> None:
    registry = Registry([bank_account.plugin, plugins.gates])
    async with running_server(MemoryStore(), registry=registry, anonymous_admin=True, poll_seconds=0.05) as (
        _,
        client,
    ):
        await client.submit(command("source", box.ArchiveBox()))  # the source gate lets names through
        before = time.time_ns() // 1000
        for name in ("ann", "bob", "cy"):
            await client.submit(command("source", box.RenameBox(name=name)))  # the gated one is shut: parked

        async def parked() -> list[rx.ParkedCommand]:
            response = await client.reactions.ListParkedCommands(
                rx.ListParkedCommandsRequest(reaction="gates.relay"), timeout=10
            )
            return list(response.commands)

        await eventually(lambda: _count(parked(), 3), what="three commands parked")
        after = time.time_ns() // 1000
        listed = await parked()
    assert [box.RenameBox.FromString(p.command.value).name for p in listed] == ["ann", "bob", "cy"]
    assert [p.position for p in listed] == sorted(p.position for p in listed)
    moments = [p.parked_at_us for p in listed]
    assert moments == sorted(moments) and before <= moments[0] and moments[-1] <= after


async def _count(items: Any, expected: int) -> bool:
    return len(await items) == expected


# -- ClusterService -----------------------------------------------------------------------


async def test_a_topology_watch_ends_with_shutting_down_when_its_member_stops() -> None:
    async with running_server(MemoryStore()) as (app, client):
        watch = cluster_grpc.ClusterServiceStub(client.channel).WatchTopology(cluster.WatchTopologyRequest())
        assert (await watch.read()).topology.answered_by == app.leases.member_id
        await app.stop(grace=5.0, drain=0.0)

        async def to_the_end() -> None:
            while True:
                await watch.read()

        details = await refusal(to_the_end())
    assert (details.code, details.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")


# -- SubscriptionGroupService -------------------------------------------------------------


async def joined(stub: groups_grpc.SubscriptionGroupServiceStub, consumer: str) -> groups.Joined:
    """The first answer to a consumer of group "g" named ``consumer``."""

    async def once() -> groups.Joined:
        call = stub.Consume(timeout=10)
        try:
            await call.write(groups.ConsumeRequest(start=groups.ConsumeStart(group="g", consumer=consumer)))
            response: groups.ConsumeResponse = await call.read()
            return response.joined
        finally:
            call.cancel()

    return await asking_again_if_lost(once)


async def test_a_consumer_name_starts_with_a_letter_or_digit(client: Client) -> None:
    stub = groups_grpc.SubscriptionGroupServiceStub(client.channel)
    await stub.CreateGroup(groups.CreateGroupRequest(name="g"), timeout=10)
    for name in ("w", "9.worker_1-b", "w" * 100):
        assert (await joined(stub, name)).consumer.startswith(name + "#")
    for name in ("-w", ".w", "_w", "", "w" * 101, "w w"):
        details = await refusal(joined(stub, name))
        assert said(details) == (INVALID, "BAD_CONSUMER_NAME", ["start.consumer"]), name


async def test_groups_are_listed_by_name(client: Client) -> None:
    stub = groups_grpc.SubscriptionGroupServiceStub(client.channel)
    for name in ("gamma", "alpha", "beta"):
        await stub.CreateGroup(groups.CreateGroupRequest(name=name), timeout=10)
    listed = await stub.ListGroups(groups.ListGroupsRequest(), timeout=10)
    assert [g.name for g in listed.groups] == ["alpha", "beta", "gamma"]


async def test_a_document_read_refuses_a_malformed_projection_name_or_key(client: Client) -> None:
    for projection, key, reason, field in (
        ("", "owner:ann", "INVALID_PROJECTION", "projection"),
        ("bad\x00name", "owner:ann", "INVALID_PROJECTION", "projection"),
        (BALANCES, "", "INVALID_KEY", "key"),
        (BALANCES, "k" * 201, "INVALID_KEY", "key"),
        (BALANCES, "owner:\x07", "INVALID_KEY", "key"),
    ):
        call = client.projections.GetDocument(pj.GetDocumentRequest(projection=projection, key=key), timeout=10)
        assert said(await refusal(call)) == (INVALID, reason, [field]), (projection, key)


async def test_parked_events_of_a_group_after_a_position_past_2_63_are_invalid_position(client: Client) -> None:
    stub = groups_grpc.SubscriptionGroupServiceStub(client.channel)
    await stub.CreateGroup(groups.CreateGroupRequest(name="g"), timeout=10)
    await stub.ListParked(groups.ListParkedRequest(group="g", after_position=2**63 - 1), timeout=10)
    call = stub.ListParked(groups.ListParkedRequest(group="g", after_position=2**63), timeout=10)
    assert said(await refusal(call)) == (INVALID, "INVALID_POSITION", ["after_position"])


async def test_an_event_nacked_without_a_reason_is_parked_as_nacked(client: Client) -> None:
    stub = groups_grpc.SubscriptionGroupServiceStub(client.channel)
    await stub.CreateGroup(groups.CreateGroupRequest(name="g", max_delivery_attempts=1), timeout=10)
    await open_accounts(client, ["acc-1"])
    call = stub.Consume(timeout=10)
    try:
        await call.write(groups.ConsumeRequest(start=groups.ConsumeStart(group="g", consumer="w")))
        while not (response := await call.read()).HasField("deliveries"):
            pass
        (delivery,) = response.deliveries.deliveries
        await call.write(groups.ConsumeRequest(nack=groups.Nack(event_ids=[delivery.event.event_id])))

        async def parked() -> list[groups.GroupParkedEvent]:
            listed = await stub.ListParked(groups.ListParkedRequest(group="g"), timeout=10)
            return list(listed.parked)

        await eventually(lambda: _nonempty(parked()), what="the nacked event parked")
    finally:
        call.cancel()
    (event,) = await parked()
    assert (event.event_id, event.reason) == (delivery.event.event_id, "NACKED")


async def _nonempty(listing: Awaitable[list[Any]]) -> bool:
    return bool(await listing)
