"""Listing documents by key prefix: where a prefix's range ends (the
stores' listings themselves are in the store contract)."""

from __future__ import annotations

from service.store.records import prefix_end


def test_a_prefix_ends_before_the_first_key_that_does_not_start_with_it() -> None:
    assert prefix_end("") is None
    assert prefix_end("ab") == "ac"
    assert prefix_end("a\U0010ffff") == "b"
    assert prefix_end("\U0010ffff\U0010ffff") is None
    assert prefix_end("\ud7ff") == "\ue000"
