"""Projection checkpoints and documents, as every store keeps them."""

from __future__ import annotations

import pytest

from service.errors import ConcurrencyConflict
from service.store.base import StoreAdapter
from service.store.records import DocumentWrite, StoredDocument
from service.store_contract.contents import ContentsOf

# Every test here is a coroutine (the plugin runs them on pytest-asyncio).
pytestmark = pytest.mark.asyncio


async def test_a_new_projection_starts_at_zero_with_no_documents(store: StoreAdapter) -> None:
    assert await store.projection_position("p") == 0
    assert await store.load_document("p", "k") is None


async def test_documents_and_checkpoint_commit_together(store: StoreAdapter) -> None:
    await store.commit_projection(
        "p",
        expected_position=0,
        new_position=7,
        writes=[DocumentWrite("k", "t.Doc", b"\x01"), DocumentWrite("j", "t.Doc", b"")],
    )
    assert await store.projection_position("p") == 7
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"\x01")
    assert await store.load_document("p", "j") == StoredDocument("j", "t.Doc", b"")


async def test_a_commit_from_a_stale_checkpoint_writes_nothing(store: StoreAdapter, contents: ContentsOf) -> None:
    await store.commit_projection("p", expected_position=0, new_position=5, writes=[DocumentWrite("k", "t.Doc", b"a")])
    before = await contents()
    with pytest.raises(ConcurrencyConflict):
        await store.commit_projection(
            "p",
            expected_position=0,
            new_position=9,
            writes=[DocumentWrite("k", "t.Doc", b"b"), DocumentWrite("j", "t.Doc", b"j")],
        )
    assert (await contents()).changes_since(before) == {}
    assert await store.projection_position("p") == 5
    assert await store.load_document("p", "k") == StoredDocument("k", "t.Doc", b"a")


async def test_documents_are_replaced_and_deleted(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=1, writes=[DocumentWrite("k", "t.A", b"a")])
    await store.commit_projection("p", expected_position=1, new_position=2, writes=[DocumentWrite("k", "t.B", b"b")])
    assert await store.load_document("p", "k") == StoredDocument("k", "t.B", b"b")
    await store.commit_projection("p", expected_position=2, new_position=3, writes=[DocumentWrite("k")])
    assert await store.load_document("p", "k") is None


async def test_projections_are_namespaces_of_their_own(store: StoreAdapter) -> None:
    await store.commit_projection("p", expected_position=0, new_position=4, writes=[DocumentWrite("k", "t.A", b"p")])
    await store.commit_projection("q", expected_position=0, new_position=2, writes=[DocumentWrite("k", "t.A", b"q")])
    assert (await store.projection_position("p"), await store.projection_position("q")) == (4, 2)
    assert await store.load_document("q", "k") == StoredDocument("k", "t.A", b"q")
