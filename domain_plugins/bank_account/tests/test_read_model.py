"""The bank's read model, ``bank.balances_by_owner``, run by the real
projection runner in process (``service.testing.ProjectionRun``)."""

from __future__ import annotations

from domain_plugins.bank_account import plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.testing import ProjectionRun

BALANCES = "bank.balances_by_owner"


def two_accounts_of_ann(run: ProjectionRun) -> None:
    run.submit("acc-1", bank.OpenAccount(owner="ann"))
    run.submit("acc-2", bank.OpenAccount(owner="ann"))
    run.submit("acc-1", bank.Deposit(amount=100))
    run.submit("acc-2", bank.Deposit(amount=30))
    run.submit("acc-1", bank.Withdraw(amount=40))


def test_an_owner_document_sums_the_owners_accounts() -> None:
    with ProjectionRun(plugin) as run:
        two_accounts_of_ann(run)
        run.settle()
        assert run.document(BALANCES, "owner:ann", bank.OwnerBalance) == bank.OwnerBalance(
            owner="ann", balance=90, account_ids=["acc-1", "acc-2"]
        )
        assert run.documents(BALANCES, bank.AccountBalance, prefix="account:") == {
            "account:acc-1": bank.AccountBalance(owner="ann", balance=60),
            "account:acc-2": bank.AccountBalance(owner="ann", balance=30),
        }
        assert run.document(BALANCES, "owner:bob", bank.OwnerBalance) is None


def test_events_after_the_checkpoint_update_the_documents() -> None:
    with ProjectionRun(plugin) as run:
        two_accounts_of_ann(run)
        run.settle()
        run.given("acc-9", bank.AccountOpened(owner="bob"), bank.MoneyDeposited(amount=7), origin="import")
        run.submit("acc-2", bank.Withdraw(amount=30))
        run.settle()
        ann = run.document(BALANCES, "owner:ann", bank.OwnerBalance)
        assert ann is not None and ann.balance == 60
        assert run.document(BALANCES, "owner:bob", bank.OwnerBalance) == bank.OwnerBalance(
            owner="bob", balance=7, account_ids=["acc-9"]
        )


def test_batches_of_one_event_and_a_rebuild_from_scratch_give_the_same_documents() -> None:
    with ProjectionRun(plugin) as whole, ProjectionRun(plugin, batch_size=1) as one_by_one:
        for run in (whole, one_by_one):
            two_accounts_of_ann(run)
            run.settle()
        expected = whole.documents(BALANCES, bank.OwnerBalance, prefix="owner:")
        assert one_by_one.documents(BALANCES, bank.OwnerBalance, prefix="owner:") == expected
        whole.rebuild(BALANCES)
        assert whole.documents(BALANCES, bank.OwnerBalance, prefix="owner:") == expected
        assert whole.position(BALANCES) == one_by_one.position(BALANCES) > 0
