"""Export files: writing a stream of records to one (complete or not at
all: a file is written beside its name and renamed when its end record is
in it, synced to disk), and reading one back with how far the reader got,
for the progress shown."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from google.protobuf import descriptor_pool

from chronicle.v1 import export_pb2
from service.errors import InvalidInput
from service.progress import Reporter
from service.transfer import stream

STDIO = "-"


def format_for(path: str, chosen: str | None) -> str:
    """The format asked for, else JSON lines for a ``.jsonl`` file, else binary."""
    if chosen:
        return chosen
    return stream.JSON_LINES if path.endswith(".jsonl") else stream.BINARY


@contextlib.contextmanager
def output(path: str) -> Iterator[BinaryIO]:
    """Standard output for ``-``; else ``path``, written as ``path.partial``
    and renamed (after an fsync) only if the block ends without error. The
    file is its owner's alone (0600): an export holds every payload, in the
    clear where the store does not encrypt them, and its users' ids."""
    if path == STDIO:
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    if target.is_dir():
        raise cannot_write(path, "it is a folder; give a file's name in it")
    try:
        partial.unlink(missing_ok=True)  # a partial file left by a crash keeps its mode otherwise
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as error:
        raise cannot_write(path, _why(error, target)) from None
    with os.fdopen(descriptor, "wb") as out:
        try:
            yield out
            out.flush()
            os.fsync(out.fileno())
        except BaseException:
            out.close()
            partial.unlink(missing_ok=True)
            raise
    partial.replace(target)
    _sync_folder(target.parent)


def cannot_write(path: str | Path, why: str) -> InvalidInput:
    return InvalidInput(f"cannot write {path}: {why}", reason="FILE_NOT_WRITABLE", metadata={"file": str(path)})


def cannot_read(path: str | Path, why: str) -> InvalidInput:
    return InvalidInput(f"cannot read {path}: {why}", reason="FILE_NOT_READABLE", metadata={"file": str(path)})


def _why(error: OSError, path: Path) -> str:
    """What is wrong with ``path``, in words (a missing folder named)."""
    if isinstance(error, FileNotFoundError) and not path.parent.exists():
        return f"the folder {path.parent} does not exist"
    if isinstance(error, NotADirectoryError):
        return f"{path.parent} is not a folder"
    return error.strerror.lower() if error.strerror else str(error)


def make_folder(folder: Path) -> None:
    """``folder`` and the folders above it, made where missing."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise cannot_write(folder, "it is a file, not a folder") from None
    except OSError as error:
        raise cannot_write(folder, _why(error, folder)) from None


def _sync_folder(folder: Path) -> None:
    """Make the rename itself durable."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_all(
    records: Iterable[export_pb2.ExportRecord], writer: stream.Writer, reporter: Reporter | None
) -> dict[str, int]:
    """Write ``records`` and count them by kind; the reporter follows the
    events against the header's log head."""
    counts: dict[str, int] = {}
    for record in records:
        writer.write(record)
        kind = record.WhichOneof("record") or ""
        counts[kind] = counts.get(kind, 0) + 1
        if reporter is not None and kind == "event":
            reporter.update(record.event.event.position)
    return counts


class Source:
    """An export being read from a file or standard input: its records, and
    how many bytes were read so far (``total`` is None for a pipe)."""

    def __init__(self, path: str, *, pool: descriptor_pool.DescriptorPool | None = None) -> None:
        try:
            self._file: BinaryIO = sys.stdin.buffer if path == STDIO else open(path, "rb")  # noqa: SIM115
        except IsADirectoryError:
            raise cannot_read(path, "it is a folder, not an export file") from None
        except OSError as error:
            raise cannot_read(path, _why(error, Path(path))) from None
        self._pool = pool
        self.total: int | None = None
        if path != STDIO:
            self.total = os.fstat(self._file.fileno()).st_size

    @property
    def position(self) -> int:
        try:
            return self._file.tell()
        except OSError:  # a pipe
            return 0

    def records(self) -> Iterator[export_pb2.ExportRecord]:
        return stream.read(self._file, pool=self._pool)

    def close(self) -> None:
        if self._file is not sys.stdin.buffer:
            self._file.close()
