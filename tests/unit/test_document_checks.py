"""What a read model's handler may name and write, checked cheaply but by
the one rule: ``document_key_problem`` and ``subject_problem`` answer as
``id_problem`` does (their quick answer for a fine name is no other rule),
a read model larger than its cache (each handler run first to learn
which documents to load, its writes thrown away) refuses the same writes
with the same reasons, each on the event whose handler made it, and a
document that cannot be serialized fails its handler's call (it is
serialized at the put, where ByteSize refused it before), not the batch's
commit."""

from __future__ import annotations

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins import Plugin
from service.plugins.projections import (
    MAX_DOCUMENT_BYTES,
    Documents,
    ProjectedEvent,
    document_key_problem,
    subject_problem,
)
from service.testing import ProjectionRun
from service.values import MAX_ID_LENGTH, id_problem

NAMES = [
    "",
    " ",
    "\t",
    "\u00a0",  # a no-break space: whitespace, and not printable
    "owner:ann",
    "k" * MAX_ID_LENGTH,
    "k" * (MAX_ID_LENGTH + 1),
    " " * (MAX_ID_LENGTH + 1),
    "a\nb",
    "a\x7f",
    "k\x00",
    "k\ufffe",
    "k\uffff",
    "k\ud800",
    "k\u200b",  # a format character (zero-width space)
    "é",
    "日本:口座",
    "k\U0001f600",
]


@pytest.mark.parametrize("name", NAMES)
def test_a_document_key_is_refused_exactly_as_id_problem_refuses_it(name: str) -> None:
    assert document_key_problem(name) == id_problem(name)


@pytest.mark.parametrize("name", NAMES)
def test_a_subject_is_refused_exactly_when_it_is_no_storable_aggregate_id(name: str) -> None:
    problem = id_problem(name, printable=False)
    if not problem and ("\0" in name or "\ud800" in name):
        problem = "must not contain NUL or lone surrogates"
    assert subject_problem(name) == problem


# A read model that keeps nothing in memory: every get misses, so every
# batch runs the handlers of the events ahead to learn what to load.
uncached = Plugin("uncached")
writes = uncached.projection(
    "uncached.writes", aggregate_types=["Account"], cache_size=0, on_failure="park", max_attempts=1
)


@writes.on(bank.AccountOpened)
def _write(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    what, _, name = event.owner.partition(":")
    documents.get(f"seen:{envelope.aggregate_id}", bank.AccountBalance)  # a miss: the events after are probed
    if what == "get":
        documents.get(name, bank.AccountBalance)
    elif what == "delete":
        documents.delete(name)
    elif what == "subject":
        documents.put("named", bank.AccountBalance(owner="x"), subject=name)
    elif what == "big":
        documents.put(name, bank.AccountBalance(owner="y" * MAX_DOCUMENT_BYTES))
    else:
        documents.put(name, bank.AccountBalance(owner=name), subject=envelope.aggregate_id)


OWNERS = {
    "acc-1": "put:first",
    "acc-2": "get:a\nb",
    "acc-3": "put:",
    "acc-4": "delete:\t",
    "acc-5": "put:k" + "k" * MAX_ID_LENGTH,
    "acc-6": "subject:acc\x00",
    "acc-7": "subject: ",
    "acc-8": "big:big",
    "acc-9": "put:last",
}


def test_a_read_model_larger_than_its_cache_refuses_each_bad_write_on_its_own_event() -> None:
    with ProjectionRun(bank_account.plugin, uncached) as run:
        for account, owner in OWNERS.items():
            run.given(account, bank.AccountOpened(owner=owner))
        run.settle()
        parked = run.parked("uncached.writes")
        assert [(event.aggregate_id, event.error.split(":")[0]) for event in parked] == [
            ("acc-2", "INVALID_KEY"),
            ("acc-3", "INVALID_KEY"),
            ("acc-4", "INVALID_KEY"),
            ("acc-5", "INVALID_KEY"),
            ("acc-6", "INVALID_SUBJECT"),
            ("acc-7", "INVALID_SUBJECT"),
            ("acc-8", "DOCUMENT_TOO_LARGE"),
        ]
        assert set(run.documents("uncached.writes", bank.AccountBalance)) == {"first", "last"}


def _message_with_a_required_field() -> type[Message]:
    """A proto2 message type with a required field, made here (no plugin's
    protos are proto2): one without the field cannot be serialized."""
    file = descriptor_pb2.FileDescriptorProto(name="required_test.proto", package="required_test", syntax="proto2")
    file.message_type.add(name="Needy").field.add(
        name="must",
        number=1,
        type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=2,  # LABEL_REQUIRED
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("required_test.Needy"))


Needy = _message_with_a_required_field()
incomplete = Plugin("incomplete")
needy = incomplete.projection("incomplete.needy", aggregate_types=["Account"], on_failure="park", max_attempts=1)


@needy.on(bank.AccountOpened)
def _needy(event: bank.AccountOpened, envelope: ProjectedEvent, documents: Documents) -> None:
    documents.put(envelope.aggregate_id, Needy() if event.owner == "incomplete" else Needy(must="x"))


def test_a_document_that_cannot_be_serialized_fails_its_handler_on_its_event_not_the_commit() -> None:
    with ProjectionRun(bank_account.plugin, incomplete) as run:
        for account, owner in (("acc-1", "fine"), ("acc-2", "incomplete"), ("acc-3", "fine")):
            run.given(account, bank.AccountOpened(owner=owner))
        run.settle()
        parked = run.parked("incomplete.needy")
        assert [(event.aggregate_id, event.error.split(":")[0]) for event in parked] == [("acc-2", "PROJECTION_FAILED")]
        assert "EncodeError" in parked[0].error
        assert set(run.documents("incomplete.needy", Needy)) == {"acc-1", "acc-3"}
