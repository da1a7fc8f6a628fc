"""An import that stops anywhere resumes: the Importer writes whole batches
(one transaction each) on every store, so running it again after a failure
writes exactly what is missing, and the store ends as one clean import
leaves it."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from chronicle.v1 import export_pb2
from service.errors import StoreUnavailable
from service.store.base import Store, StoreAdapter
from service.store.records import ClaimChange, LogFilter, RecordedEvent
from service.store.sqlite import SqliteStore
from service.transfer.exporter import Exporter, ExportSelection
from service.transfer.importer import Importer
from tests.support.events import command_record, new_event


class FailingTransfer:
    """The store's transfer role, failing its ``fail_at``-th write of events
    (the connection lost mid-import, say)."""

    def __init__(self, inner: StoreAdapter, fail_at: int) -> None:
        self._inner = inner
        self._fail_at = fail_at
        self.calls = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    async def import_events(self, events: Sequence[RecordedEvent]) -> int:
        self.calls += 1
        if self.calls == self._fail_at:
            raise StoreUnavailable("the database went away")
        return await self._inner.import_events(events)


async def records_of(store: StoreAdapter) -> list[export_pb2.ExportRecord]:
    return [r async for r in Exporter(Store.of(store), source="test").records(ExportSelection(commands=True))]


async def replayed(records: list[export_pb2.ExportRecord]) -> AsyncIterator[export_pb2.ExportRecord]:
    for record in records:
        yield record


async def source(tmp_path: Path) -> list[export_pb2.ExportRecord]:
    """A store of 23 events over 5 aggregates, interleaved, with claims and
    command records, exported."""
    store = SqliteStore(tmp_path / "source.db")
    await store.open()
    try:
        versions = dict.fromkeys(range(5), 0)
        for n in range(23):
            aggregate = n % 5
            await store.append(
                f"a-{aggregate}",
                [new_event()],
                versions[aggregate],
                commands=[command_record(f"a-{aggregate}", versions[aggregate] + 1, versions[aggregate] + 1)],
                claims=[ClaimChange("names", f"name-{aggregate}")] if versions[aggregate] == 0 else [],
            )
            versions[aggregate] += 1
        return await records_of(store)
    finally:
        await store.close()


async def log_of(store: StoreAdapter) -> list[RecordedEvent]:
    return list((await store.read_log(0, LogFilter(), 1000)).events)


async def test_an_import_failing_mid_way_resumes_where_it_stopped(store: StoreAdapter, tmp_path: Path) -> None:
    records = await source(tmp_path)
    failing = FailingTransfer(store, fail_at=3)
    importer = Importer(dataclasses.replace(Store.of(store), transfer=failing), batch_size=4)  # type: ignore[arg-type]
    with pytest.raises(StoreUnavailable):
        await importer.run(replayed(records))
    assert len(await log_of(store)) == 8  # two whole batches, nothing of the third

    again = await Importer(Store.of(store), batch_size=4).run(replayed(records))
    assert (again.written["event"], again.events_skipped) == (15, 8)
    assert again.complete

    clean = SqliteStore(tmp_path / "clean.db")
    await clean.open()
    try:
        await Importer(Store.of(clean)).run(replayed(records))
        # Record for record the same store, the headers' export times apart.
        assert (await records_of(store))[1:] == (await records_of(clean))[1:]
    finally:
        await clean.close()
