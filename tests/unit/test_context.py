"""The handler's context: lookups of other aggregates and uniqueness claims,
on the cards test plugin (see tests/support/plugins.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import HandlerFailed, InvalidArgumentError, NotFoundError, NotUnique, ValidationError
from service.plugins import CommandContext, Effects
from service.plugins.context import LookupNeeded
from service.plugins.registry import Registry
from service.processing.commands import CommandBatch, CommandRequest
from service.processing.deciding import MAX_LOOKUPS
from service.processing.executor import CommandExecutor
from service.processing.router import Router
from service.store.base import Store
from service.store.memory import MemoryStore
from service.transfer.deleting import delete_aggregate
from tests.support import plugins
from tests.support.contents import contents
from tests.support.events import new_event

REGISTRY = Registry([plugins.cards])
SCOPE = plugins.CARD_SCOPE


def request(aggregate_id: str, message: Message) -> CommandRequest:
    spec = REGISTRY.command(message.DESCRIPTOR.full_name)
    assert spec is not None
    return CommandRequest(command_id=str(uuid.uuid4()), aggregate_id=aggregate_id, spec=spec, message=message)


@pytest.fixture
async def store() -> MemoryStore:
    store = MemoryStore()
    await store.append("acc-1", [new_event(aggregate_type="Account")], 0)
    await store.append("box-1", [new_event(aggregate_type="Box")], 0)
    return store


@pytest.fixture
async def router(store: MemoryStore) -> AsyncIterator[Router]:
    router = Router(CommandExecutor(Store.of(store), REGISTRY))
    yield router
    await router.close()


async def test_a_handler_sees_whether_another_aggregate_exists(router: Router, store: MemoryStore) -> None:
    await router.submit(request("card-1", bank.OpenAccount(owner="acc-1")))
    with pytest.raises(NotFoundError):
        await router.submit(request("card-2", bank.OpenAccount(owner="acc-9")))
    assert await store.claim_owner(SCOPE, "acc-1") == "card-1"


async def test_an_aggregate_of_another_type_does_not_exist(router: Router) -> None:
    with pytest.raises(NotFoundError):
        await router.submit(request("card-1", bank.OpenAccount(owner="box-1")))


async def test_a_deleted_aggregate_does_not_exist(router: Router, store: MemoryStore) -> None:
    deleted = await delete_aggregate(Store.of(store), "acc-1", principal="root")
    assert deleted.tombstone.aggregate_type == "Account"  # its tombstone keeps the type
    with pytest.raises(NotFoundError):
        await router.submit(request("card-1", bank.OpenAccount(owner="acc-1")))


async def test_a_lookup_runs_the_handler_once_more_with_the_answer(router: Router) -> None:
    plugins.issue_runs.clear()
    await router.submit(request("card-1", bank.OpenAccount(owner="acc-1")))
    assert plugins.issue_runs == ["acc-1", "acc-1"]


async def test_lookups_are_answered_once_per_batch(router: Router) -> None:
    plugins.issue_runs.clear()
    batch = CommandBatch((request("card-1", bank.OpenAccount(owner="acc-1")), request("card-1", bank.CloseAccount())))
    result = await router.submit_batch(batch)
    assert result.version == 2
    assert plugins.issue_runs == ["acc-1", "acc-1"]


async def test_a_broad_except_in_the_handler_does_not_swallow_a_lookup(router: Router) -> None:
    await router.submit(request("card-1", bank.OpenAccount(owner="acc-1")))
    result = await router.submit(request("card-1", bank.CloseAccount()))
    assert result.version == 2


async def test_too_many_lookups_fail_the_handler(router: Router) -> None:
    with pytest.raises(HandlerFailed) as raised:
        await router.submit(request("card-1", bank.Deposit(amount=MAX_LOOKUPS + 1)))
    assert raised.value.reason == "TOO_MANY_LOOKUPS"
    assert (await router.submit(request("card-1", bank.Deposit(amount=MAX_LOOKUPS)))).version == 0


async def test_a_value_held_by_another_aggregate_is_not_unique_with_the_scope(
    router: Router, store: MemoryStore
) -> None:
    await router.submit(request("card-1", bank.OpenAccount(owner="acc-1")))
    with pytest.raises(NotUnique) as raised:
        await router.submit(request("card-2", bank.OpenAccount(owner="acc-1")))
    assert (raised.value.reason, raised.value.metadata["scope"]) == ("NOT_UNIQUE", SCOPE)
    assert await store.head("card-2") is None


async def test_a_refusal_after_a_claim_leaves_no_claim(router: Router, store: MemoryStore) -> None:
    before = await contents(store)
    with pytest.raises(ValidationError):
        await router.submit(request("card-1", bank.Withdraw(amount=1)))
    changes = (await contents(store)).changes_since(before)
    assert list(changes) == ["commands"]  # the record of the refusal, for its retries; no claim
    assert await store.claim_owner(SCOPE, "acc-1") is None


async def test_a_failing_handler_after_a_claim_leaves_no_claim(router: Router, store: MemoryStore) -> None:
    before = await contents(store)
    with pytest.raises(HandlerFailed):
        await router.submit(request("card-1", bank.Withdraw(amount=plugins.FAIL_AMOUNT)))
    assert (await contents(store)).changes_since(before) == {}


def test_claim_values_must_be_printable_and_bounded() -> None:
    context = CommandContext(aggregate_id="a", aggregate_type="T", version=0, command_id="c")
    for value in ("", "x" * 1025, "a\x00b"):
        with pytest.raises(InvalidArgumentError):
            context.claim(SCOPE, value)
    with pytest.raises(ValueError, match="scope"):
        context.claim("", "x")
    context.claim(SCOPE, "é" * 512)
    assert [c.value for c in context.effects.claims] == ["é" * 512]


def test_a_context_built_by_hand_answers_from_its_effects() -> None:
    effects = Effects(exists={("Account", "acc-1"): True})
    context = CommandContext(aggregate_id="c", aggregate_type="Card", version=0, command_id="x", effects=effects)
    assert context.exists("Account", "acc-1")
    with pytest.raises(LookupNeeded):
        context.exists("Account", "acc-2")
