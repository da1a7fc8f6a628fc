"""``ReactionRun.submit`` (the plugin test harness, service/testing.py)
refuses the origin and metadata a server refuses of a client's command, by
the server's own checks (api/codec.py): a test must not pass on a command
no client could send, e.g. one claiming a reaction's origin to be routed
into its processes."""

from __future__ import annotations

import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import InvalidInput
from service.testing import ReactionRun


@pytest.mark.parametrize(
    ("origin", "metadata", "reason", "field"),
    [
        ("reaction:bank.transfers", {}, "RESERVED_ORIGIN", "command.origin"),
        ("REACTION:bank.transfers", {}, "RESERVED_ORIGIN", "command.origin"),  # any letter case
        (" reaction:bank.transfers", {}, "INVALID_FIELD", "command.origin"),  # padded to look like one
        ("", {"chronicle.reaction_hops": "99"}, "INVALID_METADATA", "command.metadata['chronicle.reaction_hops']"),
        ("", {"Chronicle.Imported": "true"}, "INVALID_METADATA", "command.metadata['Chronicle.Imported']"),
    ],
)
def test_an_origin_or_metadata_the_server_refuses_is_refused_alike(
    origin: str, metadata: dict[str, str], reason: str, field: str
) -> None:
    with ReactionRun(bank_account.plugin) as run:
        with pytest.raises(InvalidInput) as refused:
            run.submit("acc-1", bank.OpenAccount(owner="ann"), origin=origin, metadata=metadata)
        assert refused.value.reason == reason
        assert [violation.field for violation in refused.value.violations] == [field]
        assert run.events("acc-1") == []  # nothing written


def test_a_clients_own_origin_and_metadata_pass() -> None:
    with ReactionRun(bank_account.plugin) as run:
        run.submit("acc-1", bank.OpenAccount(owner="ann"), origin="web", metadata={"tenant": "t-1"})
        assert run.events("acc-1") == [bank.AccountOpened(owner="ann")]
