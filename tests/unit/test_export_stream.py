"""Export files: length-delimited Protobuf as other languages' libraries
write it, JSON lines for people, told apart when read, and clear errors for
files that are cut short or are something else."""

from __future__ import annotations

import io
import json
import os
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from google.protobuf.internal.encoder import _VarintBytes  # type: ignore[attr-defined]

from chronicle.v1 import export_pb2
from domain_plugins.bank_account.protos.bank.v1 import bank_account_pb2 as bank
from service.errors import InvalidInput
from service.progress import Reporter
from service.store.encrypted import sealed_record
from service.store.encryption import is_sealed_fingerprint, is_sealed_text
from service.store.records import DataKey, HeldClaim, Rejection
from service.transfer import stream
from service.transfer.records import exported_claim, exported_command, exported_data_key, exported_event, stored_command
from service.transfer.restoring import only_aggregates
from tests.support.events import command_record, recorded_event


def records() -> list[export_pb2.ExportRecord]:
    deposit = recorded_event(
        "acc-1",
        1,
        event_id="00000000-0000-4000-8000-000000000001",
        event_type="bank.v1.MoneyDeposited",
        payload=bank.MoneyDeposited(amount=7).SerializeToString(),
    )
    unknown = recorded_event(
        "acc-1",
        2,
        event_id="00000000-0000-4000-8000-000000000002",
        event_type="other.v1.Unknown",
        payload=b"\x00\xffraw",
    )
    sealed = recorded_event(
        "acc-2", 1, event_id="00000000-0000-4000-8000-000000000003", payload=b"\x00C1" + b"\x01" * 40
    )
    return [
        export_pb2.ExportRecord(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1)),
        exported_data_key(DataKey("acc-2", "m1", b"k" * 40)),
        exported_event(deposit),
        exported_event(unknown),
        exported_event(sealed),
        exported_claim(HeldClaim("users.email", "\x1fhidden", "u-1")),
        export_pb2.ExportRecord(end=export_pb2.ExportEnd(events=3, claims=1, data_keys=1)),
    ]


HEADER = export_pb2.ExportRecord(header=export_pb2.ExportHeader(format="chronicle.export", format_version=1))
HEADER_LINE = bytes([HEADER.ByteSize()]) + HEADER.SerializeToString()


def written(format: str) -> bytes:
    out = io.BytesIO()
    writer = stream.Writer(out, format)
    for record in records():
        writer.write(record)
    return out.getvalue()


def read_back(data: bytes) -> list[export_pb2.ExportRecord]:
    return list(stream.read(io.BufferedReader(io.BytesIO(data))))


def test_binary_is_each_record_after_its_varint_length() -> None:
    expected = b"".join(_VarintBytes(r.ByteSize()) + r.SerializeToString() for r in records())
    assert written(stream.BINARY) == expected
    assert read_back(expected) == records()


def test_the_documented_python_reader_reads_it() -> None:
    """docs/export-format.md's loop, as printed there."""
    from google.protobuf.internal.decoder import _DecodeVarint32  # type: ignore[attr-defined]

    data = written(stream.BINARY)
    kinds = []
    at = 0
    while at < len(data):
        size, at = _DecodeVarint32(data, at)
        record = export_pb2.ExportRecord.FromString(data[at : at + size])
        at += size
        kinds.append(record.WhichOneof("record"))
    assert kinds == ["header", "data_key", "event", "event", "event", "claim", "end"]


def test_a_sealed_payload_travels_apart_and_a_clear_one_as_stored() -> None:
    _, _, deposit, _, sealed, _, _ = records()
    assert deposit.event.event.payload.value == bank.MoneyDeposited(amount=7).SerializeToString()
    assert not deposit.event.sealed_payload
    assert sealed.event.sealed_payload.startswith(b"\x00C1") and not sealed.event.event.HasField("payload")


def test_json_lines_show_known_payloads_as_json_and_keep_the_others_exact() -> None:
    data = written(stream.JSON_LINES)
    lines = [json.loads(line) for line in data.decode().splitlines()]
    assert lines[0] == {"header": {"format": "chronicle.export", "format_version": 1}}
    assert lines[2]["event"]["event"]["payload"] == {
        "@type": "type.googleapis.com/bank.v1.MoneyDeposited",
        "amount": "7",
    }
    assert lines[3]["event"]["event"]["payload"]["@base64"] == "AP9yYXc="
    assert read_back(data) == records()


def test_a_binary_file_cut_inside_a_record_is_incomplete() -> None:
    data = written(stream.BINARY)
    with pytest.raises(InvalidInput) as cut:
        read_back(data[:-3])
    assert cut.value.reason == "EXPORT_INCOMPLETE"


def records_until(data: bytes) -> tuple[list[export_pb2.ExportRecord], InvalidInput | None]:
    """The records read from ``data`` before the reader stopped, and why it stopped (None: at the end)."""
    read: list[export_pb2.ExportRecord] = []
    try:
        for record in stream.read(io.BufferedReader(io.BytesIO(data))):
            read.append(record)
    except InvalidInput as error:
        return read, error
    return read, None


