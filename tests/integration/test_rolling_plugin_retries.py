"""A retry during a rolling plugin upgrade is answered from its record
(docs/deployment.md, "Rolling a new plugin version"): two replicas on one
PostgreSQL database, one with the purse plugin's v1 and one with its v2
(tests/support/purse), over real sockets with a real gRPC client.

* A command whose type v2 renamed, retried (same command id) on v2, is
  answered ``replayed`` with its events, not refused UNKNOWN_COMMAND_TYPE
  (which clients do not retry: the caller would conclude it failed when it
  ran). A new command of that type is still refused, and the id used for
  other content is still COMMAND_ID_REUSED.
* A command v2 ran, retried on a v1 replica (which cannot read the events
  v2 wrote), is answered ``replayed`` with the version it left the
  aggregate at and no events, warm cache or cold; a new command there is
  still refused FAILED_PRECONDITION, as the read of those events is.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

import grpc
import pytest

from chronicle.v1 import event_service_pb2 as events
from chronicle.v1 import reaction_service_pb2 as reactions
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.store.postgres import PostgresStore
from tests.support.cluster import replica
from tests.support.grpc_client import Client, command, details_of
from tests.support.purse import SHADOW, shadow_v1, shadow_v2, v1, v2
from tests.support.waiting import eventually

pytestmark = pytest.mark.asyncio


def _deposit(response_event_payload: bytes) -> int:
    return bank.MoneyDeposited.FromString(response_event_payload).amount


async def test_a_retry_of_a_command_whose_type_was_renamed_is_answered_from_its_record(postgres_url: str) -> None:
    async with (
        replica(postgres_url, registry=Registry([v1.plugin])) as (_, old),
        replica(postgres_url, registry=Registry([v2.plugin])) as (_, new),
    ):
        opening = command("p1", bank.OpenAccount(owner="ann"), command_id=str(uuid.uuid4()))
        first = await old.submit(opening)
        assert (first.version, first.replayed) == (1, False)

        retried = await new.submit(opening)

        assert (retried.version, retried.replayed) == (1, True)
        assert [e.payload.type_url.rpartition("/")[2] for e in retried.events] == ["bank.v1.AccountOpened"]
        assert bank.AccountOpened.FromString(retried.events[0].payload.value).owner == "ann"
        # Only a recorded id is answered so: a new command of the old name is refused.
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await new.submit(command("p9", bank.OpenAccount(owner="bo")))
        assert unknown.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details_of(unknown.value).reason == "UNKNOWN_COMMAND_TYPE"
        # The recorded id sent with other content is a reuse, not a retry.
        other = command("p1", bank.OpenAccount(owner="cy"), command_id=opening.command_id)
        with pytest.raises(grpc.aio.AioRpcError) as reused:
            await new.submit(other)
        assert details_of(reused.value).reason == "COMMAND_ID_REUSED"
        elsewhere = command("p2", bank.OpenAccount(owner="ann"), command_id=opening.command_id)
        with pytest.raises(grpc.aio.AioRpcError) as moved:
            await new.submit(elsewhere)
        assert details_of(moved.value).reason == "COMMAND_ID_REUSED"


async def test_a_recorded_refusal_of_a_renamed_command_is_raised_again(postgres_url: str) -> None:
    async with (
        replica(postgres_url, registry=Registry([v1.plugin])) as (_, old),
        replica(postgres_url, registry=Registry([v2.plugin])) as (_, new),
    ):
        await old.submit(command("p1", bank.OpenAccount(owner="ann")))
        again = command("p1", bank.OpenAccount(owner="ann"), command_id=str(uuid.uuid4()))
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await old.submit(again)  # p1 exists: refused, and the refusal recorded
        with pytest.raises(grpc.aio.AioRpcError) as retried:
            await new.submit(again)
        assert retried.value.code() == refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
        assert details_of(retried.value).reason == details_of(refused.value).reason


async def test_a_retry_on_an_old_replica_of_what_a_new_one_ran_is_answered_without_its_events(
    postgres_url: str,
) -> None:
    async with (
        replica(postgres_url, registry=Registry([v1.plugin])) as (_, old),
        replica(postgres_url, registry=Registry([v2.plugin])) as (_, new),
    ):
        await old.submit(command("p1", bank.Deposit(amount=3)))  # v1 caches p1 (warm)
        deposit = command("p1", bank.Deposit(amount=250), command_id=str(uuid.uuid4()))
        ran = await new.submit(deposit)  # MoneyDeposited v2: v1 cannot read it
        assert (ran.version, ran.replayed) == (2, False)
        assert [_deposit(e.payload.value) for e in ran.events] == [250]

        retried = await old.submit(deposit)

        assert (retried.version, retried.replayed, len(retried.events)) == (2, True, 0)
        # A new command there cannot be decided on state v1 cannot rebuild,
        # nor read; on the new replica it runs.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await old.submit(command("p1", bank.Deposit(amount=1)))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert details_of(refused.value).reason == "SCHEMA_VERSION_TOO_NEW"
        with pytest.raises(grpc.aio.AioRpcError) as unread:
            await old.events.GetAggregate(events.GetAggregateRequest(aggregate_id="p1"), timeout=10)
        assert (unread.value.code(), details_of(unread.value).reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SCHEMA_VERSION_TOO_NEW",
        )
        with pytest.raises(grpc.aio.AioRpcError) as unread:
            async for _ in old.events.ReadAggregate(events.ReadAggregateRequest(aggregate_id="p1"), timeout=10):
                pass
        assert (unread.value.code(), details_of(unread.value).reason) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "SCHEMA_VERSION_TOO_NEW",
        )
        assert (await new.submit(command("p1", bank.Deposit(amount=1)))).version == 3

    async with replica(postgres_url, registry=Registry([v1.plugin])) as (_, cold):
        retried = await cold.submit(deposit)  # p1 not cached: its load fails first
        assert (retried.version, retried.replayed, len(retried.events)) == (2, True, 0)


async def test_a_reaction_going_over_its_events_again_after_its_command_was_renamed_runs_nothing_twice(
    postgres_url: str,
) -> None:
    """purse.shadow opens a shadow purse with OpenAccount in v1 and with its
    new name, RecordRefund, in v2; its command ids do not depend on the
    type. Gone over again from the start (its checkpoint reset), v2's
    command for the same event is refused COMMAND_ID_REUSED and parked, the
    shadow opened once; the parked commands are dismissed by reason."""
    async with replica(postgres_url, registry=Registry([v1.plugin, shadow_v1.plugin])) as (_, old):
        await old.submit(command("p1", bank.OpenAccount(owner="ann")))
        await eventually(lambda: _shadow_opened(old), what="the shadow purse opened by v1's reaction")
    store = PostgresStore(postgres_url, pool_size=1)
    await store.open()
    try:
        await store.reset_projection(SHADOW)  # as an import leaves it: no checkpoint
    finally:
        await store.close()
    async with replica(postgres_url, registry=Registry([v2.plugin, shadow_v2.plugin]), anonymous_admin=True) as (
        _,
        new,
    ):

        async def parked() -> list[reactions.ParkedCommand]:
            response = await new.reactions.ListParkedCommands(reactions.ListParkedCommandsRequest(reaction=SHADOW))
            return list(response.commands)

        await eventually(lambda: _has(parked), what="v2's command parked")
        (command_parked,) = await parked()
        assert command_parked.reason == "COMMAND_ID_REUSED"
        assert command_parked.command.type_url.endswith("/bank.v1.RecordRefund")
        history = await new.events.GetAggregate(events.GetAggregateRequest(aggregate_id="shadow-p1"), timeout=10)
        assert history.version == 1  # opened once, by v1
        dismissed = await new.reactions.DismissAllParkedCommands(
            reactions.DismissAllParkedCommandsRequest(reaction=SHADOW, reason="COMMAND_ID_REUSED")
        )
        assert dismissed.dismissed == 1 and await parked() == []


async def _shadow_opened(client: Client) -> bool:
    try:
        await client.events.GetAggregate(events.GetAggregateRequest(aggregate_id="shadow-p1"), timeout=10)
    except grpc.aio.AioRpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND:
            raise
        return False
    return True


async def _has(listing: Callable[[], Awaitable[list[reactions.ParkedCommand]]]) -> bool:
    return bool(await listing())
