"""An import keeps uniqueness: aggregates of a type whose plugin declares
its claims (``@user.claims``) that come without claim records (an export
written by hand from another store, as JSON lines) have their claims
derived from their state, through the command line and a real server
process on SQLite and PostgreSQL; a value another aggregate holds is
refused CLAIM_HELD (docs/export-format.md, "Claims")."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from uuid import uuid4

import pytest

from chronicle.v1 import export_pb2
from domain_plugins.users.domain import EMAIL_SCOPE
from domain_plugins.users.protos.users.v1 import users_pb2 as users
from service.app import build_registry
from service.errors import ImportConflict, InvalidInput
from service.plugins import Plugin
from service.plugins.registry import Registry
from service.processing.state import AggregateLoader
from service.store.base import Store
from service.store.encryption import new_master_key
from service.store.records import TOMBSTONE_EVENT_TYPE, RecordedEvent
from service.store.sqlite import SqliteStore
from service.transfer.importer import Importer, ImportSummary
from service.transfer.records import exported_event
from tests.support.grpc_client import TEST_SETTINGS
from tests.support.import_claims import chronicle, empty_store, refused_not_unique, register
from tests.support.postgres import Cluster
from tests.support.processes import cli, server_process

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(params=["sqlite", "postgresql"])
def target_url(request: pytest.FixtureRequest, pg_cluster: Cluster, tmp_path: Path) -> Iterator[str]:
    """An empty Chronicle store of each kind the migration may go to."""
    with empty_store(request.param, pg_cluster, tmp_path) as url:
        yield url


def event_line(
    aggregate_id: str, version: int, message: users.UserRegistered | users.UserDeactivated | users.EmailChanged
) -> str:
    event_type = message.DESCRIPTOR.full_name
    payload = {"@type": f"type.googleapis.com/{event_type}"}
    if isinstance(message, users.UserRegistered):
        payload |= {"email": message.email, "name": message.name}
    elif isinstance(message, users.EmailChanged):
        payload |= {"email": message.email, "previousEmail": message.previous_email}
    return json.dumps(
        {
            "event": {
                "event": {
                    "event_id": str(uuid4()),
                    "aggregate_id": aggregate_id,
                    "aggregate_type": "User",
                    "version": str(version),
                    "timestamp": "2025-01-01T10:00:00Z",
                    "event_type": event_type,
                    "schema_version": 1,
                    "payload": payload,
                }
            }
        }
    )


def hand_written(path: Path, *lines: str, claims: int = 0) -> Path:
    """What a team moving from KurrentDB writes: header, events, end."""
    header = {"header": {"format": "chronicle.export", "format_version": 1, "exported_at": "2026-01-01T00:00:00Z"}}
    events = sum('"event": {"event"' in line for line in lines)
    end = {"end": {"events": str(events), "claims": str(claims)}}
    path.write_text("\n".join([json.dumps(header), *lines, json.dumps(end)]) + "\n")
    return path


USERS_BY_HAND = (
    event_line("user-lee", 1, users.UserRegistered(email="lee@example.com", name="Lee")),
    event_line("user-kim", 1, users.UserRegistered(email="kim@example.com", name="Kim")),
    event_line("user-kim", 2, users.UserDeactivated()),  # deactivating released the address
)


@pytest.mark.parametrize("through", ["database-url", "server"])
def test_a_hand_written_import_takes_the_claims_its_plugin_declares(
    target_url: str, tmp_path: Path, through: str
) -> None:
    export = hand_written(tmp_path / "users.jsonl", *USERS_BY_HAND)
    with server_process(target_url, extra=["--anonymous-admin"]) as server:
        if through == "server":
            summary = json.loads(cli("import", str(export), server=server.address).stdout)
        else:
            summary = json.loads(chronicle("import", str(export), "--database-url", target_url).stdout)
        assert (summary["claims_derived"], summary["claims_written"], summary["aggregates_without_claims"]) == (1, 1, 0)
        assert refused_not_unique(register(server.address, "user-lee2", "lee@example.com"))
        assert register(server.address, "user-kim2", "kim@example.com").returncode == 0
        # Importing again derives the same claim and finds it held: nothing new, nothing refused.
        again = json.loads(cli("import", str(export), server=server.address).stdout)
        assert (again["events_written"], again["claims_derived"], again["claims_written"]) == (0, 1, 0)


@pytest.mark.parametrize("encrypted", [False, True], ids=["clear", "encrypted"])
def test_an_incremental_import_moves_a_changed_address_claim_through_the_server(
    target_url: str, tmp_path: Path, encrypted: bool
) -> None:
    """docs/migration.md, "Incremental imports": the legacy user changed
    address between two imports; after the second, the old address is free
    and the new one taken (before, the old one stayed held by the user, and
    a registration of it was refused). Hidden claims (encryption at rest)
    compare as stored."""
    registered = event_line("user-ann", 1, users.UserRegistered(email="ann@example.com", name="Ann"))
    moved = event_line("user-ann", 2, users.EmailChanged(email="ann@new.example", previous_email="ann@example.com"))
    first = hand_written(tmp_path / "first.jsonl", registered)
    second = hand_written(tmp_path / "second.jsonl", registered, moved)
    keys = {"CHRONICLE_MASTER_KEYS": f"k1:{new_master_key()}"} if encrypted else None
    with server_process(target_url, extra=["--anonymous-admin"], env=keys) as server:
        json.loads(cli("import", str(first), server=server.address).stdout)
        summary = json.loads(cli("import", str(second), server=server.address).stdout)
        assert register(server.address, "user-cy", "ann@example.com").returncode == 0
        assert refused_not_unique(register(server.address, "user-bob", "ann@new.example"))
        assert (summary["events_written"], summary["claims_written"], summary["claims_released"]) == (1, 1, 1)


def test_a_server_encrypting_at_rest_takes_the_derived_claims_hidden(target_url: str, tmp_path: Path) -> None:
    """The import seals the users' events; their claims are derived from
    the state as commands see it, opened with the master keys (from the
    sealed payloads nothing would be derived), and a registration of the
    same address is refused."""
    export = hand_written(tmp_path / "users.jsonl", *USERS_BY_HAND)
    keys = {"CHRONICLE_MASTER_KEYS": f"k1:{new_master_key()}"}
    with server_process(target_url, extra=["--anonymous-admin"], env=keys) as server:
        summary = json.loads(cli("import", str(export), server=server.address).stdout)
        assert (summary["claims_derived"], summary["claims_written"]) == (1, 1)
        assert refused_not_unique(register(server.address, "user-lee2", "lee@example.com"))
        assert register(server.address, "user-kim2", "kim@example.com").returncode == 0


def test_an_imported_claim_another_user_holds_is_refused_claim_held(target_url: str, tmp_path: Path) -> None:
    """The target's lee@ registered through a command; the import brings
    another lee@, derived (no claim record) or as a claim record: refused,
    CLAIM_HELD, and the target's user keeps the address."""
    derived = hand_written(
        tmp_path / "derived.jsonl", event_line("user-lee-old", 1, users.UserRegistered(email="lee@example.com"))
    )
    claim = json.dumps({"claim": {"scope": EMAIL_SCOPE, "value": "lee@example.com", "aggregate_id": "user-lee-rec"}})
    recorded = hand_written(
        tmp_path / "recorded.jsonl",
        event_line("user-lee-rec", 1, users.UserRegistered(email="lee@example.com")),
        claim,
        claims=1,
    )
    with server_process(target_url, extra=["--anonymous-admin"]) as server:
        assert register(server.address, "user-lee-new", "lee@example.com").returncode == 0
        for export, holder_claimed_by in ((derived, "user-lee-old"), (recorded, "user-lee-rec")):
            refused = cli("import", str(export), server=server.address, check=False)
            assert refused.returncode != 0
            assert "CLAIM_HELD" in refused.stderr and holder_claimed_by in refused.stderr
            assert "user-lee-new" in refused.stderr
        assert (
            "derived from the aggregate's state"
            in cli("import", str(derived), server=server.address, check=False).stderr
        )
        assert refused_not_unique(register(server.address, "user-lee-3", "lee@example.com"))


