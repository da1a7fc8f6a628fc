"""Plugins that exist only to test the machinery around handlers."""

from __future__ import annotations

from google.protobuf.message import Message

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from domain_plugins.users.protos.users.v1 import users_pb2
from service.plugins import (
    IGNORE,
    CommandCall,
    CommandContext,
    Documents,
    Ignore,
    Middleware,
    NotFoundError,
    OldEvent,
    Plugin,
    ProjectedEvent,
    Refusal,
    Send,
    ValidationError,
)

FAIL_AMOUNT = 13

faulty = Plugin("faulty")
wallet = faulty.aggregate("Wallet", state=bank.Account)


@wallet.command(bank.Deposit)
def deposit(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    if command.amount == FAIL_AMOUNT:
        raise RuntimeError("unlucky number")
    return bank.MoneyDeposited(amount=command.amount)


@wallet.command(bank.Withdraw)
def withdraw_returns_a_foreign_message(
    command: bank.Withdraw, state: bank.Account, context: CommandContext
) -> bank.Account:
    return bank.Account(owner="not an event")


@wallet.apply(bank.MoneyDeposited)
def deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


# -- a plugin whose events changed over time (upcasting) ---------------------
#
# MoneyDeposited v1 held whole units, v2 holds cents. AccountOpened v1 had an
# untrimmed owner; v2 trims it; v3 no longer grants the opening bonus as part
# of the event, so v2 splits into AccountOpened v3 + MoneyDeposited. The type
# legacy.v1.OwnerChanged (its class is gone) became box.v1.BoxRenamed; the
# type legacy.v1.AuditNote is dropped. AccountClosed is at v2 with no
# upcaster from v1, and nothing reads legacy.v1.Unknown.

OPENING_BONUS_CENTS = 500

ledger = Plugin("ledger")
book = ledger.aggregate("Book", state=bank.Account)


@book.command(bank.Deposit)
def deposit_cents(command: bank.Deposit, state: bank.Account, context: CommandContext) -> bank.MoneyDeposited:
    return bank.MoneyDeposited(amount=command.amount)


@book.apply(bank.AccountOpened, schema_version=3)
def _book_opened(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@book.apply(bank.MoneyDeposited, schema_version=2)
def _book_deposited(state: bank.Account, event: bank.MoneyDeposited) -> None:
    state.balance += event.amount


@book.apply(bank.AccountClosed, schema_version=2)
def _book_closed(state: bank.Account, event: bank.AccountClosed) -> None:
    state.closed = True


@book.apply(box_pb2.BoxRenamed)
def _book_renamed(state: bank.Account, event: box_pb2.BoxRenamed) -> None:
    state.owner = event.name


@book.upcast(bank.MoneyDeposited, from_version=1)
def _units_to_cents(old: OldEvent) -> bank.MoneyDeposited:
    return bank.MoneyDeposited(amount=old.parse(bank.MoneyDeposited).amount * 100)


@book.upcast(bank.AccountOpened, from_version=1)
def _trim_owner(old: OldEvent) -> bank.AccountOpened:
    return bank.AccountOpened(owner=old.parse(bank.AccountOpened).owner.strip())


@book.upcast(bank.AccountOpened, from_version=2)
def _split_bonus(old: OldEvent) -> list[Message]:
    return [old.parse(bank.AccountOpened), bank.MoneyDeposited(amount=OPENING_BONUS_CENTS)]


@book.upcast("legacy.v1.OwnerChanged", from_version=1)
def _owner_changed_is_a_rename(old: OldEvent) -> box_pb2.BoxRenamed:
    # The old message had the owner as field 1, as BoxRenamed has its name.
    return box_pb2.BoxRenamed(name=old.parse(box_pb2.BoxRenamed).name)


@book.upcast("legacy.v1.AuditNote", from_version=1)
def _audit_notes_are_dropped(old: OldEvent) -> None:
    return None


class Quarantine(Middleware):
    """Refuses commands whose metadata says ``quarantine``; remembers the rest."""

    name = "quarantine"

    def __init__(self) -> None:
        self.seen: list[CommandCall] = []

    async def before(self, call: CommandCall) -> None:
        if "quarantine" in call.metadata:
            raise ValidationError("this command is quarantined", reason="QUARANTINED")

    async def after(self, call: CommandCall) -> None:
        self.seen.append(call)


def quarantine_plugin() -> tuple[Plugin, Quarantine]:
    """A plugin that only adds middleware (a fresh one per test)."""
    plugin = Plugin("quarantine")
    return plugin, plugin.add_middleware(Quarantine())  # type: ignore[return-value]


# -- a plugin that asks about other aggregates and claims values -------------
#
# A card draws on an account (another aggregate, type "Account"): issuing one
# needs the account to exist, and claims it in "cards.account" so that an
# account has at most one card.

CARD_SCOPE = "cards.account"
issue_runs: list[str] = []

cards = Plugin("cards")
card = cards.aggregate("Card", state=bank.Account)


@card.command(bank.OpenAccount)
def issue_card(command: bank.OpenAccount, state: bank.Account, context: CommandContext) -> bank.AccountOpened:
    issue_runs.append(command.owner)
    if not context.exists("Account", command.owner):
        raise NotFoundError(f"account {command.owner!r} does not exist", reason="ACCOUNT_NOT_FOUND")
    context.claim(CARD_SCOPE, command.owner)
    return bank.AccountOpened(owner=command.owner)


@card.command(bank.Deposit)
def ask_about_many(command: bank.Deposit, state: bank.Account, context: CommandContext) -> None:
    for i in range(command.amount):
        context.exists("Account", f"acc-{i}")


@card.command(bank.Withdraw)
def claim_then_fail(command: bank.Withdraw, state: bank.Account, context: CommandContext) -> None:
    context.claim(CARD_SCOPE, "acc-1")
    if command.amount == FAIL_AMOUNT:
        raise RuntimeError("unlucky number")
    raise ValidationError("refused after claiming", reason="REFUSED")


@card.command(bank.CloseAccount)
def catch_everything(command: bank.CloseAccount, state: bank.Account, context: CommandContext) -> bank.AccountClosed:
    try:
        found = context.exists("Account", "acc-1")
    except Exception:  # a handler's broad except must not swallow the lookup
        found = False
    if not found:
        raise NotFoundError("no account", reason="ACCOUNT_NOT_FOUND")
    return bank.AccountClosed()


@card.apply(bank.AccountOpened)
def _card_issued(state: bank.Account, event: bank.AccountOpened) -> None:
    state.owner = event.owner


@card.apply(bank.AccountClosed)
def _card_closed(state: bank.Account, event: bank.AccountClosed) -> None:
    state.closed = True


# -- a read model of every aggregate type (an administrator's to read) -------

openings = Plugin("openings")
every_opening = openings.projection("openings.every_opening")


@every_opening.on(bank.AccountOpened)
def _an_opening(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    documents.put(envelope.aggregate_id, bank.AccountBalance(owner=event.owner))


# A gate that lets names through only once it is open; a reaction that sends
# every name the "source" gate lets through on to the "gated" one (refused
# while that is shut: parked, for an operator to replay once it is open; but
# a name beginning "harmless" it may lose: that refusal it ignores).
gates = Plugin("gates")
gate = gates.aggregate("Gate", state=box_pb2.Box)  # Box.archived: the gate is open


@gate.command(box_pb2.ArchiveBox)
def open_gate(command: box_pb2.ArchiveBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxArchived:
    return box_pb2.BoxArchived()


@gate.command(box_pb2.RenameBox)
def let_through(command: box_pb2.RenameBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxRenamed:
    if not state.archived:
        raise ValidationError(f"gate {context.aggregate_id} is shut", reason="GATE_SHUT")
    return box_pb2.BoxRenamed(name=command.name)


@gate.apply(box_pb2.BoxArchived)
def _opened(state: box_pb2.Box, event: box_pb2.BoxArchived) -> None:
    state.archived = True


@gate.apply(box_pb2.BoxRenamed)
def _through(state: box_pb2.Box, event: box_pb2.BoxRenamed) -> None:
    state.name = event.name


relaying = gates.reaction("gates.relay", aggregate_types=["Gate"])


@relaying.on(box_pb2.BoxRenamed)
def pass_on(event: box_pb2.BoxRenamed, envelope: ProjectedEvent, state: None) -> Send | None:
    if envelope.aggregate_id != "source":
        return None
    return Send("gated", box_pb2.RenameBox(name=event.name), metadata={"relayed": "yes"})


@relaying.on_refused
def ignore_the_harmless(refusal: Refusal, envelope: ProjectedEvent, state: None) -> Ignore | None:
    if isinstance(refusal.command, box_pb2.RenameBox) and refusal.command.name.startswith("harmless"):
        return IGNORE  # expected: counted ignored, not parked
    return None  # parked


# A handler that takes half a second: a client whose deadline is shorter
# gives up while the command still runs, and commits.
slow = Plugin("slow")
sloth = slow.aggregate("Sloth", state=box_pb2.Box)
SLOW_HANDLER_SECONDS = 0.5


@sloth.command(box_pb2.RenameBox)
def rename_slowly(command: box_pb2.RenameBox, state: box_pb2.Box, context: CommandContext) -> box_pb2.BoxRenamed:
    import time

    time.sleep(SLOW_HANDLER_SECONDS)
    return box_pb2.BoxRenamed(name=command.name)


@sloth.apply(box_pb2.BoxRenamed)
def _renamed_slowly(state: box_pb2.Box, event: box_pb2.BoxRenamed) -> None:
    state.name = event.name


# Members whose state cannot be rebuilt from an event naming "odd" (its apply
# fails, as a plugin's bug would): an import derives no claims for such a one.
fragile = Plugin("fragile")
member = fragile.aggregate("Member", state=users_pb2.User)


@member.apply(users_pb2.UserRegistered)
def _member_registered(state: users_pb2.User, event: users_pb2.UserRegistered) -> None:
    if event.name == "odd":
        raise ValueError("a member named odd cannot be applied")
    state.email, state.name = event.email, event.name


@member.claims
def _member_claims(state: users_pb2.User) -> list[tuple[str, str]]:
    return [("members.email", state.email)] if state.email else []
