"""``ChronicleClient.admin``: a tenant listed by prefix and forgotten by
prefix once its count is confirmed, over a real server (memory store,
encryption at rest) and a real client."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.client import ChronicleClient
from service.client.errors import FailedPrecondition, InvalidArgument, PermissionDenied
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from tests.support.grpc_client import running_server
from tests.support.security import write


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[ChronicleClient]:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with (
        running_server(MemoryStore(), master_key_file=keys, anonymous_admin=True) as (app, _),
        ChronicleClient.connect(app.address) as connected,
    ):
        for aggregate_id in ["acme:1", "acme:2", "acme:3", "acme2:1"]:
            await connected.submit(aggregate_id, bank.OpenAccount(owner="ann"))
        yield connected


async def test_a_tenant_is_listed_counted_and_forgotten_by_prefix(client: ChronicleClient) -> None:
    listed = [a async for a in client.admin.aggregates(prefix="acme:", page_size=2)]
    assert [(a.aggregate_id, a.has_key, a.forgotten) for a in listed] == [
        ("acme:1", True, False),
        ("acme:2", True, False),
        ("acme:3", True, False),
    ]
    assert await client.admin.count_to_forget(prefix="acme:") == 3
    with pytest.raises(FailedPrecondition) as wrong:
        await client.admin.forget_aggregates(prefix="acme:", confirm=2)
    assert (wrong.value.reason, wrong.value.metadata["matching"]) == ("CONFIRMATION_MISMATCH", "3")
    with pytest.raises(InvalidArgument) as unseparated:
        await client.admin.forget_aggregates(prefix="acme", confirm=4)
    assert unseparated.value.reason == "PREFIX_NOT_SEPARATED"
    done = await client.admin.forget_aggregates(prefix="acme:", confirm=3, batch_size=2)
    assert (done.forgotten, done.remaining) == (3, 0)
    assert {a.aggregate_id: a.forgotten async for a in client.admin.aggregates()} == {
        "acme2:1": False,
        "acme:1": True,
        "acme:2": True,
        "acme:3": True,
    }
    by_ids = await client.admin.forget_aggregates(aggregate_ids=["acme2:1", "acme:1"], confirm=1)
    assert (by_ids.forgotten, by_ids.remaining) == (1, 0)


async def test_anyone_but_an_administrator_is_refused_before_anything_is_counted(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with (
        running_server(MemoryStore(), master_key_file=keys, anonymous_admin=False) as (app, _),
        ChronicleClient.connect(app.address) as anonymous,
    ):
        await anonymous.submit("acme:1", bank.OpenAccount(owner="ann"))
        with pytest.raises(PermissionDenied) as listing:
            [a async for a in anonymous.admin.aggregates(prefix="acme:")]
        with pytest.raises(PermissionDenied) as forgetting:
            await anonymous.admin.forget_aggregates(prefix="acme:", confirm=1)
        with pytest.raises(PermissionDenied) as counting:
            await anonymous.admin.count_to_forget(prefix="acme:")
        assert (await anonymous.get_aggregate("acme:1", bank.Account)).version == 1  # not forgotten
    refusals = {listing.value.reason, forgetting.value.reason, counting.value.reason}
    assert refusals == {"ANONYMOUS_ADMIN_DENIED"}
    assert "matching" not in counting.value.metadata


@pytest.mark.parametrize(
    ("selection", "reason"),
    [
        ({}, "INVALID_SELECTION"),  # neither a prefix nor ids
        ({"prefix": "acme:", "aggregate_ids": ["acme:1"]}, "INVALID_SELECTION"),  # both
        ({"aggregate_ids": [f"acme:{n}" for n in range(1001)]}, "TOO_MANY_AGGREGATES"),
        ({"prefix": "acme9"}, "PREFIX_NOT_SEPARATED"),
        ({"prefix": " "}, "INVALID_AGGREGATE_ID"),
        ({"prefix": "acme:", "batch_size": 1001}, "BATCH_TOO_LARGE"),
    ],
)
async def test_a_malformed_bulk_forget_is_refused_and_forgets_nothing(
    client: ChronicleClient, selection: dict[str, object], reason: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        await client.admin.forget_aggregates(confirm=3, **selection)  # type: ignore[arg-type]
    assert refused.value.reason == reason
    assert not [a async for a in client.admin.aggregates() if a.forgotten]


async def test_a_prefix_ending_with_any_separator_is_taken(client: ChronicleClient) -> None:
    await client.submit("acme-eu/1", bank.OpenAccount(owner="ann"))
    done = await client.admin.forget_aggregates(prefix="acme-eu/", confirm=1)
    assert (done.forgotten, done.remaining) == (1, 0)
