"""An import that writes nothing before it has read and checked the whole
stream: how ``--overwrite`` imports.

An import writes batch by batch (importer.py), so one stopped by a bad
record, a stream cut short or a dropped connection has written the batches
before: run again, it writes the rest. That is harmless when it only adds
what is missing, and not when it replaces: an overwrite import that stopped
half way left the target with some aggregates replaced by the stream's
history and others not, the operator's decision half carried out. So an
overwrite import runs twice over the stream: first an importer that only
checks (``Importer(checking_only=True)``: each record, the end's counts,
and what the batches would remove: a forgotten aggregate, a place another
import wrote), the stream kept on disk meanwhile (``RecordSpool``); then,
once the whole stream passed, the real import of what was kept. Anything
the first pass refuses, and a stream that ends without its end record,
leaves the target exactly as it was. The writing, once begun, is not
stopped by its caller's leaving (``finish``).

What only writing finds (a claim another aggregate holds, an event id held
elsewhere) still stops the second pass after the batches before it, as the
store's outage or the server's death does: see docs/migration.md for what
each leaves.
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections.abc import AsyncIterable, Callable, Iterable, Iterator

from chronicle.v1 import export_pb2
from service.errors import InvalidInput
from service.transfer.importer import Importer, ImportSummary

log = logging.getLogger(__name__)

_LENGTH_BYTES = 4


class RecordSpool:
    """Records kept in a temporary file in the order given, to be read back
    (the file is gone once closed, or when the process ends)."""

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 (closed by close(), the spool's owner's)

    def append(self, record: export_pb2.ExportRecord) -> None:
        data = record.SerializeToString()
        self._file.write(len(data).to_bytes(_LENGTH_BYTES, "big"))
        self._file.write(data)

    def records(self) -> Iterator[export_pb2.ExportRecord]:
        self._file.flush()
        self._file.seek(0)
        while length := self._file.read(_LENGTH_BYTES):
            yield export_pb2.ExportRecord.FromString(self._file.read(int.from_bytes(length, "big")))

    def close(self) -> None:
        self._file.close()


# Makes an importer of the import's options: one that only checks (True), or the one that writes.
MakeImporter = Callable[[bool], Importer]


class CheckedFirst:
    """``Importer``'s ``add``, ``finish``, ``run`` and ``run_file``, writing
    only once the whole stream was read and checked."""

    def __init__(self, make: MakeImporter) -> None:
        self._make = make
        self._checker = make(True)
        self._spool = RecordSpool()
        self._writer: Importer | None = None
        self._writing: asyncio.Task[None] | None = None

    @property
    def summary(self) -> ImportSummary:
        """What the import wrote (what the check read, before it writes)."""
        return (self._writer or self._checker).summary

    async def add(self, record: export_pb2.ExportRecord) -> None:
        try:
            await self._checker.add(record)
        except BaseException:
            self._spool.close()
            raise
        self._spool.append(record)

    async def finish(self) -> None:
        """Check the end of the stream, then write it all. The writing, once
        begun, runs to its end even if the caller goes away meanwhile (a
        client that lost its connection after sending the end record, a
        CLI stopped with ^C): stopped half way it would leave the target
        half overwritten; its outcome then goes to the log."""
        try:
            await self._checker.finish()
        except BaseException:
            self._spool.close()
            raise
        self._writing = asyncio.get_running_loop().create_task(self._write_all())
        try:
            await asyncio.shield(self._writing)
        except asyncio.CancelledError:
            if not self._writing.done():
                log.warning("the caller of an overwrite import left while it was writing: it goes on to its end")
                self._writing.add_done_callback(_said)
            raise

    async def _write_all(self) -> None:
        try:
            self._writer = self._make(False)
            for record in self._spool.records():
                await self._writer.add(record)
            await self._writer.finish()
        finally:
            self._spool.close()

    def close(self) -> None:
        """Let the kept stream go (an import abandoned before ``finish``:
        its caller went away), unless it is being written."""
        if self._writing is None:
            self._spool.close()

    async def run(self, records: AsyncIterable[export_pb2.ExportRecord]) -> ImportSummary:
        async for record in records:
            await self.add(record)
        await self.finish()
        return self.summary

    async def run_file(self, records: Iterable[export_pb2.ExportRecord]) -> ImportSummary:
        """As ``Importer.run_file``, but a file that cannot be read on has
        had nothing of it written."""
        iterator = iter(records)
        while True:
            try:
                record = next(iterator)
            except StopIteration:
                break
            except InvalidInput as unreadable:
                self._spool.close()
                _nothing_written(unreadable)
                raise
            await self.add(record)
        await self.finish()
        return self.summary


def _said(writing: asyncio.Task[None]) -> None:
    """Log the outcome of an overwrite import whose caller left while it wrote."""
    if writing.cancelled():
        log.warning("an overwrite import whose caller left was stopped while writing (the server stopping?)")
    elif (failed := writing.exception()) is not None:
        log.warning("an overwrite import whose caller left failed while writing: %s", failed)
    else:
        log.warning("an overwrite import whose caller left has written the whole stream")


def _nothing_written(refused: InvalidInput) -> None:
    refused.message += (
        "; nothing was written (an import with --overwrite writes only a stream it read whole): import the whole"
        " export again"
    )
    refused.args = (refused.message,)
