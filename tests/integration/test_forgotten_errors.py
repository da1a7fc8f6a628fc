"""A projection's or a reaction's last error may quote the event it failed on; once that
event's aggregate is forgotten the text is withdrawn (docs/security.md,
"Forgetting"): GetProjection and the console no longer show it. A
reaction's error may also quote the aggregate its command was sent to (its
refusal): withdrawn once that aggregate is forgotten (it was not)."""

from __future__ import annotations

from pathlib import Path

from chronicle.v1 import admin_service_pb2 as admin
from chronicle.v1 import projection_service_pb2 as projections
from chronicle.v1 import reaction_service_pb2 as reactions
from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.plugins import CommandContext, Documents, Plugin, ProjectedEvent, Refusal, Send, ValidationError
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


# A vault refuses every renaming with a refusal that quotes its state; a
# reaction sends one for each deposit, and cannot make up for the refusal.
vaults = Plugin("vaults")
vault = vaults.aggregate("Vault", state=box_pb2.Box)
relaying = vaults.reaction("vaults.relay", aggregate_types=["Account"], retry_seconds=0.05)


@vault.command(box_pb2.CreateBox)
def _create_vault(command: box_pb2.CreateBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxCreated:
    return box_pb2.BoxCreated(name=command.name)


@vault.apply(box_pb2.BoxCreated)
def _vault_created(state: box_pb2.Box, event: box_pb2.BoxCreated) -> None:
    state.name = event.name


@vault.command(box_pb2.RenameBox)
def _sealed(command: box_pb2.RenameBox, state: box_pb2.Box, context: CommandContext) -> None:
    raise ValidationError(f"the vault of {state.name} is sealed", reason="VAULT_SEALED")


@relaying.on(bank.MoneyDeposited)
def _relay(event: bank.MoneyDeposited, envelope: ProjectedEvent, state: None) -> Send:
    return Send("vault-1", box_pb2.RenameBox(name="deposits"))


@relaying.on_refused
def _cannot_make_up(refusal: Refusal, envelope: ProjectedEvent, state: None) -> None:
    raise ValueError(f"cannot make up for it: {refusal.message}")


async def test_a_reactions_error_quoting_the_forgotten_aggregate_its_command_was_sent_to_is_withdrawn(
    tmp_path: Path,
) -> None:
    keys = write(tmp_path / "master.keys", f"k1:{new_master_key()}\n")
    async with running_server(
        MemoryStore(),
        registry=Registry([bank_account.plugin, vaults]),
        master_key_file=keys,
        anonymous_admin=True,
        console_listen="127.0.0.1:0",
        poll_seconds=0.05,
    ) as (app, client):
        await client.submit(command("vault-1", box_pb2.CreateBox(name="Jane Doe")))
        await client.submit(command("acc-1", bank.OpenAccount(owner="ann")))
        await client.submit(command("acc-1", bank.Deposit(amount=5)))
        get = reactions.GetReactionRequest(name="vaults.relay")

        async def failing() -> bool:
            status = await client.reactions.GetReaction(get)
            return "the vault of Jane Doe is sealed" in status.error

        await eventually(failing, what="the reaction failing on the vault's refusal")
        assert app.console is not None
        page = await request(app.console.address, "GET", "/reactions")
        assert "Jane Doe" in page.text  # shown before the forget

        # The vault is forgotten, not the account whose event the reaction met.
        await client.admin.ForgetAggregate(admin.ForgetAggregateRequest(aggregate_id="vault-1"), timeout=10)
        status = await client.reactions.GetReaction(get)
        assert "Jane Doe" not in status.last_error and "Jane Doe" not in status.error
        assert status.last_error == WITHDRAWN_ERROR
        page = await request(app.console.address, "GET", "/reactions")
        assert page.status == 200 and "Jane Doe" not in page.text
