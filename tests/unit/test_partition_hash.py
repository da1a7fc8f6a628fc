"""The partition hash, against the test vectors docs/scaling.md publishes
for clients in other languages, and against a CRC-32 written out bit by bit
here (a witness that does not share zlib with the code under test)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.cluster.hashing import partition_of

DOCS = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"
ROW = re.compile(r"^\| `([^`]*)` \| `([0-9a-f]*)` \| `([0-9a-f]{8})` \| (\d+) \| (\d+) \| (\d+) \|$", re.MULTILINE)


def vectors() -> list[tuple[str, str, str, int, int, int]]:
    found = [(a, b, c, int(d), int(e), int(f)) for a, b, c, d, e, f in ROW.findall(DOCS.read_text())]
    assert len(found) >= 10, "the test vectors table of docs/scaling.md was not found"
    return found


def crc32_bitwise(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def test_the_witness_is_the_standard_crc32() -> None:
    assert crc32_bitwise(b"123456789") == 0xCBF43926  # the published check value
    assert crc32_bitwise(b"") == 0


@pytest.mark.parametrize(("aggregate_id", "utf8", "crc", "of64", "of16", "of1024"), vectors())
def test_each_published_vector_holds(aggregate_id: str, utf8: str, crc: str, of64: int, of16: int, of1024: int) -> None:
    assert aggregate_id.encode("utf-8") == bytes.fromhex(utf8)
    assert crc32_bitwise(bytes.fromhex(utf8)) == int(crc, 16)
    value = int(crc, 16)
    assert (value % 64, value % 16, value % 1024) == (of64, of16, of1024)
    assert (partition_of(aggregate_id, 64), partition_of(aggregate_id, 16), partition_of(aggregate_id, 1024)) == (
        of64,
        of16,
        of1024,
    )


def test_sequential_ids_spread_evenly() -> None:
    """What docs/scaling.md says of acc-1 … acc-10000 over 64 partitions."""
    counts = [0] * 64
    for n in range(1, 10001):
        counts[partition_of(f"acc-{n}", 64)] += 1
    assert (min(counts), max(counts)) == (149, 164)
