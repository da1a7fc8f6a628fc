"""A reaction's *Dismiss all* is all or none (docs/console.md): the
confirmed parked commands go in one DismissAllParkedCommands naming them,
one transaction on the runner (``dismiss_confirmed``, under the lease's
fencing), so a failure midway leaves every one of them parked. It went by
one DismissParkedCommand each: a failure at the third left two dismissed.
A real server on SQLite and on PostgreSQL, the console over HTTP, the
failure injected in the database itself: a trigger that fails the deletion
of the third confirmed command's document, as a full disk would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from chronicle.v1 import reaction_service_pb2 as reactions_pb
from chronicle.v1 import reaction_service_pb2_grpc as reactions_grpc
from service.processing.reaction_documents import PARKED_PREFIX
from service.store.base import AuditQuery, StoreAdapter
from service.store.postgres import PostgresStore
from service.store.records import ACCEPTED, REFUSED
from service.store.sqlite import SqliteStore
from tests.integration.test_console_audit_parked import (
    RELAY,
    ROOT_KEY,
    address_of,
    confirmation_of,
    cookie_of,
    csrf_of,
    get,
    park,
    post,
    rows,
    served,
    with_auth,
)
from tests.support.console import text_of
from tests.support.failing_deletes import fail_deleting, heal_deleting
from tests.support.grpc_client import connect
from tests.support.security import bearer
from tests.support.waiting import eventually

PAGE = "/reactions/" + RELAY


async def _inject(store: StoreAdapter, command_id: str, postgres_url: str) -> None:
    await fail_deleting(
        store, postgres_url, table="projection_documents", column="key", value=PARKED_PREFIX + command_id
    )


async def _heal(store: StoreAdapter, postgres_url: str) -> None:
    await heal_deleting(store, postgres_url, table="projection_documents")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store_and_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[StoreAdapter, str]]:
    if request.param == "sqlite":
        yield SqliteStore(str(tmp_path / "reactions.db")), ""
    else:
        url = request.getfixturevalue("postgres_url")
        yield PostgresStore(url, pool_size=4), url


async def test_dismiss_all_failing_midway_dismisses_none_and_once_the_store_heals_dismisses_all(
    store_and_url: tuple[StoreAdapter, str], tmp_path: Path
) -> None:
    store, postgres_url = store_and_url
    async with served(with_auth(tmp_path), store) as app:
        address = address_of(app)
        root = await cookie_of(address, ROOT_KEY)

        async def parked_ids() -> list[str]:
            answer = await get(address, PAGE, root)
            assert answer.status == 200, answer.text
            return [text_of(row[2]) for row in rows(answer.text, "parked")] if "none parked" not in answer.text else []

        async with connect(app.address, interceptors=bearer(ROOT_KEY)) as client:
            await park(client, ["n1", "n2", "n3", "n4", "n5"])

            async def five_parked() -> bool:
                return len(await parked_ids()) == 5

            await eventually(five_parked, what="five commands parked")
            ids = await parked_ids()
            asked = await post(
                address, PAGE + "/dismiss-all", root, csrf_token=csrf_of((await get(address, PAGE, root)).text)
            )
            await _inject(store, ids[2], postgres_url)
            failed = await post(address, PAGE + "/dismiss-all", root, **confirmation_of(asked.text))
            after_failure = await parked_ids()
            await _heal(store, postgres_url)
            done = await post(address, PAGE + "/dismiss-all", root, **confirmation_of(asked.text))
            told = text_of((await get(address, PAGE, root)).text)
            after = await parked_ids()
        audited = [
            (entry.command_type.rpartition("/")[2], entry.outcome, entry.reason)
            for entry in await app.store.audit.read_audit(AuditQuery(aggregate_id=f"reaction:{RELAY}"))
        ]
    told_failed = text_of(failed.text)
    assert failed.status == 503 and "STORE_UNAVAILABLE" in told_failed, told_failed
    assert "None of the 5 confirmed parked command(s) was dismissed: all are still parked." in told_failed
    # None dismissed: before, the first two were, for good.
    assert sorted(after_failure) == sorted(ids)
    assert done.status == 303 and "Dismissed 5 parked command(s)." in told and after == []
    # One DismissAllParkedCommands each time (audited as the RPC is): refused, then done.
    assert sorted(audited) == sorted(
        [("DismissAllParkedCommands", REFUSED, "STORE_UNAVAILABLE"), ("DismissAllParkedCommands", ACCEPTED, "")]
    )


async def test_dismiss_all_parked_commands_by_id_counts_the_gone_and_refuses_bad_lists(tmp_path: Path) -> None:
    """The RPC the console uses, over a real socket: the named commands go,
    one named that is not parked is counted gone, one not named stays;
    a reason with ids, a bad id, or more than 10,000 ids dismiss nothing."""
    async with (
        served(with_auth(tmp_path), SqliteStore(str(tmp_path / "reactions.db"))) as app,
        connect(app.address, interceptors=bearer(ROOT_KEY)) as client,
    ):
        stub = reactions_grpc.ReactionServiceStub(client.channel)
        await park(client, ["n1", "n2", "n3"])

        async def listed() -> list[str]:
            page = await stub.ListParkedCommands(reactions_pb.ListParkedCommandsRequest(reaction=RELAY))
            return [parked.command_id for parked in page.commands]

        async def three() -> bool:
            return len(await listed()) == 3

        await eventually(three, what="three commands parked")
        first, second, third = await listed()
        unknown = "3f0c6a6e-8d0c-4a57-9e1b-2f7a4b9c1d23"

        async def refused(**fields: object) -> str:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.DismissAllParkedCommands(
                    reactions_pb.DismissAllParkedCommandsRequest(reaction=RELAY, **fields)  # type: ignore[arg-type]
                )
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value
            return caught.value.details() or ""

        with_reason = await refused(command_ids=[first], reason="GATE_SHUT")
        not_an_id = await refused(command_ids=[first, ""])
        too_many = await refused(command_ids=[first] * 10_001)
        untouched = await listed()
        answer = await stub.DismissAllParkedCommands(
            reactions_pb.DismissAllParkedCommandsRequest(reaction=RELAY, command_ids=[first, third, unknown])
        )
        left = await listed()
    assert "not both" in with_reason and "10001 command ids named, at most 10000" in too_many and not_an_id
    assert untouched == [first, second, third]
    assert (answer.dismissed, answer.gone) == (2, 1)
    assert left == [second]
