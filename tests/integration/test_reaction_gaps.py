"""Reactions (docs/plugins.md, "Process managers: reactions";
docs/observability.md), where earlier tests left a claim untested or held
it only loosely, over real sockets:

- ``chronicle_reaction_commands_total{outcome="replayed"}``: a reaction whose
  server died between sending a command and committing its checkpoint (the
  commit fails, then the server stops) reacts to the event again after a
  restart; its command, under the same derived id, is answered from its
  command record: counted ``replayed`` (and not ``accepted``), shown in
  ``ReactionStatus.replayed``, and run once (one event in the store);
- a reaction's commands run as ``reaction:<name>``, on behalf of the
  event's user, and no per-principal quota holds them back: they go
  through while that user's principal has every RPC slot its quota allows
  (``--max-rpcs-per-principal``), and are audited as the reaction's;
- ``REACTION_RUNS_ELSEWHERE``: with two replicas on PostgreSQL, the one
  that does not run a reaction refuses to replay or dismiss its parked
  command (FAILED_PRECONDITION, ErrorInfo reason, domain and metadata:
  the reaction and the address of the replica that runs it), audits the
  refusal and changes nothing; the runner then replays it.

Where a test waits, it waits for an outcome (``eventually``)."""

from __future__ import annotations

from collections.abc import Awaitable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import command_service_pb2 as cs
from chronicle.v1 import event_service_pb2 as ev
from chronicle.v1 import reaction_service_pb2 as reaction_pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.cluster.leases import fair_shares
from service.errors import StoreUnavailable
from service.plugins.middleware import CommandCall
from service.plugins.reactions import command_id_for
from service.plugins.registry import Registry
from service.store.leasing import Fencing
from service.store.memory import MemoryStore
from service.store.records import DocumentWrite, ParkedEvent, RecordedEvent
from service.store.sqlite import SqliteStore
from tests.support import plugins
from tests.support.cluster import replica
from tests.support.grpc_client import TEST_SETTINGS, Client, command, connect, details_of, running_server, with_jwt_auth
from tests.support.metrics import sample, scrape
from tests.support.security import JwtIssuer, bearer
from tests.support.waiting import eventually

RELAY = "gates.relay"  # tests/support/plugins.py: "source"'s names sent on to "gated"
REACTION_COMMANDS = "chronicle_reaction_commands_total"
REGISTRY = Registry([plugins.gates])


def names(events: Sequence[RecordedEvent]) -> list[str]:
    return [e.event_type for e in events]


# -- a command sent again after a crash: "replayed" -------------------------------------


class DiesBeforeTheRelayCommits(SqliteStore):
    """A SQLite store whose server never records the relay's progress once
    the relayed command ran: every commit of the relay's checkpoint after
    that fails, as if the process died between the command and the commit."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
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
        if name == RELAY and "box.v1.BoxRenamed" in names(await self.read_aggregate("gated")):
            self.lost += 1
            raise StoreUnavailable("the server died before the reaction's checkpoint was committed")
        await super().commit_projection(
            name,
            expected_position=expected_position,
            new_position=new_position,
            writes=writes,
            fencing=fencing,
            parked=parked,
        )


async def test_a_reaction_s_command_sent_again_after_a_crash_is_counted_replayed_and_runs_once(
    tmp_path: Path,
) -> None:
    path = tmp_path / "chronicle.db"
    dying = DiesBeforeTheRelayCommits(path)
    settings = replace(TEST_SETTINGS, metrics_listen="127.0.0.1:0", poll_seconds=0.05)
    async with running_server(dying, settings=settings, registry=REGISTRY) as (first, client):
        for gate in ("gated", "source"):
            await client.submit(command(gate, box.ArchiveBox()))  # open
        await client.submit(command("source", box.RenameBox(name="ann")))
        await eventually(lambda: dying.lost > 0, what="the relayed command sent, and the commit after it lost")
        sent_first = await scrape(first)
        checkpoint = await dying.projection_position(RELAY)
        (_, cause) = await dying.read_aggregate("source")
    assert checkpoint < cause.position  # the event is still to be reacted to
    assert sample(sent_first, REACTION_COMMANDS, reaction=RELAY, outcome="accepted") == 1

    # The server starts again over the same file: the reaction reacts to the
    # event again, and its command is answered from its record.
    store = SqliteStore(path)
    async with running_server(store, settings=settings, registry=REGISTRY) as (second, client):

        async def caught_up() -> bool:
            status = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name=RELAY))
            return bool(status.position > cause.position)

        await eventually(caught_up, what="the restarted reaction past the event")
        text = await scrape(second)
        status = await client.reactions.GetReaction(reaction_pb.GetReactionRequest(name=RELAY))
        gated = await store.read_aggregate("gated")
    counted = {o: sample(text, REACTION_COMMANDS, reaction=RELAY, outcome=o) for o in ("accepted", "replayed")}
    assert counted == {"accepted": 0, "replayed": 1}
    assert sample(text, REACTION_COMMANDS, reaction=RELAY, outcome="refused") == 0
    assert (status.accepted, status.replayed, status.refused, status.parked) == (
        0,
        1,
        0,
        0,
    )  # as the metric: replayed, not accepted
    # Run once: one BoxRenamed, under the id derived from the event.
    assert names(gated) == ["box.v1.BoxArchived", "box.v1.BoxRenamed"]
    assert gated[1].command_id == command_id_for(f"{RELAY}/{cause.event_id}", 0)
    assert (gated[1].causation_id, gated[1].origin) == (cause.event_id, f"reaction:{RELAY}")


# -- a reaction's commands and the per-principal quotas -----------------------------------

GATEKEEPERS = """
[roles.gatekeeper]
submit = ["box.v1.ArchiveBox", "box.v1.RenameBox"]
read = ["Gate"]

