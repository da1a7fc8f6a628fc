"""The pytest plugin that runs the store contract on a store named by URL
(``--chronicle-store-url``; ``{tmp}`` in it becomes a fresh folder per
test): fixtures ``store`` (opened before the test, closed after) and
``contents`` (what the store holds, as its roles show it). The tests are
coroutines, run by pytest-asyncio."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from service.store.base import StoreAdapter
from service.store.factory import open_store
from service.store_contract.contents import ContentsOf, public_contents

OPTION = "--chronicle-store-url"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        OPTION,
        help="URL of the store to run the contract on; {tmp} is replaced by a fresh folder for each test",
    )


@pytest_asyncio.fixture
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreAdapter]:
    url = request.config.getoption(OPTION)
    if not url:
        raise pytest.UsageError(f"the store contract needs {OPTION} (or a store fixture of your own)")
    adapter = open_store(str(url).replace("{tmp}", str(tmp_path)), pool_size=4)
    await adapter.open()
    try:
        yield adapter
    finally:
        await adapter.close()


@pytest.fixture
def contents(store: StoreAdapter) -> ContentsOf:
    return lambda: public_contents(store)