def test_an_aggregate_whose_claims_cannot_be_derived_is_a_warning(target_url: str, tmp_path: Path) -> None:
    """A member whose state cannot be rebuilt (its plugin's apply fails on
    it) has no claims derived, and the import says so, loudly; the other
    member's claim is taken."""

    def member(aggregate_id: str, name: str) -> str:
        line = json.loads(event_line(aggregate_id, 1, users.UserRegistered(email=f"{name}@example.com", name=name)))
        line["event"]["event"]["aggregate_type"] = "Member"
        return json.dumps(line)

    export = hand_written(tmp_path / "odd.jsonl", member("member-odd", "odd"), member("member-eve", "eve"))
    plugins = {"CHRONICLE_DISCOVER_PLUGINS": "false", "CHRONICLE_PLUGINS": "tests.support.plugins:fragile"}
    done = chronicle("import", str(export), "--database-url", target_url, "--quiet", env=plugins)
    summary = json.loads(done.stdout)
    assert (summary["aggregates_without_claims"], summary["claims_derived"]) == (1, 1)
    assert "warning: AGGREGATES_WITHOUT_CLAIMS: 1 imported aggregates" in done.stderr


def test_an_event_whose_payload_does_not_parse_is_refused_before_any_claim(target_url: str, tmp_path: Path) -> None:
    """An event in the clear must parse as its type (its aggregate could
    never be loaded): refused, BAD_RECORD, and nothing of its batch written."""
    broken = json.loads(event_line("user-odd", 1, users.UserRegistered(email="odd@example.com")))
    broken["event"]["event"]["payload"] = {
        "@type": "type.googleapis.com/users.v1.UserRegistered",
        "@base64": base64.b64encode(b"\xff\xff").decode(),
    }
    export = hand_written(tmp_path / "odd.jsonl", json.dumps(broken), *USERS_BY_HAND)
    refused = chronicle("import", str(export), "--database-url", target_url, "--quiet", check=False)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: BAD_RECORD: record[1]: event ")
    assert "does not parse as users.v1.UserRegistered" in refused.stderr


