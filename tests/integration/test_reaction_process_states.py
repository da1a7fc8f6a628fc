"""A reaction's process states read and dropped through a real server, over
a real socket, with the gRPC API and the CLI (docs/plugins.md, "Process
managers"): GetProcessState and ListProcessStates (admin, audited, the
state as JSON through the plugin's types, as stored when the reaction no
longer knows its type; NOT_FOUND with a reason for an unknown reaction or
key; not listable under encryption at rest), and DropProcessState of
several keys at once, all or none. The plugin is
``test_reaction_state_type_change.shifting``: ``shifting.steps`` keeps a
state per Feed box (its name, in a ``box.Box`` in version 1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin_pb
from chronicle.v1 import reaction_service_pb2 as pb
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.app import Application
from service.plugins import Plugin
from service.plugins.registry import Registry
from service.store.encryption import new_master_key
from service.store.sqlite import SqliteStore
from tests.integration.test_reaction_state_type_change import STEPS, caught_up, shifting
from tests.support.grpc_client import Client, command, details_of, running_server
from tests.support.processes import cli
from tests.support.security import write


@asynccontextmanager
async def serving(
    path: Path, plugin: Plugin, *, admin: bool = True, master_key_file: str = ""
) -> AsyncIterator[tuple[Application, Client]]:
    store = SqliteStore(path)
    await store.open()
    async with running_server(
        store, registry=Registry([plugin]), anonymous_admin=admin, poll_seconds=0.05, master_key_file=master_key_file
    ) as running:
        yield running


async def feeds(client: Client, *names: str) -> None:
    """Version 1 notes each name for its feed ("feed-<name>"); their processes wait."""
    for name in names:
        await client.submit(command(f"feed-{name}", box.CreateBox(name=name)))
    await caught_up(client)


async def refusal(call: object) -> tuple[grpc.StatusCode, str, dict[str, str]]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    details = details_of(raised.value)
    return details.code, details.reason, dict(details.metadata)


async def state_of(client: Client, key: str) -> pb.GetProcessStateResponse:
    found: pb.GetProcessStateResponse = await client.reactions.GetProcessState(
        pb.GetProcessStateRequest(reaction=STEPS, state_key=key)
    )
    return found


async def listed(client: Client, prefix: str = "", page_size: int = 0) -> list[list[str]]:
    """The keys of each page of the states whose key starts with ``prefix``."""
    pages, token = [], ""
    while True:
        page = await client.reactions.ListProcessStates(
            pb.ListProcessStatesRequest(reaction=STEPS, key_prefix=prefix, page_size=page_size, page_token=token)
        )
        pages.append([state.state_key for state in page.states])
        token = page.next_page_token
        if not token:
            return pages


async def test_a_process_state_is_shown_as_json_through_the_plugin_s_types_and_its_read_audited(
    tmp_path: Path,
) -> None:
    async with serving(tmp_path / "events.db", shifting(1)) as (app, client):
        await feeds(client, "ann", "bob", "cy")
        found = await state_of(client, "feed-ann")
        assert (found.state.state_key, found.state.state_type, json.loads(found.state.state_json)) == (
            "feed-ann",
            "box.v1.Box",
            {"name": "ann"},
        )
        assert box.Box.FromString(found.state.state.value).name == "ann"
        assert list(found.state.subjects) == ["feed-ann"]
        assert found.position == (await client.reactions.GetReaction(pb.GetReactionRequest(name=STEPS))).position

        assert await listed(client) == [["feed-ann", "feed-bob", "feed-cy"]]
        assert await listed(client, page_size=2) == [["feed-ann", "feed-bob"], ["feed-cy"]]
        assert await listed(client, prefix="feed-b") == [["feed-bob"]]

        bob = (await state_of(client, "feed-bob")).state
        assert bob.started.ToMicroseconds() > 0 and bob.updated.ToMicroseconds() >= bob.started.ToMicroseconds()
        shown = await asyncio.to_thread(cli, "reaction", STEPS, "--state", "feed-bob", server=app.address)
        assert json.loads(shown.stdout) == {
            "reaction": STEPS,
            "position": found.position,
            "state_key": "feed-bob",
            "state_type": "box.v1.Box",
            "state": {"name": "bob"},
            "subjects": ["feed-bob"],
            "deadlines": [],  # none pending
            "started": bob.started.ToJsonString(),  # its first and last events' commit times
            "updated": bob.updated.ToJsonString(),
        }
        every = await asyncio.to_thread(cli, "reaction", STEPS, "--states", "--prefix", "feed-", server=app.address)
        assert [json.loads(line)["state"] for line in every.stdout.splitlines()] == [
            {"name": "ann"},
            {"name": "bob"},
            {"name": "cy"},
        ]

        # An unknown key or reaction is NOT_FOUND with its reason; a bad key or prefix INVALID_ARGUMENT.
        assert await refusal(state_of(client, "feed-zed")) == (
            grpc.StatusCode.NOT_FOUND,
            "PROCESS_STATE_NOT_FOUND",
            {"reaction": STEPS, "state_key": "feed-zed"},
        )
        unknown = client.reactions.GetProcessState(pb.GetProcessStateRequest(reaction="no.such", state_key="k"))
        assert (await refusal(unknown))[:2] == (grpc.StatusCode.NOT_FOUND, "REACTION_NOT_FOUND")
        assert (await refusal(state_of(client, "")))[1] == "INVALID_STATE_KEY"
        bad_prefix = client.reactions.ListProcessStates(pb.ListProcessStatesRequest(reaction=STEPS, key_prefix="\n"))
        assert (await refusal(bad_prefix))[1] == "INVALID_KEY_PREFIX"
        too_many = client.reactions.ListProcessStates(pb.ListProcessStatesRequest(reaction=STEPS, page_size=1001))
        assert (await refusal(too_many))[1] == "PAGE_SIZE_TOO_LARGE"
        first = await client.reactions.ListProcessStates(pb.ListProcessStatesRequest(reaction=STEPS, page_size=1))
        elsewhere = client.reactions.ListProcessStates(
            pb.ListProcessStatesRequest(reaction=STEPS, key_prefix="feed-b", page_token=first.next_page_token)
        )
        assert (await refusal(elsewhere))[:2] == (grpc.StatusCode.INVALID_ARGUMENT, "PAGE_TOKEN_MISMATCH")
        missing = await asyncio.to_thread(
            cli, "reaction", STEPS, "--state", "feed-zed", server=app.address, check=False
        )
        assert missing.returncode == 1 and "PROCESS_STATE_NOT_FOUND" in missing.stderr

        entries = (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{STEPS}"))).entries
        reads = sorted(e.message for e in entries if e.command_type.endswith("/GetProcessState"))
        assert "process state 'feed-ann' read" in reads and "process state 'feed-bob' read" in reads
        assert f"reaction {STEPS} keeps no state under 'feed-zed'" in reads  # refused, audited with its refusal
        lists = [e.message for e in entries if e.command_type.endswith("/ListProcessStates")]
        assert "1 process states listed (key prefix 'feed-b')" in lists


async def test_a_state_of_a_type_the_reaction_no_longer_knows_is_shown_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    async with serving(path, shifting(1)) as (_, client):
        await feeds(client, "ann")
    async with serving(path, shifting(2, upcaster=True)) as (_, client):
        upcast = (await state_of(client, "feed-ann")).state
        # Stored as the old type its upcaster reads: rendered through that type.
        assert (upcast.state_type, json.loads(upcast.state_json)) == ("box.v1.Box", {"name": "ann"})
    async with serving(path, shifting(2)) as (app, client):
        unknown = (await state_of(client, "feed-ann")).state
        # No type of the reaction describes it: as stored, no JSON guessed.
        assert (unknown.state_type, unknown.state_json) == ("box.v1.Box", "")
        assert box.Box.FromString(unknown.state.value).name == "ann"
        shown = await asyncio.to_thread(cli, "reaction", STEPS, "--state", "feed-ann", server=app.address)
        # The CLI unpacks it with the types the server serves (Feed's state is a box.v1.Box).
        assert json.loads(shown.stdout)["state"] == {"@type": "box.v1.Box", "name": "ann"}


async def test_several_states_are_dropped_all_or_none(tmp_path: Path) -> None:
    async with serving(tmp_path / "events.db", shifting(1)) as (app, client):
        await feeds(client, "ann", "bob", "cy", "dan", "eve")

        def drop(*keys: str) -> object:
            return client.reactions.DropProcessState(
                pb.DropProcessStateRequest(reaction=STEPS, state_key=keys[0], state_keys=keys[1:])
            )

        code, reason, metadata = await refusal(drop("feed-ann", "feed-zed", "feed-bob", "feed-yan"))
        assert (code, reason, metadata["state_key"], metadata["missing"]) == (
            grpc.StatusCode.NOT_FOUND,
            "PROCESS_STATE_NOT_FOUND",
            "feed-zed",
            "2",
        )
        assert await listed(client) == [["feed-ann", "feed-bob", "feed-cy", "feed-dan", "feed-eve"]]  # none dropped
        assert (await refusal(drop("feed-ann", "feed-ann")))[:2] == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "DUPLICATE_STATE_KEY",
        )
        # The refusal names the key and where it was typed (state_key counts as the 1st).
        repeated = await asyncio.to_thread(
            cli, "reaction", STEPS, "--drop-state", "feed-ann", "feed-bob", "feed-bob", server=app.address, check=False
        )
        assert "DUPLICATE_STATE_KEY" in repeated.stderr
        assert "key 'feed-bob' is named twice (3rd and 2nd)" in repeated.stderr
        many = pb.DropProcessStateRequest(reaction=STEPS, state_keys=[f"k{i}" for i in range(1001)])
        assert (await refusal(client.reactions.DropProcessState(many)))[1] == "TOO_MANY_STATE_KEYS"
        dropped = await client.reactions.DropProcessState(
            pb.DropProcessStateRequest(reaction=STEPS, state_keys=["feed-ann", "feed-bob"])
        )
        assert dropped.dropped == 2 and await listed(client) == [["feed-cy", "feed-dan", "feed-eve"]]

        several = await asyncio.to_thread(
            cli, "reaction", STEPS, "--drop-state", "feed-cy", "feed-dan", server=app.address
        )
        assert json.loads(several.stdout) == {
            "reaction": STEPS,
            "dropped_states": ["feed-cy", "feed-dan"],
            "dropped": 2,
        }
        await feeds(client, "ann", "bob")
        # By prefix: first how many, nothing dropped; then only with that count confirmed.
        asked = await asyncio.to_thread(
            cli, "reaction", STEPS, "--drop-states", "--prefix", "feed-", server=app.address, check=False
        )
        assert asked.returncode == 2 and "3 states of reaction" in asked.stderr and "--confirm 3" in asked.stderr
        wrong = await asyncio.to_thread(
            cli,
            "reaction",
            STEPS,
            "--drop-states",
            "--prefix",
            "feed-",
            "--confirm",
            "2",
            server=app.address,
            check=False,
        )
        assert wrong.returncode == 2 and await listed(client) == [["feed-ann", "feed-bob", "feed-eve"]]
        confirmed = await asyncio.to_thread(
            cli, "reaction", STEPS, "--drop-states", "--prefix", "feed-", "--confirm", "3", server=app.address
        )
        assert json.loads(confirmed.stdout) == {"reaction": STEPS, "prefix": "feed-", "dropped": 3}
        assert await listed(client) == [[]]

        entries = (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{STEPS}"))).entries
        drops = [e.message for e in entries if e.command_type.endswith("/DropProcessState")]
        assert "2 process states dropped: 'feed-ann', 'feed-bob'" in drops


async def test_reading_states_takes_an_administrator(tmp_path: Path) -> None:
    async with serving(tmp_path / "events.db", shifting(1), admin=False) as (_, client):
        await feeds(client, "ann")
        for call in (
            state_of(client, "feed-ann"),
            client.reactions.ListProcessStates(pb.ListProcessStatesRequest(reaction=STEPS)),
        ):
            assert (await refusal(call))[0] == grpc.StatusCode.PERMISSION_DENIED


async def test_states_cannot_be_listed_under_encryption_at_rest_but_each_is_read(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with serving(tmp_path / "events.db", shifting(1), master_key_file=keys) as (_, client):
        await feeds(client, "ann")
        assert json.loads((await state_of(client, "feed-ann")).state.state_json) == {"name": "ann"}
        listing = client.reactions.ListProcessStates(pb.ListProcessStatesRequest(reaction=STEPS))
        code, reason, metadata = await refusal(listing)
        assert (code, reason, metadata) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "DOCUMENT_KEYS_HIDDEN",
            {"reaction": STEPS},
        )


async def test_a_state_derived_from_a_forgotten_aggregate_is_not_shown(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with serving(tmp_path / "events.db", shifting(1), master_key_file=keys) as (_, client):
        await feeds(client, "ann", "bob")
        await client.admin.ForgetAggregate(admin_pb.ForgetAggregateRequest(aggregate_id="feed-ann"))
        assert (await refusal(state_of(client, "feed-ann")))[:2] == (
            grpc.StatusCode.NOT_FOUND,
            "PROCESS_STATE_NOT_FOUND",
        )
        assert json.loads((await state_of(client, "feed-bob")).state.state_json) == {"name": "bob"}


async def test_under_encryption_at_rest_the_audit_names_no_state_key(tmp_path: Path) -> None:
    # The keys are stored as keyed hashes (they may be personal data); the
    # audit of the reads and drops, in the clear and filed under the
    # reaction (forgetting an aggregate erases none of it), wrote them out.
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    secret_keys = ("feed-never-stored-ann", "feed-never-stored-bob")
    async with serving(tmp_path / "events.db", shifting(1), master_key_file=keys) as (_, client):
        await feeds(client, "ann", "bob")
        assert json.loads((await state_of(client, "feed-ann")).state.state_json) == {"name": "ann"}
        assert (await refusal(state_of(client, secret_keys[0])))[1] == "PROCESS_STATE_NOT_FOUND"
        missing = client.reactions.DropProcessState(
            pb.DropProcessStateRequest(reaction=STEPS, state_key=secret_keys[1])
        )
        assert (await refusal(missing))[1] == "PROCESS_STATE_NOT_FOUND"
        await client.reactions.DropProcessState(pb.DropProcessStateRequest(reaction=STEPS, state_key="feed-bob"))
        entries = (await client.admin.QueryAudit(admin_pb.QueryAuditRequest(aggregate_id=f"reaction:{STEPS}"))).entries
    audited = sorted((e.command_type.rpartition("/")[2], e.reason, e.message) for e in entries)
    assert audited == [
        ("DropProcessState", "", "1 process state(s) dropped (keys not recorded: encryption at rest)"),
        (
            "DropProcessState",
            "PROCESS_STATE_NOT_FOUND",
            "refused, PROCESS_STATE_NOT_FOUND (keys not recorded: encryption at rest)",
        ),
        ("GetProcessState", "", "process state read (keys not recorded: encryption at rest)"),
        (
            "GetProcessState",
            "PROCESS_STATE_NOT_FOUND",
            "refused, PROCESS_STATE_NOT_FOUND (keys not recorded: encryption at rest)",
        ),
    ]
    # Keys no event or document holds: nowhere in the database's files.
    stored = await asyncio.to_thread(lambda: b"".join(path.read_bytes() for path in tmp_path.glob("events.db*")))
    assert stored and not any(key.encode() in stored for key in secret_keys)


async def test_an_empty_key_or_command_id_on_the_command_line_is_refused_not_taken_as_absent(tmp_path: Path) -> None:
    """``--state ""`` (a script's empty "$KEY") printed the reaction's status
    and exited 0, as did ``--replay ""`` and ``--dismiss ""``: it is sent, and
    the server's refusal is what the user sees."""
    async with serving(tmp_path / "events.db", shifting(1)) as (app, _client):
        for option in ("--state", "--replay", "--dismiss"):
            ran = await asyncio.to_thread(cli, "reaction", STEPS, option, "", server=app.address, check=False)
            assert ran.returncode != 0, (option, ran.stdout)
            assert ran.stdout == "" and "INVALID_ARGUMENT" not in ran.stdout
            assert "error: INVALID_" in ran.stderr, (option, ran.stderr)
