"""The Python client's ``projections`` (ProjectionService) over a real
socket: a document read with the position of the submit that wrote it
(read your own writes), documents decoded to their plugin's type and
followed page after page in either order, where a projection stands, the
events it parked, a rebuild, and each refusal as the client's error with
the server's reason. The plugins are the bank's (``bank.balances_by_owner``)
and ``tests.support.projection_labels`` (``labels.boxes`` parks,
``labels.strict`` stops)."""

from __future__ import annotations

import asyncio
import re
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import any_pb2

from domain_plugins import bank_account
from domain_plugins import box as box_plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2 as box
from service.client import (
    NO_RETRIES,
    ChronicleClient,
    Command,
    Document,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    RemoteError,
    Unavailable,
)
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support import projection_labels
from tests.support.grpc_client import running_server
from tests.support.waiting import eventually

BALANCES = "bank.balances_by_owner"
LABELS = "labels.boxes"
STRICT = "labels.strict"
ROOT = Path(__file__).resolve().parents[2]
REGISTRY = Registry([bank_account.plugin, box_plugin.plugin, projection_labels.plugin])


@asynccontextmanager
async def serving(*, admin: bool = True, poll_seconds: float = 0.05) -> AsyncIterator[ChronicleClient]:
    async with (
        running_server(MemoryStore(), registry=REGISTRY, anonymous_admin=admin, poll_seconds=poll_seconds) as (
            app,
            _,
        ),
        ChronicleClient.connect(app.address) as client,
    ):
        yield client


@pytest.fixture
async def client() -> AsyncIterator[ChronicleClient]:
    async with serving() as connected:
        yield connected


def refusal(error: pytest.ExceptionInfo[RemoteError]) -> tuple[type[RemoteError], str]:
    return type(error.value), error.value.reason


async def caught_up(client: ChronicleClient, name: str) -> None:
    async def there() -> bool:
        status = await client.projections.get(name)
        return status.position == status.log_head

    await eventually(there, what=f"{name} caught up")


