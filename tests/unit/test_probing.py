"""``service.store.probing``: a ping's answer, whatever the ping does."""

from __future__ import annotations

import asyncio

import pytest

from service.errors import StoreUnavailable
from service.store.probing import probe, why


async def test_a_ping_that_answers_is_none() -> None:
    async def ping() -> None:
        await asyncio.sleep(0)

    assert await probe(ping, within=1.0) is None


async def test_a_ping_that_does_not_answer_in_time_is_a_timeout() -> None:
    async def ping() -> None:
        await asyncio.Event().wait()

    failure = await probe(ping, within=0.01)
    assert isinstance(failure, TimeoutError)
    assert why(failure) == "TimeoutError"


async def test_any_failure_is_an_answer_named_by_its_message_or_its_type() -> None:
    async def refused() -> None:
        raise StoreUnavailable("the database is away")

    async def broken() -> None:
        raise KeyError("a bug")

    translated, untranslated = await probe(refused, within=1.0), await probe(broken, within=1.0)
    assert isinstance(translated, StoreUnavailable) and why(translated) == "the database is away"
    assert isinstance(untranslated, KeyError) and why(untranslated) == "KeyError: 'a bug'"


async def test_cancellation_is_not_an_answer() -> None:
    async def ping() -> None:
        await asyncio.Event().wait()

    probing = asyncio.create_task(probe(ping, within=10.0))
    await asyncio.sleep(0)
    probing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probing
