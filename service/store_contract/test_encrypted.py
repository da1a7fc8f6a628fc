"""Encryption at rest over every store: ciphertext below, plaintext above,
redaction after forgetting, master-key rotation without rewriting events."""

from __future__ import annotations

from dataclasses import dataclass, replace

import pytest

from service.errors import AggregateForgotten, NotUnique, PayloadNotDecryptable
from service.store.base import AuditQuery, Store, StoreAdapter
from service.store.encrypted import encrypted
from service.store.encryption import Keyring, MasterKeys, is_sealed, new_master_key
from service.store.records import PARKED_COMMAND_TYPE, AuditEntry, ClaimChange, DocumentWrite, Rejection, Snapshot
from service.store_contract.records import command_record, new_event

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio

OLD = f"old:{new_master_key()}"
NEW = f"new:{new_master_key()}"


@dataclass(frozen=True)
class Encrypted:
    """A store's roles under encryption at rest, and the keyring they use."""

    roles: Store
    keyring: Keyring


def sealed_over(store: StoreAdapter, keyring: Keyring) -> Encrypted:
    return Encrypted(encrypted(Store.of(store), keyring), keyring)


def encrypting(store: StoreAdapter, keys: str = OLD) -> Encrypted:
    return sealed_over(store, Keyring(store, MasterKeys.parse(keys, source="test")))


