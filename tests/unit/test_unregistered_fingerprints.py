"""What a command id stands for when its type is no longer registered
(service/processing/commands.py): the retry of a renamed command must match
the fingerprint recorded when it ran, and other content must not."""

from __future__ import annotations

from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.processing.commands import fingerprint, fingerprint_of_unregistered


def test_a_type_still_importable_is_fingerprinted_as_when_it_ran() -> None:
    message = bank.OpenAccount(owner="ann")
    recorded = fingerprint("p1", message)
    assert fingerprint_of_unregistered("p1", "bank.v1.OpenAccount", message.SerializeToString()) == recorded
    assert fingerprint_of_unregistered("p2", "bank.v1.OpenAccount", message.SerializeToString()) != recorded
    other = bank.OpenAccount(owner="bo").SerializeToString()
    assert fingerprint_of_unregistered("p1", "bank.v1.OpenAccount", other) != recorded


def test_a_type_gone_from_the_process_is_fingerprinted_by_its_bytes() -> None:
    # What the recording server computed for a type whose class this one
    # no longer has: the same digest over the message's canonical bytes.
    payload = bank.OpenAccount(owner="ann").SerializeToString(deterministic=True)
    gone = fingerprint_of_unregistered("p1", "legacy.v1.TagWallet", payload)
    assert gone == fingerprint_of_unregistered("p1", "legacy.v1.TagWallet", payload)
    assert gone != fingerprint_of_unregistered("p1", "legacy.v1.TagWallet", payload + b"\x10\x01")
    assert gone != fingerprint_of_unregistered("p1", "legacy.v1.LabelWallet", payload)
    assert gone != fingerprint("p1", bank.OpenAccount(owner="ann"))  # the name is part of it