# -- which aggregates have claims derived --------------------------------------------------


async def records(
    *events: RecordedEvent, claims: list[export_pb2.ExportRecord] | None = None
) -> AsyncIterator[export_pb2.ExportRecord]:
    yield export_pb2.ExportRecord(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
    for event in events:
        yield exported_event(event)
    for claim in claims or []:
        yield claim
    yield export_pb2.ExportRecord(end=export_pb2.ExportEnd(events=len(events), claims=len(claims or [])))


def user_event(
    aggregate_id: str, message: users.UserRegistered | users.EmailChanged | users.UserDeactivated, version: int = 1
) -> RecordedEvent:
    return RecordedEvent(
        event_id=str(uuid4()), aggregate_id=aggregate_id, aggregate_type="User", version=version, position=0,
        event_type=message.DESCRIPTOR.full_name, schema_version=1, payload=message.SerializeToString(),
        timestamp_us=1, command_id="", user_id="", origin="", correlation_id="", causation_id="", metadata={},
    )  # fmt: skip


async def test_an_aggregate_ends_holding_what_its_state_declares_whatever_its_claim_records_say(
    tmp_path: Path,
) -> None:
    """Its records are taken as they come; then its claims are made what
    its state declares (the declaration agrees with the handlers): here the
    record holds another address than the state's, which is released.
    Before, the record was taken at its word and the state's address left
    free."""
    adapter = SqliteStore(tmp_path / "c.db")
    await adapter.open()
    try:
        store, registry = Store.of(adapter), build_registry(TEST_SETTINGS)
        claim = export_pb2.ExportRecord(
            claim=export_pb2.ExportedClaim(scope=EMAIL_SCOPE, value="old@example.com", aggregate_id="user-1")
        )
        importer = Importer(store, registry=registry, load_state=AggregateLoader(store, registry).state_of)
        summary = await importer.run(
            records(
                user_event("user-1", users.UserRegistered(email="new@example.com")),
                user_event("user-2", users.UserRegistered(email="two@example.com")),
                claims=[claim],
            )
        )
        assert await store.claims.claim_owner(EMAIL_SCOPE, "old@example.com") is None
        assert await store.claims.claim_owner(EMAIL_SCOPE, "new@example.com") == "user-1"
        assert await store.claims.claim_owner(EMAIL_SCOPE, "two@example.com") == "user-2"
        assert (summary.claims_derived, summary.written["claim"], summary.claims_released) == (2, 3, 1)
        # Without a way to load state, nothing is derived: counted, for the summary's warning.
        later = Importer(store, registry=registry)
        counted = await later.run(records(user_event("user-3", users.UserRegistered(email="three@example.com"))))
        assert (counted.claims_derived, counted.aggregates_without_claims) == (0, 1)
    finally:
        await adapter.close()


@asynccontextmanager
async def sqlite_store(path: Path) -> AsyncIterator[Store]:
    adapter = SqliteStore(path)
    await adapter.open()
    try:
        yield Store.of(adapter)
    finally:
        await adapter.close()


async def imported(store: Store, registry: Registry, *events: RecordedEvent) -> ImportSummary:
    importer = Importer(store, registry=registry, load_state=AggregateLoader(store, registry).state_of)
    return await importer.run(records(*events))


async def test_a_deleted_aggregate_holds_nothing(tmp_path: Path) -> None:
    """A deleted aggregate comes as its deletion's tombstone alone (its
    events were removed): nothing to derive, nothing counted as missing."""
    registered = user_event("user-gone", users.UserRegistered(email="gone@example.com"))
    tombstone = replace(registered, version=2, event_type=TOMBSTONE_EVENT_TYPE, payload=b"")
    async with sqlite_store(tmp_path / "c.db") as store:
        summary = await imported(store, build_registry(TEST_SETTINGS), tombstone)
        assert (summary.claims_derived, summary.aggregates_without_claims) == (0, 0)
        assert await store.claims.claim_owner(EMAIL_SCOPE, "gone@example.com") is None


async def test_a_declared_claim_no_command_could_take_is_refused(tmp_path: Path) -> None:
    """A plugin whose declaration derives an empty value (a user with no
    address, here): INVALID_CLAIM_VALUE, naming the aggregate; nothing claimed."""
    plugin = Plugin("careless")
    member = plugin.aggregate("Member", state=users.User)
    member.apply(users.UserRegistered)(lambda state, event: state.MergeFrom(pb_user(event)))
    member.claims(lambda state: [("members.name", state.name)])
    event = replace(user_event("member-1", users.UserRegistered(email="m@example.com")), aggregate_type="Member")
    async with sqlite_store(tmp_path / "c.db") as store:
        with pytest.raises(InvalidInput) as refused:
            await imported(store, Registry([plugin]), event)
        assert (refused.value.reason, refused.value.metadata["aggregate_id"]) == ("INVALID_CLAIM_VALUE", "member-1")
        assert (await store.events.head("member-1")) is not None  # the events are written


def pb_user(event: users.UserRegistered) -> users.User:
    return users.User(email=event.email, name=event.name)


# -- incremental imports: the claims follow the history ----------------------------------------


def changed(registered: RecordedEvent, email: str, version: int = 2) -> RecordedEvent:
    previous = users.UserRegistered.FromString(registered.payload).email
    return user_event(registered.aggregate_id, users.EmailChanged(email=email, previous_email=previous), version)


def importer(store: Store, registry: Registry, *, batch_size: int = 500) -> Importer:
    return Importer(
        store, registry=registry, load_state=AggregateLoader(store, registry).state_of, batch_size=batch_size
    )


async def test_an_incremental_import_moves_a_changed_address_claim(tmp_path: Path) -> None:
    """The legacy application's user changed address between two imports:
    the second releases the old address and claims the new one (before, the
    first import's claim of the old one stayed)."""
    registry = build_registry(TEST_SETTINGS)
    registered = user_event("user-1", users.UserRegistered(email="old@example.com"))
    async with sqlite_store(tmp_path / "c.db") as store:
        await importer(store, registry).run(records(registered))
        assert await store.claims.claim_owner(EMAIL_SCOPE, "old@example.com") == "user-1"
        moved = changed(registered, "new@example.com")
        summary = await importer(store, registry).run(records(registered, moved))
        assert await store.claims.claim_owner(EMAIL_SCOPE, "old@example.com") is None
        assert await store.claims.claim_owner(EMAIL_SCOPE, "new@example.com") == "user-1"
        assert (summary.written["event"], summary.events_skipped) == (1, 1)
        assert (summary.claims_derived, summary.written["claim"], summary.claims_released) == (1, 1, 1)
        # And again: nothing to change.
        again = await importer(store, registry).run(records(registered, moved))
        assert (again.written["claim"], again.claims_released) == (0, 0)


async def test_a_new_address_another_aggregate_holds_refuses_and_releases_nothing(tmp_path: Path) -> None:
    """CLAIM_HELD naming both; the user keeps its old address (nothing of
    the settling written: never a moment with neither), its events written."""
    registry = build_registry(TEST_SETTINGS)
    registered = user_event("user-1", users.UserRegistered(email="old@example.com"))
    async with sqlite_store(tmp_path / "c.db") as store:
        await importer(store, registry).run(
            records(registered, user_event("user-9", users.UserRegistered(email="taken@example.com")))
        )
        with pytest.raises(ImportConflict) as refused:
            await importer(store, registry).run(records(registered, changed(registered, "taken@example.com")))
        assert refused.value.reason == "CLAIM_HELD"
        assert refused.value.metadata == {"scope": EMAIL_SCOPE, "aggregate_id": "user-1", "holder": "user-9"}
        assert "derived from the aggregate's state" in refused.value.message
        assert await store.claims.claim_owner(EMAIL_SCOPE, "old@example.com") == "user-1"
        assert await store.claims.claim_owner(EMAIL_SCOPE, "taken@example.com") == "user-9"
        assert (await store.events.head("user-1")).version == 2  # type: ignore[union-attr]


async def test_two_users_who_swapped_addresses_are_settled_across_batches(tmp_path: Path) -> None:
    """user-1 took user-2's address and user-2 user-1's: with one aggregate
    per transaction, the one whose new value is still held waits for the
    holder to release it."""
    registry = build_registry(TEST_SETTINGS)
    one = user_event("user-1", users.UserRegistered(email="a@example.com"))
    two = user_event("user-2", users.UserRegistered(email="b@example.com"))
    async with sqlite_store(tmp_path / "c.db") as store:
        await importer(store, registry).run(records(one, two))
        swapped = (changed(one, "b@example.com"), changed(two, "a@example.com"))
        summary = await importer(store, registry, batch_size=1).run(records(one, two, *swapped))
        assert await store.claims.claim_owner(EMAIL_SCOPE, "a@example.com") == "user-2"
        assert await store.claims.claim_owner(EMAIL_SCOPE, "b@example.com") == "user-1"
        assert (summary.written["claim"], summary.claims_released) == (2, 2)


async def test_a_deactivated_users_address_is_released_by_the_import_that_brings_it(tmp_path: Path) -> None:
    registry = build_registry(TEST_SETTINGS)
    registered = user_event("user-1", users.UserRegistered(email="gone@example.com"))
    async with sqlite_store(tmp_path / "c.db") as store:
        await importer(store, registry).run(records(registered))
        summary = await importer(store, registry).run(
            records(registered, user_event("user-1", users.UserDeactivated(), version=2))
        )
        assert await store.claims.claim_owner(EMAIL_SCOPE, "gone@example.com") is None
        assert (summary.claims_derived, summary.claims_released) == (0, 1)