async def test_payloads_are_sealed_in_the_store_and_plain_above_it(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    written = await sealed.roles.events.append("a-1", [new_event(payload=b"\x0a\x06secret")], 0)
    assert written[0].payload == b"\x0a\x06secret"
    (raw,) = await store.read_aggregate("a-1")
    assert is_sealed(raw.payload)
    assert b"secret" not in raw.payload
    assert await sealed.roles.events.read_aggregate("a-1") == written


async def test_snapshots_are_sealed_too(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    await sealed.roles.events.append("a-1", [new_event()], 0)
    await sealed.roles.snapshots.save_snapshot(Snapshot("a-1", "Thing", 1, "test.v1.State", 1, b"\x0a\x05state"))
    raw = await store.load_snapshot("a-1")
    assert raw is not None
    assert b"state" not in raw.state
    loaded = await sealed.roles.snapshots.load_snapshot("a-1")
    assert loaded is not None
    assert loaded.state == b"\x0a\x05state"


async def test_events_written_before_encryption_still_read(store: StoreAdapter) -> None:
    await store.append("a-1", [new_event(payload=b"\x08\x01")], 0)
    sealed = encrypting(store)
    await sealed.roles.events.append("a-1", [new_event(payload=b"\x08\x02")], 1)
    assert [e.payload for e in await sealed.roles.events.read_aggregate("a-1")] == [b"\x08\x01", b"\x08\x02"]


async def test_a_forgotten_aggregate_reads_redacted_and_takes_no_more_events(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    await sealed.roles.events.append("a-1", [new_event(), new_event()], 0)
    await sealed.roles.snapshots.save_snapshot(Snapshot("a-1", "Thing", 2, "test.v1.State", 1, b"\x08\x02"))
    assert await sealed.keyring.forget("a-1") is True
    events = await sealed.roles.events.read_aggregate("a-1")
    assert [(e.version, e.redacted, e.payload) for e in events] == [(1, True, b""), (2, True, b"")]
    assert await sealed.roles.snapshots.load_snapshot("a-1") is None
    with pytest.raises(AggregateForgotten):
        await sealed.roles.events.append("a-1", [new_event()], 2)


async def test_another_replica_sees_the_redaction_once_its_cache_expires(store: StoreAdapter) -> None:
    """docs/security.md: each server caches unwrapped keys for 30 s, and
    notices another replica's forget within that time."""
    keys = MasterKeys.parse(OLD, source="test")
    now = [1000.0]
    here = sealed_over(store, Keyring(store, keys))
    there = sealed_over(store, Keyring(store, keys, clock=lambda: now[0]))  # the default cache time
    await here.roles.events.append("a-1", [new_event()], 0)
    assert not (await there.roles.events.read_aggregate("a-1"))[0].redacted
    await here.keyring.forget("a-1")
    now[0] += 30
    assert not (await there.roles.events.read_aggregate("a-1"))[0].redacted  # still cached there
    await there.roles.events.append("a-1", [new_event()], 1)  # and a command there could still append
    now[0] += 0.001
    assert [e.redacted for e in await there.roles.events.read_aggregate("a-1")] == [True, True]
    with pytest.raises(AggregateForgotten):
        await there.roles.events.append("a-1", [new_event()], 2)


async def test_rotating_the_master_key_rewraps_keys_and_leaves_events_alone(store: StoreAdapter) -> None:
    before = encrypting(store)
    await before.roles.events.append("a-1", [new_event(payload=b"\x08\x07")], 0)
    (stored,) = await store.read_aggregate("a-1")
    rotated = encrypting(store, f"{NEW},{OLD}")
    assert await rotated.keyring.rewrap() == 1
    assert await rotated.keyring.rewrap() == 0
    key = await store.load_data_key("a-1")
    assert key is not None
    assert key.master_key_id == "new"
    assert await store.read_aggregate("a-1") == [stored]  # not rewritten
    retired = encrypting(store, NEW)  # the old master key is gone from the configuration
    assert [e.payload for e in await retired.roles.events.read_aggregate("a-1")] == [b"\x08\x07"]


EMAIL = "users.email"


def take(value: str) -> ClaimChange:
    return ClaimChange(EMAIL, value)


async def test_claimed_values_are_hidden_in_the_store_and_found_above_it(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    await sealed.roles.events.append("u-1", [new_event()], 0, claims=[take("ann@example.com")])
    assert await sealed.roles.claims.claim_owner(EMAIL, "ann@example.com") == "u-1"
    assert await sealed.roles.claims.claim_owner(EMAIL, "bob@example.com") is None
    assert await store.claim_owner(EMAIL, "ann@example.com") is None
    assert await store.claims_in_clear(10) == []


async def test_hidden_values_stay_unique_across_replicas(store: StoreAdapter) -> None:
    keys = MasterKeys.parse(OLD, source="test")
    here, there = (sealed_over(store, Keyring(store, keys)) for _ in range(2))
    await here.roles.events.append("u-1", [new_event()], 0, claims=[take("ann@example.com")])
    with pytest.raises(NotUnique) as lost:
        await there.roles.events.append(
            "u-2", [new_event()], 0, claims=[take("x@example.com"), take("ann@example.com")]
        )
    assert lost.value.value == "ann@example.com"  # the executor names the claimant by it
    assert await there.roles.events.read_aggregate("u-2") == []
    assert await there.roles.claims.claim_owner(EMAIL, "ann@example.com") == "u-1"
    assert await there.roles.claims.claim_owner(EMAIL, "x@example.com") is None


async def test_hidden_values_survive_a_master_key_rotation(store: StoreAdapter) -> None:
    await encrypting(store).roles.events.append("u-1", [new_event()], 0, claims=[take("ann@example.com")])
    rotated = encrypting(store, f"{NEW},{OLD}")
    await rotated.keyring.rewrap()
    assert await encrypting(store, NEW).roles.claims.claim_owner(EMAIL, "ann@example.com") == "u-1"


async def test_claims_taken_before_encryption_are_hidden_and_still_held(store: StoreAdapter) -> None:
    await store.append("u-1", [new_event()], 0, claims=[take("ann@example.com")])
    sealed = encrypting(store)
    with pytest.raises(NotUnique):
        await sealed.roles.events.append("u-2", [new_event()], 0, claims=[take("ann@example.com")])
    assert await store.claims_in_clear(10) == []
    assert await sealed.roles.claims.claim_owner(EMAIL, "ann@example.com") == "u-1"
    await sealed.roles.events.append(
        "u-1", [new_event()], 1, claims=[ClaimChange(EMAIL, "ann@example.com", release=True)]
    )
    await sealed.roles.events.append("u-2", [new_event()], 0, claims=[take("ann@example.com")])


async def test_forgetting_an_aggregate_releases_its_hidden_claims(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    await sealed.roles.events.append("u-1", [new_event()], 0, claims=[take("ann@example.com")])
    assert await sealed.keyring.forget("u-1") is True
    assert await sealed.roles.claims.claim_owner(EMAIL, "ann@example.com") is None
    await sealed.roles.events.append("u-2", [new_event()], 0, claims=[take("ann@example.com")])
    assert await sealed.roles.claims.claim_owner(EMAIL, "ann@example.com") == "u-2"


async def test_a_forgotten_aggregate_takes_no_claim_even_without_events(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    await sealed.roles.events.append("u-1", [new_event()], 0)
    await sealed.keyring.forget("u-1")
    with pytest.raises(AggregateForgotten):
        await sealed.roles.events.append("u-1", [], 1, claims=[take("ann@example.com")])
    assert await sealed.roles.claims.claim_owner(EMAIL, "ann@example.com") is None


# -- command records: fingerprints and refusals sealed ---------------------------

REFUSAL = Rejection("ValidationError", "INSUFFICIENT_FUNDS", "the balance is 1234", {"balance": "1234"})


async def test_a_command_records_fingerprint_and_refusal_are_sealed_below_and_open_above(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    accepted = command_record("a-1", 1, 1)
    await sealed.roles.events.append("a-1", [new_event()], 0, commands=[accepted])
    refused = command_record("a-1", 2, 1, rejection=REFUSAL)
    await sealed.roles.events.append("a-1", [], 1, commands=[refused])
    for record in (accepted, refused):
        raw = await store.find_command(record.command_id)
        assert raw is not None
        assert record.fingerprint not in raw.fingerprint
        assert await sealed.roles.events.find_command(record.command_id) == record
    raw_refusal = (await store.find_command(refused.command_id)).rejection  # type: ignore[union-attr]
    assert raw_refusal is not None
    assert (raw_refusal.kind, raw_refusal.reason, raw_refusal.metadata) == ("ValidationError", "INSUFFICIENT_FUNDS", {})
    assert "1234" not in raw_refusal.message
    (raw_entry,) = [e for e in await store.read_audit(AuditQuery()) if e.command_id == refused.command_id]
    assert "1234" not in raw_entry.message
    (entry,) = [e for e in await sealed.roles.audit.read_audit(AuditQuery()) if e.command_id == refused.command_id]
    assert (entry.reason, entry.message) == ("INSUFFICIENT_FUNDS", "the balance is 1234")


async def test_a_sealed_record_keeps_when_it_was_issued_and_seals_its_field_violations(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    fields = Rejection(
        "ValidationError",
        "INVALID_TRANSFER",
        "the transfer is not well formed",
        violations=(("amount", "must be at most 1234"), ("target_account_id", "is required")),
    )
    refused = replace(command_record("a-1", 1, 0, rejection=fields), issued_at_us=1_767_225_600_123_456)
    await sealed.roles.events.append("a-1", [], 0, commands=[refused])
    raw = await store.find_command(refused.command_id)
    assert raw is not None and raw.rejection is not None
    assert raw.issued_at_us == 1_767_225_600_123_456
    assert raw.rejection.violations == ()  # sealed with the message, not beside it
    assert "1234" not in raw.rejection.message and "target_account_id" not in raw.rejection.message
    assert await sealed.roles.events.find_command(refused.command_id) == refused


async def test_a_sealed_refusal_does_not_open_under_another_command_id(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    refused = command_record("a-1", 1, 0, rejection=REFUSAL)
    await sealed.roles.events.append("a-1", [], 0, commands=[refused])
    raw = await store.find_command(refused.command_id)
    assert raw is not None
    await store.append("a-1", [], 0, commands=[replace(raw, command_id="copied")])
    with pytest.raises(PayloadNotDecryptable):
        await sealed.roles.events.find_command("copied")


async def test_a_forgotten_aggregates_records_can_no_longer_be_read_or_compared(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    opened = command_record("a-1", 1, 1)
    await sealed.roles.events.append("a-1", [new_event()], 0, commands=[opened])
    refused = command_record("a-1", 2, 1, rejection=REFUSAL)
    await sealed.roles.events.append("a-1", [], 1, commands=[refused])
    await sealed.keyring.forget("a-1")
    with pytest.raises(AggregateForgotten):
        await sealed.roles.events.find_command(refused.command_id)
    (entry,) = [e for e in await sealed.roles.audit.read_audit(AuditQuery()) if e.command_id == refused.command_id]
    assert (entry.outcome, entry.reason, entry.message) == ("refused", "INSUFFICIENT_FUNDS", "")


async def test_records_written_before_encryption_still_read(store: StoreAdapter) -> None:
    plain = command_record("a-1", 1, 1, rejection=REFUSAL)
    await store.append("a-1", [new_event()], 0, commands=[plain])
    assert await encrypting(store).roles.events.find_command(plain.command_id) == plain


# A dry run of a-1's refused, its message quoting the aggregate's state.
A_REFUSED_DRY_RUN = AuditEntry(
    recorded_at_us=1,
    command_id="c-1",
    command_type="test.v1.Do",
    aggregate_id="a-1",
    principal="p",
    user_id="p",
    origin="o",
    outcome="refused",
    reason="INSUFFICIENT_FUNDS",
    message="the balance is 1234",
    dry_run=True,
)


async def test_the_audits_own_entries_of_an_aggregate_with_a_key_are_sealed_too(store: StoreAdapter) -> None:
    sealed = encrypting(store)
    await sealed.roles.events.append("a-1", [new_event()], 0)
    refused = A_REFUSED_DRY_RUN
    no_key = replace(refused, aggregate_id="a-404", command_id="c-2", message="a-404 does not exist")
    await sealed.roles.audit.record_audit_entry(refused)
    await sealed.roles.audit.record_audit_entry(no_key)
    raw = {e.command_id: e for e in await store.read_audit(AuditQuery())}
    assert "1234" not in raw["c-1"].message
    assert raw["c-2"] == no_key  # nothing to forget: kept as it came
    assert sorted(await sealed.roles.audit.read_audit(AuditQuery()), key=lambda e: e.command_id) == [refused, no_key]
    await sealed.keyring.forget("a-1")
    opened = {e.command_id: e for e in await sealed.roles.audit.read_audit(AuditQuery())}
    assert opened["c-1"] == replace(refused, message="")


async def test_an_audit_entry_of_a_forgotten_aggregate_is_stored_without_its_message(store: StoreAdapter) -> None:
    # After the forget there is no key to seal a new entry's message under
    # (a dry run's refusal quoting the state, a middleware's quoting the
    # command): it must not be written in the clear either.
    sealed = encrypting(store)
    await sealed.roles.events.append("a-1", [new_event()], 0)
    await sealed.keyring.forget("a-1")
    after = A_REFUSED_DRY_RUN
    # Another replica's keyring, which never cached the aggregate, finds the forget in the store.
    for keyring in (sealed, encrypting(store)):
        await keyring.roles.audit.record_audit_entry(after)
    raw = [e for e in await store.read_audit(AuditQuery()) if e.command_id == "c-1"]
    assert raw == [replace(after, message="")] * 2  # recorded, reason and all, without the text


async def test_a_reactions_parked_commands_are_counted_under_encryption(store: StoreAdapter) -> None:
    # Their keys are keyed hashes and their contents sealed: the count goes
    # by their type, kept in the clear.
    sealed = encrypting(store)
    writes = [DocumentWrite(f"parked:c-{n}", PARKED_COMMAND_TYPE, b"\x0a\x03c-1") for n in range(3)]
    await sealed.roles.projections.commit_projection("r", expected_position=0, new_position=2, writes=writes)
    assert await store.load_document("r", "parked:c-0") is None  # stored under a hidden key
    assert await sealed.roles.projections.count_parked_commands("r") == 3
    await sealed.roles.projections.commit_projection(
        "r", expected_position=2, new_position=2, writes=[DocumentWrite("parked:c-0")]
    )
    assert await sealed.roles.projections.count_parked_commands("r") == 2


async def test_due_documents_are_sealed_and_read_back_by_their_due_time(store: StoreAdapter) -> None:
    # A reaction's deadlines: their keys (a state key may be personal) are
    # keyed hashes, their contents sealed; the runner finds them by due time
    # alone, and reads each under its stored key, what it is about inside.
    sealed = encrypting(store)
    projections = sealed.roles.projections
    writes = [
        DocumentWrite("deadline:ann@example.com:pay", "chronicle.v1.Deadline", b"ann's", ("order-1",), 200),
        DocumentWrite("deadline:bob@example.com:pay", "chronicle.v1.Deadline", b"bob's", ("order-2",), 100),
    ]
    await projections.commit_projection("r", expected_position=0, new_position=1, writes=writes)
    raw = await store.due_documents("r", until_us=10**15, limit=10)
    assert len(raw) == 2 and all(b"ann" not in d.key.encode() and b"ann's" not in d.data for d in raw)
    assert [d.data for d in await projections.due_documents("r", until_us=10**15, limit=10)] == [b"bob's", b"ann's"]
    assert [d.key for d in await projections.due_documents("r", until_us=10**15, limit=10)] == [d.key for d in raw]
    assert await projections.due_summary("r") == (2, 100)
    await projections.commit_projection(
        "r", expected_position=1, new_position=1, writes=[DocumentWrite("deadline:bob@example.com:pay")]
    )
    assert [d.data for d in await projections.due_documents("r", until_us=10**15, limit=10)] == [b"ann's"]
