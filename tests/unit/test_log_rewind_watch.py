"""The server's memory of its log's end (service/processing/log_rewinds.py):
one WARNING and one count per rewind, whoever finds it first."""

from __future__ import annotations

import logging
from typing import cast

import pytest

from service.processing.log_rewinds import LogRewindWatch
from service.store.base import LogReader


class Head:
    """A log reader that answers only its head."""

    def __init__(self, head: int) -> None:
        self.head = head

    async def log_head(self) -> int:
        return self.head


def watching(log: Head) -> tuple[LogRewindWatch, list[None]]:
    counted: list[None] = []
    return LogRewindWatch(cast(LogReader, log), interval=60, on_rewind=lambda: counted.append(None)), counted


async def test_a_head_below_the_highest_seen_is_one_rewind(caplog: pytest.LogCaptureFixture) -> None:
    log = Head(8)
    watch, counted = watching(log)
    assert await watch.look() == 8
    log.head = 5
    caplog.set_level(logging.WARNING, logger="service.processing.log_rewinds")
    await watch.look()
    await watch.look()  # the same rewind, looked at again
    log.head = 6
    await watch.look()  # written on since: no rewind
    assert len(counted) == 1
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "the log went back from 8 to 5 (the highest end this server saw of it, and its end now)"
    ]


async def test_a_reader_finding_a_rewind_the_head_showed_adds_nothing() -> None:
    log = Head(8)
    watch, counted = watching(log)
    await watch.look()
    log.head = 5
    await watch.look()
    watch.went_back(7, 10)  # a group's session that had read up to 7, after writes past it
    assert len(counted) == 1


async def test_a_rewind_written_past_before_a_look_is_counted_once_by_its_readers() -> None:
    log = Head(8)
    watch, counted = watching(log)
    await watch.look()
    log.head = 10  # back to 5, then written past 8 before the watch looked
    watch.went_back(8, 10)
    watch.went_back(6, 10)  # another group, lost in the same rewind
    await watch.look()  # the head above all it saw: nothing more
    assert len(counted) == 1
    log.head = 4  # a second failover later
    await watch.look()
    assert len(counted) == 2
