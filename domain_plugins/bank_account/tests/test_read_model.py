"""The bank's read model, ``bank.balances_by_owner``, run by the real
projection runner in process (``service.testing.ProjectionRun``)."""

from __future__ import annotations

from domain_plugins.bank_account import plugin
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.bank_account.read_model import owner_key
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


def test_an_owner_document_made_again_after_a_forgetting_sums_what_a_rebuild_sums() -> None:
    """Forgetting one of an owner's accounts deletes the owner's document
    (it names every account it sums); the next event of another account
    makes it again from that account's whole balance, not the one event's
    amount, so it holds what a rebuild, without the forgotten account, gives."""
    with ProjectionRun(plugin, forgetting=True) as run:
        run.submit("acc-a", bank.OpenAccount(owner="zoe"))
        run.submit("acc-a", bank.Deposit(amount=100))
        run.submit("acc-b", bank.OpenAccount(owner="zoe"))
        run.submit("acc-b", bank.Deposit(amount=50))
        run.submit("acc-c", bank.OpenAccount(owner="zoe"))
        run.submit("acc-c", bank.Deposit(amount=7))
        run.settle()
        run.forget("acc-a")
        assert run.document(BALANCES, "owner:zoe", bank.OwnerBalance) is None
        assert run.document(BALANCES, "account:acc-a", bank.AccountBalance) is None
        run.submit("acc-c", bank.Deposit(amount=3))
        run.submit("acc-b", bank.Deposit(amount=10))
        run.settle()
        live = run.document(BALANCES, "owner:zoe", bank.OwnerBalance)
        assert live == bank.OwnerBalance(owner="zoe", balance=70, account_ids=["acc-b", "acc-c"])
        assert run.document(BALANCES, "account:acc-b", bank.AccountBalance) == bank.AccountBalance(
            owner="zoe", balance=60
        )
        run.rebuild(BALANCES)
        assert run.document(BALANCES, "owner:zoe", bank.OwnerBalance) == live


def test_an_owner_whose_name_makes_no_readable_key_is_kept_under_its_hash() -> None:
    with ProjectionRun(plugin) as run:
        for account_id, owner in (("acc-1", "ann\nlee"), ("acc-2", "x" * 300)):
            run.submit(account_id, bank.OpenAccount(owner=owner))
            run.submit(account_id, bank.Deposit(amount=5))
        run.settle()  # the projection goes on: no key GetDocument would refuse
        for owner in ("ann\nlee", "x" * 300):
            key = owner_key(owner)
            assert key.startswith("owner-sha256:") and len(key) == 77
            assert run.document(BALANCES, key, bank.OwnerBalance) == bank.OwnerBalance(
                owner=owner, balance=5, account_ids=["acc-1" if "\n" in owner else "acc-2"]
            )
