"""A plugin's middleware runs in the server's pipeline, over a real socket."""

from __future__ import annotations

import grpc
import pytest

from chronicle.v1 import admin_service_pb2 as admin
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.store.memory import MemoryStore
from tests.support.grpc_client import command, details_of, running_server
from tests.support.plugins import quarantine_plugin


async def test_plugin_middleware_sees_each_command_and_can_refuse_one() -> None:
    plugin, quarantine = quarantine_plugin()
    registry = Registry([bank_account.plugin, plugin])
    async with running_server(MemoryStore(), registry=registry, anonymous_admin=True) as (_, client):
        accepted = await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await client.submit(command("acc-1", bank.Deposit(amount=5), metadata={"quarantine": "yes"}))
        audit = await client.admin.QueryAudit(admin.QueryAuditRequest(outcome=admin.AUDIT_OUTCOME_REFUSED))
    details = details_of(raised.value)
    assert (details.code, details.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "QUARANTINED")
    assert [(c.command_type, c.result and c.result.version) for c in quarantine.seen] == [("bank.v1.OpenAccount", 1)]
    assert accepted.version == 1
    # Refused by middleware, not by a handler: audited on its own.
    assert [e.reason for e in audit.entries] == ["QUARANTINED"]
