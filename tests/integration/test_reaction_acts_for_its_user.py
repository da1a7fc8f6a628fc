"""A reaction's commands pass no policy and act for the user whose command
caused them (docs/plugins.md, "A reaction acts for the user who caused
it"), over a real server with the bank and a tenant guard as plugin
middleware: with a guard that lets reactions through, tenant globex's
transfer out of tenant acme's account drains it although globex's own
Withdraw is refused; with the guard the docs show, which holds a
reaction's debit to the causing user's tenant, the transfer fails
(TENANT_DENIED) and nothing moves, while acme's own transfer to globex
goes through."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.app import start
from service.client import ChronicleClient
from service.client.errors import RemoteError
from service.plugins import Plugin
from service.plugins.registry import Registry
from service.settings import Settings
from service.store.memory import MemoryStore
from tests.support import tenant_guard
from tests.support.grpc_client import with_jwt_auth
from tests.support.security import JwtIssuer
from tests.support.waiting import eventually

POLICY = """
[roles.tenant]
submit = ["bank.v1.OpenAccount", "bank.v1.Deposit", "bank.v1.Withdraw", "bank.v1.TransferMoney"]
read = ["Account", "Transfer"]

[principals.acme-alice]
roles = ["tenant"]
[principals.globex-bob]
roles = ["tenant"]
"""


def settings(tmp_path: Path, issuer: JwtIssuer) -> Settings:
    return replace(with_jwt_auth(tmp_path, issuer, POLICY), poll_seconds=0.05)


async def transfer_outcome(guard: Plugin, tmp_path: Path) -> tuple[str, bank.Transfer, int, int]:
    """globex's Withdraw on acme's account (its refusal's reason), then
    globex's transfer of 900 out of it: the transfer, acme's and globex's balances."""
    issuer = JwtIssuer()
    registry = Registry([bank_account.plugin, guard])
    app = await start(settings(tmp_path, issuer), store=MemoryStore(), registry=registry)
    try:
        async with (
            ChronicleClient.connect(app.address, token=issuer.token("acme-alice")) as alice,
            ChronicleClient.connect(app.address, token=issuer.token("globex-bob")) as bob,
        ):
            await alice.submit("acme:a1", bank.OpenAccount(owner="ann"))
            await alice.submit("acme:a1", bank.Deposit(amount=1000))
            await bob.submit("globex:b1", bank.OpenAccount(owner="bob"))
            with pytest.raises(RemoteError) as direct:
                await bob.submit("acme:a1", bank.Withdraw(amount=900))
            request = bank.TransferMoney(source_account_id="acme:a1", target_account_id="globex:b1", amount=900)
            await bob.submit("globex:t1", request)

            async def over() -> bool:
                state = (await bob.get_aggregate("globex:t1", bank.Transfer)).state
                return state.status != bank.TRANSFER_STATUS_PENDING

            await eventually(over, what="the transfer over")
            transfer = (await bob.get_aggregate("globex:t1", bank.Transfer)).state
            acme = (await alice.get_aggregate("acme:a1", bank.Account)).state.balance
            globex = (await bob.get_aggregate("globex:b1", bank.Account)).state.balance
    finally:
        await app.stop(grace=0.5)
    return direct.value.reason, transfer, acme, globex


async def test_a_guard_that_lets_reactions_through_lets_one_tenant_drain_anothers_account(tmp_path: Path) -> None:
    refused, transfer, acme, globex = await transfer_outcome(tenant_guard.naive, tmp_path)
    assert refused == "TENANT_DENIED"  # globex's own Withdraw
    assert transfer.status == bank.TRANSFER_STATUS_COMPLETED  # the reaction's Withdraw acted for globex-bob
    assert (acme, globex) == (100, 900)


async def test_the_guard_that_checks_a_reactions_debit_against_the_causing_user_stops_it(tmp_path: Path) -> None:
    refused, transfer, acme, globex = await transfer_outcome(tenant_guard.guarded, tmp_path)
    assert refused == "TENANT_DENIED"
    assert (transfer.status, transfer.reason) == (bank.TRANSFER_STATUS_FAILED, "TENANT_DENIED")
    assert (acme, globex) == (1000, 0)  # nothing moved


async def test_with_the_guard_a_tenant_still_transfers_its_own_money_to_another_tenant(tmp_path: Path) -> None:
    issuer = JwtIssuer()
    registry = Registry([bank_account.plugin, tenant_guard.guarded])
    app = await start(settings(tmp_path, issuer), store=MemoryStore(), registry=registry)
    try:
        async with (
            ChronicleClient.connect(app.address, token=issuer.token("acme-alice")) as alice,
            ChronicleClient.connect(app.address, token=issuer.token("globex-bob")) as bob,
        ):
            await alice.submit("acme:a1", bank.OpenAccount(owner="ann"))
            await alice.submit("acme:a1", bank.Deposit(amount=1000))
            await bob.submit("globex:b1", bank.OpenAccount(owner="bob"))
            request = bank.TransferMoney(source_account_id="acme:a1", target_account_id="globex:b1", amount=100)
            await alice.submit("acme:t2", request)

            async def completed() -> bool:
                state = (await alice.get_aggregate("acme:t2", bank.Transfer)).state
                return state.status == bank.TRANSFER_STATUS_COMPLETED

            await eventually(completed, what="acme's transfer completed")
            assert (await bob.get_aggregate("globex:b1", bank.Account)).state.balance == 100
    finally:
        await app.stop(grace=0.5)


def test_the_guard_plugins_md_shows_is_the_one_tested_here() -> None:
    root = Path(__file__).resolve().parents[2]
    shown = (root / "docs" / "plugins.md").read_text().partition("### A reaction acts for the user who caused it")[2]
    block = shown.partition("```python\n")[2].partition("```")[0]
    guard = block.partition("class TenantGuard(Middleware):")[2]
    assert guard and "class TenantGuard(Middleware):" + guard in (root / "tests/support/tenant_guard.py").read_text()
    assert 'DEBITS = frozenset({"bank.v1.Withdraw"})' in block
