"""Everything a store holds, as a multiset of rows per table, so that a
contract test can check that an operation changed nothing, or exactly what
it should: a stray command record, claim or data key shows.

A store's own test suite reads below the store (its tables); the contract
suite's default reads what every store can show through its roles
(``public_contents``): the log, command records, claims, snapshots, data
keys and the audit log. Projection documents cannot be listed that way: a
store that wants them compared gives a ``contents`` fixture of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from service.store.base import AuditQuery, StoreAdapter
from service.store.records import LogFilter

# Where appending events shows, and nothing else: the events themselves
# (the memory store's indexes of them) and PostgreSQL's head of the log.
EVENT_TABLES = frozenset({"events", "events_by_aggregate", "event_ids", "log_head"})
PAGE = 1000
K = TypeVar("K")
R = TypeVar("R")


@dataclass(frozen=True)
class Change:
    """The rows of one table that appeared and disappeared, as text."""

    added: list[str]
    removed: list[str]


@dataclass(frozen=True)
class Contents:
    """Each table's rows, as a multiset of their text."""

    tables: Mapping[str, Counter[str]]

    def changes_since(self, before: Contents) -> dict[str, Change]:
        """The tables whose rows differ from ``before``'s, and how."""
        changes = {}
        for table in sorted(set(self.tables) | set(before.tables)):
            now, then = self.tables.get(table, Counter()), before.tables.get(table, Counter())
            if now != then:
                changes[table] = Change(sorted((now - then).elements()), sorted((then - now).elements()))
        return changes


# A contract test's view of its store: ``await contents()``.
ContentsOf = Callable[[], Awaitable[Contents]]


async def public_contents(store: StoreAdapter) -> Contents:
    """What ``store`` holds, as its roles show it."""
    tables: dict[str, Counter[str]] = {}
    events: list[str] = []
    after = 0
    while True:
        page = await store.read_log(after, LogFilter(), PAGE)
        events += [repr(e) for e in page.events]
        if page.scanned_to <= after or not page.events:
            break
        after = page.scanned_to
    tables["events"] = Counter(events)
    commands = await _all(store.commands_page, "", lambda c: c.command_id)
    claims = await _all(lambda after, n: store.claims_page(after, n), ("", ""), lambda c: (c.scope, c.value))
    snapshots = await _all(
        lambda after, n: store.snapshots_page(after, n), ("", 0), lambda s: (s.aggregate_id, s.version)
    )
    keys = await _all(store.data_keys_page, "", lambda k: k.aggregate_id)
    tables["commands"] = Counter(repr(c) for c in commands)
    tables["claims"] = Counter(repr(c) for c in claims)
    tables["snapshots"] = Counter(repr(s) for s in snapshots)
    tables["data_keys"] = Counter(repr(k) for k in keys)
    tables["audit"] = Counter(repr(e) for e in await store.read_audit(AuditQuery(limit=1_000_000)))
    return Contents(tables)


async def _all(page: Callable[[K, int], Awaitable[list[R]]], start: K, key: Callable[[R], K]) -> list[R]:
    """Every row of a paged read, ``key`` giving the next page's start."""
    found: list[R] = []
    after = start
    while rows := await page(after, PAGE):
        found += rows
        after = key(rows[-1])
    return found
