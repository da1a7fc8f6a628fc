"""`chronicle import FILE --database-url` on files that are not whole
exports, as docs/export-format.md says: a file cut short anywhere (inside a
binary record, inside a JSON line) is EXPORT_INCOMPLETE after writing the
whole records before the cut, and finishes when the whole export is
imported; a file that is not an export at all is NOT_AN_EXPORT, and writes
nothing. The command line runs in-process (``cli.main``)."""

from __future__ import annotations

import asyncio
import io
from collections import Counter
from pathlib import Path

import pytest

from chronicle.v1 import export_pb2
from service import cli
from service.store.memory import MemoryStore
from service.store.records import HeldClaim, LogFilter
from service.store.sqlite import SqliteStore
from service.transfer import stream
from service.transfer.records import end_record, exported_claim, exported_event
from tests.support.events import account_event
from tests.support.grpc_client import running_server

EVENTS = 40


def export_of(format: str) -> tuple[bytes, list[int]]:
    """An export of 40 events and a claim, and where each record ends in it."""
    records = [exported_event(account_event(f"acc-{n % 4}", n // 4 + 1)) for n in range(EVENTS)]
    records.append(exported_claim(HeldClaim("users.email", "ann@example.com", "acc-1")))
    header = export_pb2.ExportRecord(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
    whole = [header, *records, end_record(Counter(r.WhichOneof("record") or "" for r in records))]
    out = io.BytesIO()
    writer = stream.Writer(out, format)
    ends = []
    for record in whole:
        writer.write(record)
        ends.append(len(out.getvalue()))
    return out.getvalue(), ends


async def events_in(path: Path) -> int:
    store = SqliteStore(path)
    await store.open()
    try:
        return len((await store.read_log(0, LogFilter(), 10_000)).events)
    finally:
        await store.close()


async def imported(file: Path, database: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    argv = ["import", str(file), "--database-url", f"sqlite:///{database}", "--quiet"]
    status = await asyncio.to_thread(cli.main, argv)
    return status, capsys.readouterr().err


@pytest.mark.parametrize("format", ["binary", "jsonl"])
async def test_a_file_cut_short_writes_the_records_before_the_cut_and_finishes_when_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], format: str
) -> None:
    """Before the fix: EXPORT_INCOMPLETE with 0 events written (binary), or
    BAD_RECORD "record[31]: is not JSON" and 0 written (JSON lines)."""
    data, ends = export_of(format)
    cut = tmp_path / f"cut.{format}"
    cut.write_bytes(data[: ends[30] + 5])  # inside record 31: the header and 30 events are whole
    database = tmp_path / "target.db"

    status, err = await imported(cut, database, capsys)
    assert status == 2
    assert err.startswith("error: EXPORT_INCOMPLETE: the export is cut short inside record 31"), err
    assert "the 31 records before it were imported" in err
    assert await events_in(database) == 30

    whole = tmp_path / f"whole.{format}"
    whole.write_bytes(data)
    status, err = await imported(whole, database, capsys)
    assert (status, err) == (0, "")
    assert await events_in(database) == EVENTS


@pytest.mark.parametrize(
    "content",
    [
        b"hello, this is a text file\nwith two lines\n",
        b"# Network services, Internet style\n#\ntcpmux\t\t1/tcp\t\t\t\t# TCP port service multiplexer\n" * 50,
        b'{"hello": 1}\n',
        b"",
    ],
    ids=["text", "services", "json", "empty"],
)
async def test_a_file_that_is_not_an_export_is_not_an_export(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    """Before the fix: EXPORT_INCOMPLETE for the text, BAD_RECORD record[0]
    for /etc/services and for {"hello": 1}."""
    file = tmp_path / "not-an-export"
    file.write_bytes(content)
    status, err = await imported(file, tmp_path / "target.db", capsys)
    assert status == 2
    assert err.startswith("error: NOT_AN_EXPORT: "), err
    assert await events_in(tmp_path / "target.db") == 0


@pytest.mark.parametrize("format", ["binary", "jsonl"])
async def test_through_a_server_a_file_cut_short_is_said_and_what_came_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], format: str
) -> None:
    """The client ends the call's stream where the file stops; the server
    writes what came, and the file's error is what the command says."""
    data, ends = export_of(format)
    cut = tmp_path / f"cut.{format}"
    cut.write_bytes(data[: ends[30] + 5])
    store = MemoryStore()
    async with running_server(store, anonymous_admin=True) as (app, _):
        argv = ["import", str(cut), "--server", app.address, "--quiet"]
        status = await asyncio.to_thread(cli.main, argv)
        err = capsys.readouterr().err
        assert status == 2
        assert err.startswith("error: EXPORT_INCOMPLETE: the export is cut short inside record 31"), err
        assert "the records before it were imported" in err
        assert len((await store.read_log(0, LogFilter(), 100)).events) == 30


async def test_a_json_lines_export_that_begins_with_a_byte_order_mark_is_read_as_without_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Saved by an editor that writes a UTF-8 BOM: before, taken for the
    binary format (NOT_AN_EXPORT "announces a record of 258989551 bytes")."""
    data, _ = export_of("jsonl")
    file = tmp_path / "bom.jsonl"
    file.write_bytes(b"\xef\xbb\xbf" + data)
    status, err = await imported(file, tmp_path / "target.db", capsys)
    assert status == 0, err
    assert await events_in(tmp_path / "target.db") == EVENTS


async def test_a_json_lines_event_of_a_type_no_plugin_declares_is_unknown_event_type(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As docs/migration.md promises: before, BAD_RECORD with Protobuf's
    "Can not find message descriptor by type_url" text."""
    data, _ = export_of("jsonl")
    lines = data.decode().splitlines(keepends=True)
    lines[3] = lines[3].replace("bank.v1.AccountOpened", "bank.v1.AccountOpenned")  # acc-2's first event
    file = tmp_path / "typo.jsonl"
    file.write_text("".join(lines))
    status, err = await imported(file, tmp_path / "target.db", capsys)
    assert status == 2, err
    assert err.startswith("error: UNKNOWN_EVENT_TYPE: record[3]: event "), err
    assert "no loaded plugin declares event type 'bank.v1.AccountOpenned'" in err, err
    assert "Can not find" not in err
    assert await events_in(tmp_path / "target.db") == 2  # the records before it