[roles.operator]
read = ["*"]
admin = true

[principals."alice"]
roles = ["gatekeeper"]

[principals."root"]
roles = ["operator"]
"""


async def test_a_reaction_s_commands_run_as_the_reaction_and_no_principal_s_quota_holds_them_back(
    tmp_path: Path,
) -> None:
    issuer = JwtIssuer()
    settings = replace(
        with_jwt_auth(tmp_path, issuer, GATEKEEPERS),
        max_rpcs_per_principal=1,
        poll_seconds=0.05,
    )
    alice_token = issuer.token("alice")
    async with (
        running_server(MemoryStore(), settings=settings, registry=REGISTRY) as (app, _),
        connect(app.address, interceptors=bearer(alice_token)) as alice,
        connect(app.address) as plain,
    ):
        for gate in ("gated", "source"):
            await alice.submit(command(gate, box.ArchiveBox(), user_id=""))
        # Alice's one RPC slot, held by a stream she keeps open; the event the
        # reaction reacts to comes through it, on her behalf. (Her token as
        # call metadata, not through interceptors: see tests.support.security.bearer.)
        stream = plain.commands.SubmitStream(metadata=(("authorization", f"Bearer {alice_token}"),))
        trigger = command("source", box.RenameBox(name="ann"), user_id="")
        await stream.write(cs.SubmitRequest(command=trigger))
        answer = await stream.read()
        assert isinstance(answer, cs.SubmitStreamResponse) and answer.ok.version == 2
        with pytest.raises(grpc.aio.AioRpcError) as over:
            await alice.events.GetAggregate(ev.GetAggregateRequest(aggregate_id="source"))
        assert details_of(over.value).reason == "PRINCIPAL_TOO_MANY_REQUESTS"  # her quota is spent

        async def relayed() -> bool:
            return "box.v1.BoxRenamed" in names(await app.store.events.read_aggregate("gated"))

        await eventually(relayed, what="the reaction's command accepted while alice's quota is spent")
        assert app.gate is not None and app.gate.rpcs_of == {"alice": 1}  # the stream, and nothing of the reaction's
        await stream.done_writing()
        assert await stream.read() is grpc.aio.EOF
        assert await stream.code() == grpc.StatusCode.OK
        (_, relayed_event) = await app.store.events.read_aggregate("gated")
        async with connect(app.address, interceptors=bearer(issuer.token("root"))) as root:
            audited = await root.admin.QueryAudit(admin.QueryAuditRequest(aggregate_id="gated"))
    assert (relayed_event.user_id, relayed_event.origin) == ("alice", f"reaction:{RELAY}")
    (entry,) = [e for e in audited.entries if e.command_id == relayed_event.command_id]
    assert (entry.principal, entry.user_id, entry.outcome) == (
        f"reaction:{RELAY}",
        "alice",
        admin.AUDIT_OUTCOME_ACCEPTED,
    )


# -- REACTION_RUNS_ELSEWHERE -----------------------------------------------------------


def error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    """The ErrorInfo the server sent with ``error`` (details_of leaves out its domain)."""
    status = rpc_status.from_call(error)
    assert status is not None
    infos = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            infos.append(info)
    (only,) = infos
    return only


async def refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    return raised.value


def one_runs_the_relay(apps: Sequence[Application]) -> bool:
    """The relay's lease where it stays: held by the replica whose fair
    share it is, and by no other."""
    shares = fair_shares([app.leases.member_id for app in apps], 1)
    held = [len(app.leases.held("projections")) for app in apps]
    runners = [app for app in apps if app.reactions.runners[RELAY].holds_lease]
    return held == [shares[app.leases.member_id] for app in apps] and len(runners) == 1


async def parked_commands(client: Client) -> list[reaction_pb.ParkedCommand]:
    listed = await client.reactions.ListParkedCommands(reaction_pb.ListParkedCommandsRequest(reaction=RELAY))
    return list(listed.commands)


@pytest.mark.postgres
async def test_the_replica_that_does_not_run_a_reaction_refuses_to_settle_its_parked_command_and_changes_nothing(
    postgres_url: str,
) -> None:
    async with (
        replica(postgres_url, registry=REGISTRY, anonymous_admin=True) as (a, to_a),
        replica(postgres_url, registry=REGISTRY, anonymous_admin=True) as (b, to_b),
    ):
        await eventually(lambda: one_runs_the_relay([a, b]), what="one replica running the relay")
        ((runner, to_runner),) = [
            (app, c) for app, c in ((a, to_a), (b, to_b)) if app.reactions.runners[RELAY].holds_lease
        ]
        to_other = to_b if runner is a else to_a
        # A parked command: the relay's, refused while "gated" was shut.
        await to_other.submit(command("source", box.ArchiveBox()))
        await to_other.submit(command("source", box.RenameBox(name="ann")))

        async def parked() -> bool:
            return len(await parked_commands(to_other)) == 1

        await eventually(parked, what="the relayed command parked")
        (before,) = await parked_commands(to_other)
        assert before.reason == "GATE_SHUT"
        await to_other.submit(command("gated", box.ArchiveBox()))  # open: a replay would now be accepted
        replay = reaction_pb.ReplayParkedCommandRequest(reaction=RELAY, command_id=before.command_id)
        dismiss = reaction_pb.DismissParkedCommandRequest(reaction=RELAY, command_id=before.command_id)

        async def told_who_runs_it() -> bool:
            info = error_info(await refusal(to_other.reactions.ReplayParkedCommand(replay)))
            assert info.reason == "REACTION_RUNS_ELSEWHERE"
            # "" (or a holder since replaced) until its heartbeat sees the runner.
            return bool(info.metadata["runner"] == runner.address)

        await eventually(told_who_runs_it, what="the other replica knowing who runs the relay")
        refusals = [
            await refusal(to_other.reactions.ReplayParkedCommand(replay)),
            await refusal(to_other.reactions.DismissParkedCommand(dismiss)),
        ]
        # Nothing changed: still parked as it was, nothing sent to "gated".
        assert await parked_commands(to_runner) == [before]
        assert names(await runner.store.events.read_aggregate("gated")) == ["box.v1.BoxArchived"]
        replay_id = command_id_for(f"{before.command_id}/replay", 0)
        assert await runner.store.events.find_command(replay_id) is None
        audited = await to_other.admin.QueryAudit(admin.QueryAuditRequest(limit=1000))
        # The runner replays it: accepted, under the first replay's id.
        replayed = await to_runner.reactions.ReplayParkedCommand(replay)
        assert await parked_commands(to_other) == []
        gated = await runner.store.events.read_aggregate("gated")
    for refused in refusals:
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        info = error_info(refused)
        assert (info.reason, info.domain) == ("REACTION_RUNS_ELSEWHERE", "chronicle")
        assert dict(info.metadata) == {"reaction": RELAY, "runner": runner.address}
        assert runner.address in (refused.details() or "")
    # Each refusal audited as the administrator's action it refused (and none done).
    actions = {
        (e.command_type, e.outcome, e.reason)
        for e in audited.entries
        if e.command_type.startswith("chronicle.v1.ReactionService/")
    }
    assert actions == {
        (f"chronicle.v1.ReactionService/{rpc}", admin.AUDIT_OUTCOME_REFUSED, "REACTION_RUNS_ELSEWHERE")
        for rpc in ("ReplayParkedCommand", "DismissParkedCommand")
    }
    assert (replayed.accepted, replayed.command_id) == (True, replay_id)
    assert names(gated) == ["box.v1.BoxArchived", "box.v1.BoxRenamed"]
    assert gated[1].command_id == replay_id


async def test_middleware_sees_a_reaction_s_command_sent_by_the_reaction() -> None:
    """The reaction's commands pass plugin middleware as ``reaction:<name>``
    (the principal the audit records), on behalf of the event's user; not as
    an anonymous caller."""
    plugin, quarantine = plugins.quarantine_plugin()
    registry = Registry([plugins.gates, plugin])
    async with running_server(MemoryStore(), registry=registry, poll_seconds=0.05) as (_, client):
        for gate in ("gated", "source"):
            await client.submit(command(gate, box.ArchiveBox(), user_id="ann"))
        await client.submit(command("source", box.RenameBox(name="bo"), user_id="ann"))

        def relayed() -> list[CommandCall]:
            return [call for call in quarantine.seen if call.origin.startswith("reaction:")]

        await eventually(lambda: bool(relayed()), what="the reaction's command through the middleware")
    (call,) = relayed()
    assert call.aggregate_id == "gated"
    assert call.principal.name == f"reaction:{RELAY}"
    assert call.principal.authenticated
    assert (call.user_id, call.origin) == ("ann", f"reaction:{RELAY}")