class HeldStore(MemoryStore):
    """A memory store whose projection commits wait while ``held`` is clear:
    the read model stays behind the log for as long as a test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.held = asyncio.Event()
        self.held.set()

    async def commit_projection(self, name: str, **commit: Any) -> None:
        await self.held.wait()
        await super().commit_projection(name, **commit)


async def test_a_document_read_with_a_submits_position_holds_that_command() -> None:
    store = HeldStore()
    async with (
        running_server(store, registry=REGISTRY, poll_seconds=0.05) as (app, _),
        ChronicleClient.connect(app.address) as client,
    ):
        opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        await client.projections.document(BALANCES, "owner:ann", min_position=opened.position)
        store.held.clear()
        deposited = await client.submit("acc-1", bank.Deposit(amount=70))
        assert deposited.position > opened.position
        before = await client.projections.document(BALANCES, "owner:ann")  # no position: what is there
        assert before.document_as(bank.OwnerBalance).balance == 0
        reading = asyncio.ensure_future(
            client.projections.document(BALANCES, "owner:ann", min_position=deposited.position)
        )
        await asyncio.sleep(0.3)
        assert not reading.done()  # waiting for the projection, not answered stale
        store.held.set()
        after = await reading
        assert after.document == bank.OwnerBalance(owner="ann", balance=70, account_ids=["acc-1"])
        assert (after.key, after.type_name) == ("owner:ann", "bank.v1.OwnerBalance")
        assert after.position >= deposited.position


async def test_a_read_the_projection_stays_behind_is_retried_until_it_gets_there() -> None:
    # The server waits at most --read-wait-seconds (here 0.2 s), then answers
    # UNAVAILABLE PROJECTION_BEHIND with a RetryInfo: the client retries it.
    store = HeldStore()
    async with (
        running_server(store, registry=REGISTRY, poll_seconds=0.05, read_wait_seconds=0.2) as (app, _),
        ChronicleClient.connect(app.address) as client,
        ChronicleClient.connect(app.address, retry=NO_RETRIES) as impatient,
    ):
        store.held.clear()
        opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
        with pytest.raises(Unavailable) as behind:
            await impatient.projections.document(BALANCES, "owner:ann", min_position=opened.position)
        assert refusal(behind) == (Unavailable, "PROJECTION_BEHIND")
        assert behind.value.retry_delay is not None
        reading = asyncio.ensure_future(
            client.projections.document(BALANCES, "owner:ann", min_position=opened.position)
        )
        await asyncio.sleep(1.0)  # several of the server's waits
        assert not reading.done()
        store.held.set()
        assert (await reading).document_as(bank.OwnerBalance).account_ids == ["acc-1"]


async def test_a_batchs_position_is_its_last_event(client: ChronicleClient) -> None:
    batch = await client.submit_batch(
        [Command("acc-9", bank.OpenAccount(owner="cy")), Command("acc-9", bank.Deposit(amount=4))]
    )
    assert batch.position == batch.results[-1].events[-1].position
    found = await client.projections.document(BALANCES, "account:acc-9", min_position=batch.position)
    assert found.document_as(bank.AccountBalance).balance == 4


async def test_a_command_that_appends_nothing_or_a_dry_run_has_no_position_to_wait_for(
    client: ChronicleClient,
) -> None:
    created = await client.submit("box-1", box.CreateBox(name="same"))
    assert created.position == created.events[0].position > 0
    unchanged = await client.submit("box-1", box.RenameBox(name="same"))  # already so named: no event
    assert (unchanged.events, unchanged.position) == ((), 0)
    tried = await client.submit("box-1", box.RenameBox(name="other"), dry_run=True)
    assert (len(tried.events), tried.position) == (1, 0)


async def test_a_document_of_a_type_not_imported_here_stays_packed(client: ChronicleClient) -> None:
    opened = await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    found = await client.projections.document(BALANCES, "owner:ann", min_position=opened.position)
    unknown = Document(key=found.key, packed=any_pb2.Any(type_url="type.example/x.v1.Unknown"), position=1)
    assert isinstance(unknown.document, any_pb2.Any)
    with pytest.raises(TypeError):
        found.document_as(bank.AccountBalance)


async def test_documents_are_followed_page_after_page_in_either_order(client: ChronicleClient) -> None:
    last = None
    for n in range(7):
        last = await client.submit(f"acc-{n}", bank.OpenAccount(owner=f"owner-{n}"))
    assert last is not None
    listing = client.projections.documents(BALANCES, key_prefix="owner:", page_size=3, min_position=last.position)
    found = [document async for document in listing]
    assert [d.key for d in found] == [f"owner:owner-{n}" for n in range(7)]
    assert all(isinstance(d.document, bank.OwnerBalance) for d in found)
    backwards = client.projections.documents(BALANCES, key_prefix="owner:", page_size=2, descending=True)
    assert [d.key async for d in backwards] == [f"owner:owner-{n}" for n in reversed(range(7))]
    assert [d.key async for d in client.projections.documents(BALANCES, key_prefix="nobody:")] == []


async def test_where_projections_stand(client: ChronicleClient) -> None:
    assert [status.name for status in await client.projections.list()] == [BALANCES, LABELS, "labels.late", STRICT]
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    await caught_up(client, BALANCES)
    status = await client.projections.get(BALANCES)
    assert (list(status.aggregate_types), status.on_failure) == (["Account"], "stop")
    labels = await client.projections.get(LABELS)
    assert (labels.on_failure, labels.max_attempts) == ("park", 1)


async def test_parked_events_are_followed_to_the_last_page_in_log_order(client: ChronicleClient) -> None:
    names = [f"{projection_labels.UNLABELABLE}-{n}" for n in range(5)]
    for n, name in enumerate(names):
        await client.submit(f"box-{n}", box.CreateBox(name=name))
    await caught_up(client, LABELS)
    parked = [event async for event in client.projections.parked(LABELS, page_size=2)]
    assert [event.aggregate_id for event in parked] == [f"box-{n}" for n in range(5)]
    assert [event.position for event in parked] == sorted(event.position for event in parked)
    assert all(event.event_type == "box.v1.BoxCreated" and "cannot label" in event.error for event in parked)
    assert (await client.projections.get(LABELS)).parked_events == 5


async def test_a_rebuild_applies_the_log_again(client: ChronicleClient) -> None:
    await client.submit("box-1", box.CreateBox(name=f"{projection_labels.UNLABELABLE}-1"))
    created = await client.submit("box-2", box.CreateBox(name="kept"))
    await client.projections.document(LABELS, "box:box-2", min_position=created.position)
    head = await client.projections.rebuild(LABELS)
    assert head == created.position
    await caught_up(client, LABELS)
    assert (await client.projections.document(LABELS, "box:box-2")).document == box.Box(name="kept")
    assert len([event async for event in client.projections.parked(LABELS)]) == 1  # parked again, once


async def test_a_rebuild_takes_an_administrator() -> None:
    async with serving(admin=False) as client:
        assert (await client.projections.get(LABELS)).name == LABELS  # reading does not
        with pytest.raises(PermissionDenied) as denied:
            await client.projections.rebuild(LABELS)
        assert refusal(denied) == (PermissionDenied, "ANONYMOUS_ADMIN_DENIED")


async def test_a_read_past_where_a_projection_stopped_is_refused_at_once(client: ChronicleClient) -> None:
    stopped = await client.submit("box-1", box.CreateBox(name=f"{projection_labels.UNLABELABLE}-1"))
    started = time.monotonic()
    with pytest.raises(FailedPrecondition) as failed:
        await client.projections.document(STRICT, "box:box-1", min_position=stopped.position)
    assert refusal(failed) == (FailedPrecondition, "PROJECTION_FAILED")
    assert failed.value.metadata["failed_at"] == str(stopped.position)
    assert failed.value.retry_delay is None
    assert time.monotonic() - started < 5  # not retried for retry_for (30 s)


@pytest.mark.parametrize(
    ("read", "error", "reason"),
    [
        ("document of an unknown projection", NotFound, "PROJECTION_NOT_FOUND"),
        ("document not there", NotFound, "DOCUMENT_NOT_FOUND"),
        ("document with an empty key", InvalidArgument, "INVALID_KEY"),
        ("document with a control character in its key", InvalidArgument, "INVALID_KEY"),
        ("document past the log's end", InvalidArgument, "POSITION_BEYOND_END"),
        ("documents of an unknown projection", NotFound, "PROJECTION_NOT_FOUND"),
        ("documents, a page too large", InvalidArgument, "PAGE_SIZE_TOO_LARGE"),
        ("documents by a prefix with a control character", InvalidArgument, "INVALID_KEY_PREFIX"),
        ("status of an unknown projection", NotFound, "PROJECTION_NOT_FOUND"),
        ("parked events, a page too large", InvalidArgument, "PAGE_SIZE_TOO_LARGE"),
        ("rebuild of an unknown projection", NotFound, "PROJECTION_NOT_FOUND"),
    ],
)
async def test_bad_reads_are_refused_with_their_reason(
    client: ChronicleClient, read: str, error: type[RemoteError], reason: str
) -> None:
    projections = client.projections

    async def first(listing: AsyncIterator[object]) -> None:
        async for _ in listing:
            break

    reads: dict[str, Callable[[], Awaitable[object]]] = {
        "document of an unknown projection": lambda: projections.document("no.such", "k"),
        "document not there": lambda: projections.document(BALANCES, "owner:nobody"),
        "document with an empty key": lambda: projections.document(BALANCES, ""),
        "document with a control character in its key": lambda: projections.document(BALANCES, "owner:\n"),
        "document past the log's end": lambda: projections.document(BALANCES, "owner:ann", min_position=10**6),
        "documents of an unknown projection": lambda: first(projections.documents("no.such")),
        "documents, a page too large": lambda: first(projections.documents(BALANCES, page_size=1001)),
        "documents by a prefix with a control character": lambda: first(
            projections.documents(BALANCES, key_prefix="\x00")
        ),
        "status of an unknown projection": lambda: projections.get("no.such"),
        "parked events, a page too large": lambda: first(projections.parked(LABELS, page_size=1001)),
        "rebuild of an unknown projection": lambda: projections.rebuild("no.such"),
    }
    with pytest.raises(error) as refused:
        await reads[read]()
    assert refusal(refused) == (error, reason)


@pytest.mark.parametrize("guide", ["clients.md", "plugins.md"])
async def test_the_guides_read_your_writes_snippet_runs_as_written(
    client: ChronicleClient, guide: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (ROOT / "docs" / guide).read_text()
    blocks = re.findall(r"^ *```python\n(.*?)^ *```$", text, flags=re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if "client.projections.document(" in b]
    body = textwrap.indent(textwrap.dedent(block), "    ")
    scope: dict[str, Any] = {}
    exec(f"async def snippet(client, bank):\n{body}", scope)
    await client.submit("acc-1", bank.OpenAccount(owner="ann"))
    await scope["snippet"](client, bank)
    assert capsys.readouterr().out.split() == ["5"]
