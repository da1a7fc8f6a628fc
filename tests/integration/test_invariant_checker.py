"""The invariant checker catches what it claims to: a history it accepts,
and the same history with one promise broken behind its back."""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import psycopg
import pytest

from domain_plugins import bank_account
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.plugins.registry import Registry
from service.store.postgres import PostgresStore
from tests.support.grpc_client import command, details_of, running_server
from tests.support.history import History, SubscriberLog, check_invariants, stored_events

pytestmark = pytest.mark.postgres

REGISTRY = Registry([bank_account.plugin])


@dataclass
class Recorded:
    history: History
    url: str


@pytest.fixture
async def recorded(postgres_url: str) -> Recorded:
    """acc-1: opened, +100, -30, a refused -500 (recorded), +5."""
    history = History()
    store = PostgresStore(postgres_url, pool_size=2)
    async with running_server(store) as (_, client):
        for message in (
            bank.OpenAccount(owner="ann"),
            bank.Deposit(amount=100),
            bank.Withdraw(amount=30),
            bank.Withdraw(amount=500),
            bank.Deposit(amount=5),
        ):
            op = history.begin("acc-1", message)
            try:
                history.ok(op, await client.submit(command("acc-1", message, command_id=op.command_id)))
            except grpc.aio.AioRpcError as error:
                history.refused(op, details_of(error).reason)
    return Recorded(history, postgres_url)


def tamper(url: str, sql: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql)


def subscriber_of(url: str, deliveries: list[tuple[int, str]] | None = None) -> SubscriberLog:
    log = SubscriberLog("s")
    log.deliveries = deliveries if deliveries is not None else [(e.position, e.event_id) for e in stored_events(url)]
    return log


def test_a_faithful_history_passes(recorded: Recorded) -> None:
    states = check_invariants(recorded.history, recorded.url, REGISTRY, subscribers=[subscriber_of(recorded.url)])
    assert states["acc-1"].balance == 75  # type: ignore[attr-defined]


def test_a_lost_acknowledged_event_is_caught(recorded: Recorded) -> None:
    tamper(recorded.url, "DELETE FROM chronicle.events WHERE version = 4")
    with pytest.raises(AssertionError, match="acknowledged command"):
        check_invariants(recorded.history, recorded.url, REGISTRY)


def test_a_refused_command_that_wrote_is_caught(recorded: Recorded) -> None:
    (refused,) = [op for op in recorded.history.operations.values() if op.outcome == "refused"]
    tamper(
        recorded.url,
        "INSERT INTO chronicle.events (position, event_id, aggregate_id, aggregate_type, version, event_type,"
        " schema_version, payload, metadata, command_id, user_id, origin, correlation_id, causation_id, recorded_at)"
        " SELECT position + 1, gen_random_uuid(), aggregate_id, aggregate_type, version + 1, event_type,"
        f" schema_version, payload, metadata, '{refused.command_id}', user_id, origin, correlation_id, causation_id,"
        " recorded_at FROM chronicle.events WHERE version = 4",
    )
    with pytest.raises(AssertionError, match="refused command"):
        check_invariants(recorded.history, recorded.url, REGISTRY)


def test_a_decision_on_a_stale_state_is_caught(recorded: Recorded) -> None:
    # The withdrawal of 30 stored as one of 300: more than the balance, which
    # only a command decided on a stale state could have produced.
    stale = bank.MoneyWithdrawn(amount=300).SerializeToString().hex()
    tamper(recorded.url, f"UPDATE chronicle.events SET payload = '\\x{stale}' WHERE version = 3")
    with pytest.raises(AssertionError, match="serial replay"):
        check_invariants(recorded.history, recorded.url, REGISTRY)


def test_a_command_nobody_sent_is_caught(recorded: Recorded) -> None:
    del recorded.history.operations[next(iter(recorded.history.operations))]
    with pytest.raises(AssertionError, match="never sent"):
        check_invariants(recorded.history, recorded.url, REGISTRY)


def test_a_subscriber_that_missed_an_event_is_caught(recorded: Recorded) -> None:
    everything = subscriber_of(recorded.url).deliveries
    with pytest.raises(AssertionError, match="never received"):
        check_invariants(
            recorded.history, recorded.url, REGISTRY, subscribers=[subscriber_of(recorded.url, everything[:-1])]
        )


def test_a_subscriber_that_skipped_and_got_the_event_later_is_caught(recorded: Recorded) -> None:
    first, second, *rest = subscriber_of(recorded.url).deliveries
    with pytest.raises(AssertionError, match="skipped"):
        check_invariants(
            recorded.history, recorded.url, REGISTRY, subscribers=[subscriber_of(recorded.url, [second, first, *rest])]
        )


def test_a_subscriber_that_got_events_again_after_reconnecting_passes(recorded: Recorded) -> None:
    deliveries = subscriber_of(recorded.url).deliveries
    again = deliveries[:3] + deliveries[1:]  # resumed from an older position
    check_invariants(recorded.history, recorded.url, REGISTRY, subscribers=[subscriber_of(recorded.url, again)])
