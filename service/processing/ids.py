"""Event ids: UUIDv7 (RFC 9562), made by the server.

48 bits of Unix milliseconds, the version, a 12-bit counter, the variant and
62 random bits. Time-ordered: the events table's unique index on event_id
grows at its right edge, where random (version 4) ids touched a random leaf
page per event (more pages to keep in memory, and after every checkpoint a
full-page image in the write-ahead log for each page touched first). An id
also tells roughly when its event was made.

Within one process ids only increase (RFC 9562's method 1: the counter
orders ids of the same millisecond, and a full counter borrows the next
millisecond). Across replicas, the 62 random bits keep ids apart. Made on the
event loop's thread only, like the commands that need them.
"""

from __future__ import annotations

import os
import time

_RANDOM_BYTES = 8 * 512  # random bits are read from the OS this many bytes at a time


class EventIds:
    def __init__(self) -> None:
        self._last_ms = 0
        self._counter = 0
        self._random = b""
        self._offset = 0

    def _random_bits(self) -> int:
        if self._offset >= len(self._random):
            self._random = os.urandom(_RANDOM_BYTES)
            self._offset = 0
        chunk = self._random[self._offset : self._offset + 8]
        self._offset += 8
        return int.from_bytes(chunk, "big") & 0x3FFF_FFFF_FFFF_FFFF

    def next(self) -> str:
        """A new id, greater than every id this object made before."""
        now_ms = time.time_ns() // 1_000_000
        if now_ms > self._last_ms:
            self._last_ms = now_ms
            self._counter = 0
        else:
            self._counter += 1
            if self._counter > 0xFFF:  # 4,096 ids in one millisecond: borrow the next one
                self._last_ms += 1
                self._counter = 0
        value = (self._last_ms << 80) | (0x7 << 76) | (self._counter << 64) | (0b10 << 62) | self._random_bits()
        text = f"{value:032x}"
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


new_event_id = EventIds().next
