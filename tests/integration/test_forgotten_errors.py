"""A projection's or a reaction's last error may quote the event it failed on; once that
event's aggregate is forgotten the text is withdrawn (docs/security.md,
"Forgetting"): GetProjection and the console no longer show it."""

from __future__ import annotations

from pathlib import Path

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import projection_service_pb2 as projections
from chronicle.v1 import reaction_service_pb2 as reactions
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Documents, Plugin, ProjectedEvent
from service.plugins.registry import Registry
from service.processing.projections import WITHDRAWN_ERROR
from service.store.encryption import new_master_key
from service.store.memory import MemoryStore
from tests.support.grpc_client import command, running_server
from tests.support.http import request
from tests.support.security import write
from tests.support.waiting import eventually

quoting = Plugin("quoting")
owners = quoting.projection(
    "quoting.owners", aggregate_types=["Account"], on_failure="park", max_attempts=2, retry_seconds=0.01
)


noticing = quoting.reaction("quoting.notice", aggregate_types=["Account"], retry_seconds=0.05)


@noticing.on(bank.AccountOpened)
def _notice_boom(event: bank.AccountOpened, envelope: ProjectedEvent, state: None) -> None:
    if event.owner.startswith("boom"):
        raise ValueError(f"cannot notice {envelope.aggregate_id}: owner {event.owner!r}")


@owners.on(bank.AccountOpened)
def _refuse_boom(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    if event.owner.startswith("boom"):
        raise ValueError(f"cannot project {envelope.aggregate_id}: owner {event.owner!r}")


async def test_a_projections_error_quoting_a_forgotten_aggregate_is_withdrawn(tmp_path: Path) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    registry = Registry([bank_account.plugin, quoting])
    async with running_server(
        MemoryStore(),
        registry=registry,
        master_key_file=keys,
        anonymous_admin=True,
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
    ) as (app, client):
        await client.submit(command("acc-boom", bank.OpenAccount(owner="boom Jane Doe")))
        await client.submit(command("acc-fine", bank.OpenAccount(owner="ann")))
        get = projections.GetProjectionRequest(name="quoting.owners")

        async def parked() -> bool:
            status = await client.projections.GetProjection(get)
            return status.parked_events == 1 and "Jane Doe" in status.last_error

        async def reaction_failed() -> bool:
            status = await client.reactions.GetReaction(reactions.GetReactionRequest(name="quoting.notice"))
            return "Jane Doe" in status.last_error

        await eventually(parked, what="the event parked with its error")
        await eventually(reaction_failed, what="the reaction failing on the event")
        assert app.console is not None
        page = await request(app.console.address, "GET", "/projections")
        assert "Jane Doe" in page.text  # shown before the forget

        await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="acc-boom"), timeout=10)
        status = await client.projections.GetProjection(get)
        assert "Jane Doe" not in status.last_error and "Jane Doe" not in status.error
        assert status.last_error == WITHDRAWN_ERROR and status.parked_events == 0
        page = await request(app.console.address, "GET", "/projections")
        assert page.status == 200 and "Jane Doe" not in page.text
        reaction = await client.reactions.GetReaction(reactions.GetReactionRequest(name="quoting.notice"))
        assert "Jane Doe" not in reaction.last_error and "Jane Doe" not in reaction.error
        page = await request(app.console.address, "GET", "/reactions")
        assert page.status == 200 and "Jane Doe" not in page.text
