"""The purse plugin's reaction ``purse.shadow`` as its v1 sends it
(``tests.support.purse``): with OpenAccount. A plugin of its own,
so that a test of the projection's lease has one lease to watch."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin, ProjectedEvent, Send
from tests.support.purse import PURSE, SHADOW

plugin = Plugin("purse_shadow")
shadow = plugin.reaction(SHADOW, aggregate_types=[PURSE], start_from="beginning")


@shadow.on(bank.AccountOpened)
def _open_its_shadow(event: bank.AccountOpened, envelope: ProjectedEvent, state: None) -> Send | None:
    if envelope.aggregate_id.startswith("shadow-"):
        return None
    return Send(f"shadow-{envelope.aggregate_id}", bank.OpenAccount(owner=event.owner))
