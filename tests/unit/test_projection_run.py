"""``service.testing.ProjectionRun``: a projection's failure is the test's
failure, a parking projection's parked events are there to look at, and a
rebuild starts from an empty read model (the bank's own read model is
tested with it in domain_plugins/bank_account/tests/test_read_model.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from domain_plugins import bank_account, box
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from domain_plugins.box.protos.box.v1 import box_pb2
from service.api.forgotten import deleted_documents
from service.errors import ChronicleError
from service.plugins import Plugin
from service.plugins.projections import Documents, ProjectedEvent
from service.processing.projection_failures import WITHDRAWN, StoredFailure, record_failure, stored_failure
from service.store.base import Store
from service.store.encrypted import forget_aggregate
from service.store.records import DocumentWrite
from service.testing import ProjectionRun, ScenarioFailed
from tests.support import projection_labels

ROOT = Path(__file__).resolve().parents[2]


def test_a_projection_that_stops_fails_settle_and_one_that_parks_parks() -> None:
    with ProjectionRun(box.plugin, projection_labels.plugin) as run:
        run.submit("b-1", box_pb2.CreateBox(name="fine"))
        run.submit("b-2", box_pb2.CreateBox(name="unlabelable-2"))
        with pytest.raises(ScenarioFailed, match=r"projection labels\.strict stopped: .*unlabelable-2"):
            run.settle()
        assert [parked.aggregate_id for parked in run.parked("labels.boxes")] == ["b-2"]
        assert run.documents("labels.boxes", box_pb2.Box) == {"box:b-1": box_pb2.Box(name="fine")}
        assert run.documents("labels.strict", box_pb2.Box) == {"box:b-1": box_pb2.Box(name="fine")}


def test_a_rebuild_starts_from_an_empty_read_model() -> None:
    with ProjectionRun(bank_account.plugin) as run:
        run.submit("acc-1", bank.OpenAccount(owner="ann"))
        run.settle()
        position = run.position("bank.balances_by_owner")
        stray = DocumentWrite("owner:nobody", "bank.v1.OwnerBalance", bank.OwnerBalance(owner="x").SerializeToString())
        run._loop.run_until_complete(  # a document no event made
            run.store.commit_projection(
                "bank.balances_by_owner", expected_position=position, new_position=position, writes=[stray]
            )
        )
        run.rebuild("bank.balances_by_owner")
        assert set(run.documents("bank.balances_by_owner", bank.OwnerBalance, prefix="owner:")) == {"owner:ann"}


def test_a_document_of_another_type_than_asked_is_a_failure() -> None:
    with ProjectionRun(bank_account.plugin) as run:
        run.submit("acc-1", bank.OpenAccount(owner="ann"))
        run.settle()
        with pytest.raises(
            ScenarioFailed, match=re.escape("holds a bank.v1.AccountBalance, not a bank.v1.OwnerBalance")
        ):
            run.document("bank.balances_by_owner", "account:acc-1", bank.OwnerBalance)


def test_the_guides_example_runs_as_written() -> None:
    guide = (ROOT / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```$", guide, flags=re.MULTILINE | re.DOTALL)
    (block,) = [b for b in blocks if "ProjectionRun(plugin) as run" in b]
    scope = {"ProjectionRun": ProjectionRun, "plugin": bank_account.plugin, "bank": bank}
    exec(block, scope)
    scope["test_an_owner_document_sums_the_owners_accounts"]()  # type: ignore[operator]


# A plugin whose read model keys documents by the account's owner as given.
keyed_by_owner = Plugin("keyed-by-owner")
owners = keyed_by_owner.projection("keyed.owners", aggregate_types=["Account"])


@owners.on(bank.AccountOpened)
def _by_owner(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    documents.put(event.owner, bank.AccountBalance(owner=event.owner * (1 if len(event.owner) < 3 else 1_000_000)))


@pytest.mark.parametrize(
    ("owner", "reason"),
    [("", "INVALID_KEY"), ("a\nb", "INVALID_KEY"), ("\uffff", "INVALID_KEY"), ("big", "DOCUMENT_TOO_LARGE")],
)
def test_a_key_or_document_the_server_would_refuse_fails_the_plugins_own_test(owner: str, reason: str) -> None:
    """The in-memory harness holds handlers to the server's rules (a key
    GetDocument takes, a document an answer carries): a plugin's tests find
    what would stop its projection on a server."""
    with ProjectionRun(bank_account.plugin, keyed_by_owner) as run:
        run.given("acc-1", bank.AccountOpened(owner=owner))
        with pytest.raises(ScenarioFailed, match=r"stopped: ") as raised:
            run.settle()
        assert isinstance(raised.value.__cause__, ChronicleError) and raised.value.__cause__.reason == reason
        assert run.documents("keyed.owners", bank.AccountBalance) == {}


def test_a_stored_failure_goes_with_the_aggregate_whose_event_it_was_met_on() -> None:
    """A projection's stop at an event, stored for every replica, may quote
    the event's payload: it names the event's aggregate as its subject, so
    forgetting the aggregate deletes it (docs/security.md)."""
    with ProjectionRun(bank_account.plugin, forgetting=True) as run:
        run.submit("acc-1", bank.OpenAccount(owner="ann"))
        run.settle()
        store = run._roles.projections
        failure = StoredFailure(7, "PROJECTION_FAILED: ann's secret", "acc-1")
        assert run._loop.run_until_complete(record_failure(store, "p.one", failure, None))
        assert run._loop.run_until_complete(stored_failure(store, "p.one", 6)) == StoredFailure(7, failure.error)
        assert run._loop.run_until_complete(stored_failure(store, "p.one", 7)) is None  # passed: no failure now
        assert run._keyring is not None
        forgetting = run._loop.run_until_complete(forget_aggregate(Store.of(run.store), run._keyring, "acc-1"))
        withdrawn = run._loop.run_until_complete(stored_failure(store, "p.one", 6))
        assert withdrawn == StoredFailure(7, WITHDRAWN)  # still stopped there, its text gone
        # Not reported as a read model's document deleted: it is the server's own row.
        assert [entry.name for entry in deleted_documents(forgetting)] == ["bank.balances_by_owner"]
        # Once forgotten, it is not stored again (nothing is written that names it).
        assert not run._loop.run_until_complete(record_failure(store, "p.one", failure, None))