@pytest.mark.parametrize("format", [stream.BINARY, stream.JSON_LINES])
def test_a_file_cut_anywhere_gives_its_whole_records_then_is_incomplete(format: str) -> None:
    """Before the fix, a JSON lines file cut inside a line was BAD_RECORD
    ("is not JSON"), as if the file held a line of something else."""
    data = written(format)
    whole = records()
    ends: set[int] = set()  # where a record ends (a JSON line's record is whole without its new line too)
    for record in whole:
        out = io.BytesIO()
        stream.Writer(out, format).write(record)
        ends.add(max(ends, default=0) + len(out.getvalue()))
    if format == stream.JSON_LINES:
        ends |= {end - 1 for end in ends}
    for cut_at in range(1, len(data)):
        read, error = records_until(data[:cut_at])
        assert read == whole[: len(read)], cut_at
        if cut_at in ends:  # between two records: the stream ends early (the importer says so)
            assert error is None, cut_at
            continue
        assert error is not None, cut_at
        if not read:  # inside the header: nothing says it is an export
            assert error.reason == "NOT_AN_EXPORT", cut_at
        else:
            assert error.reason == "EXPORT_INCOMPLETE", (cut_at, error.message)
            assert f"cut short inside record {len(read)}" in error.message


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, this is a text file\nwith two lines\n",
        b"# Network services, Internet style\ntcpmux\t\t1/tcp\n" * 20,
        b'{"hello": 1}\n',
        b'{"event": {"event": {"event_id": "x"}}}\n{"end": {}}\n',
        b'{"header": {"format": "csv"}}\n',
        b"\x05\xff\xff\xff\xff\xff",
        b"\x7f" + b"x" * 10,
        b"\xff" * 12,
        export_pb2.ExportRecord(end=export_pb2.ExportEnd()).SerializeToString(),
    ],
    ids=[
        "empty",
        "text",
        "services",
        "json",
        "json-event-first",
        "json-other-format",
        "bad-bytes",
        "short",
        "varint",
        "end-first",
    ],
)
def test_a_file_that_does_not_begin_with_an_exports_header_is_not_an_export(data: bytes) -> None:
    """Before the fix, a text file was EXPORT_INCOMPLETE, /etc/services and
    {"hello": 1} BAD_RECORD at record[0]: the docs say NOT_AN_EXPORT."""
    read, error = records_until(data)
    assert read == []
    if data:
        assert error is not None and (error.reason, error.violations) == ("NOT_AN_EXPORT", ()), error
    else:
        assert error is None  # empty: the importer says NOT_AN_EXPORT ("the stream is empty")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (HEADER_LINE + b"\x05\xff\xff\xff\xff\xff", "record[1]"),
        (b'{"header": {"format": "chronicle.export"}}\nnot json\n', "record[1]"),
        (b'{"header": {"format": "chronicle.export"}}\n{"event": {"nope": 1}}\n', "record[1]"),
    ],
)
def test_what_is_not_an_export_record_is_named(data: bytes, field: str) -> None:
    with pytest.raises(InvalidInput) as bad:
        read_back(data)
    assert (bad.value.reason, [v.field for v in bad.value.violations]) == ("BAD_RECORD", [field])


def test_progress_without_a_terminal_is_plain_lines() -> None:
    out = io.StringIO()
    reporter = Reporter("import", total=1000, unit="bytes", stream=out, interval=0.0)
    reporter.update(250)
    reporter.close("done: 3 events written")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("import: 250 B of 1,000 B, ") and "25%" in lines[0] and "ETA 0:" in lines[0]
    assert lines[-1] == "import: done: 3 events written"
    assert "\x1b" not in out.getvalue()


@pytest.mark.parametrize("format", [stream.BINARY, stream.JSON_LINES])
def test_a_command_record_sealed_at_rest_travels_exactly_as_stored(format: str) -> None:
    # With encryption at rest its fingerprint and its refusal's text are
    # sealed under the aggregate's key; they must come back byte for byte,
    # or the target cannot open them (and tell a retry from a reused id).
    cipher = AESGCM(os.urandom(32))
    record = sealed_record(
        cipher,
        command_record(
            "acc-1", 3, 2, rejection=Rejection("ValidationError", "INSUFFICIENT_FUNDS", "balance 12", {"b": "12"})
        ),
    )
    assert is_sealed_fingerprint(record.fingerprint) and record.rejection is not None
    assert is_sealed_text(record.rejection.message)
    out = io.BytesIO()
    writer = stream.Writer(out, format)
    writer.write(HEADER)
    writer.write(exported_command(record))
    _, back = read_back(out.getvalue())
    assert stored_command(back.command, "record[0].command") == record


@pytest.mark.parametrize("format", [stream.BINARY, stream.JSON_LINES])
def test_a_command_record_keeps_when_it_was_issued_and_the_fields_its_refusal_named(format: str) -> None:
    refused = Rejection("ValidationError", "INVALID", "two fields", {}, (("amount", "negative"), ("to", "empty")))
    record = replace(command_record("acc-1", 3, 2, rejection=refused), recorded_at_us=2_000_000, issued_at_us=1_500_001)
    unknown = replace(command_record("acc-1", 1, 1), recorded_at_us=2_000_000)  # written before it was kept
    out = io.BytesIO()
    writer = stream.Writer(out, format)
    writer.write(HEADER)
    writer.write(exported_command(record))
    writer.write(exported_command(unknown))
    _, first, second = read_back(out.getvalue())
    assert stored_command(first.command, "record[0].command") == record
    assert not second.command.HasField("issued_at")
    assert stored_command(second.command, "record[1].command") == unknown


def test_choosing_aggregates_counts_what_passes_and_still_tells_a_stream_missing_records() -> None:
    header, key, deposit, unknown, sealed, claim, end = records()
    chosen = list(only_aggregates([header, key, deposit, unknown, sealed, claim, end], set(), leaving_out={"acc-1"}))
    assert chosen[1:-1] == [key, sealed, claim]
    assert chosen[-1].end == export_pb2.ExportEnd(events=1, claims=1, data_keys=1)
    # An end announcing what did not come is not replaced by a count of what passed.
    with pytest.raises(InvalidInput) as incomplete:
        list(only_aggregates([header, key, deposit, sealed, claim, end], {"acc-2"}))
    assert incomplete.value.reason == "EXPORT_INCOMPLETE"
