"""How the watch of members behind the cluster features
(service/cluster/features_behind.py) decides whom to name and when, with
the store's answers and the topology given: each member by the features
it does not honour, named again when one more comes on. The real server
on real stores: tests/integration/test_features_behind.py."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import cast

import pytest

from service.cluster.features_behind import FeaturesBehind
from service.cluster.ownership import Ownership
from service.store.leasing import LeaseMember

pytestmark = pytest.mark.asyncio

SINCE = {"early_marks": 29, "later_marks": 31}


@dataclass
class Reader:
    """A store's ``FeatureReader``: the features on, as the test sets them."""

    on: set[str] = field(default_factory=set)
    reads: int = 0

    def feature_schemas(self) -> dict[str, int]:
        return SINCE

    async def features_on(self) -> frozenset[str]:
        self.reads += 1
        return frozenset(self.on)


@dataclass
class Members:
    """``Ownership`` as the watch uses it: the live members."""

    members: tuple[LeaseMember, ...] = ()

    def topology(self) -> Members:
        return self


def member(member_id: str, schema: int) -> LeaseMember:
    return LeaseMember(member_id, f"{member_id}:50051", version="0.4.0", schema_version=schema)


def watch(reader: Reader, members: Members) -> FeaturesBehind:
    return FeaturesBehind(reader, cast(Ownership, members))


async def test_a_member_is_behind_the_features_above_its_schema_only() -> None:
    reader, members = Reader({"early_marks", "later_marks"}), Members((member("a", 30), member("b", 28)))
    behind = watch(reader, members)
    await behind.check()
    assert behind.not_honoured(members.members[0]) == {"later_marks"}
    assert behind.not_honoured(members.members[1]) == {"early_marks", "later_marks"}
    assert behind.count() == 2
    assert behind.not_honoured(member("c", 31)) == frozenset()


async def test_a_member_is_named_again_when_a_feature_it_does_not_honour_comes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A feature turned on as the member joined (the two transactions at
    once), read at the next change: the member's line names it too."""
    reader, members = Reader({"early_marks"}), Members((member("a", 28),))
    behind = watch(reader, members)
    with caplog.at_level(logging.ERROR, "service.cluster.features_behind"):
        await behind.check()
        await behind.check()  # nothing new: not named again
        assert [r.getMessage().count("since schema") for r in caplog.records] == [1]
        reader.on.add("later_marks")
        await behind.check()
    assert len(caplog.records) == 2
    assert "(early_marks, since schema 29, later_marks, since schema 31)" in caplog.records[1].getMessage()


async def test_the_features_are_read_until_every_declared_one_is_on_then_no_more() -> None:
    reader, members = Reader({"early_marks"}), Members()
    behind = watch(reader, members)
    await behind.check()
    await behind.check()
    assert reader.reads == 2  # later_marks may yet come on
    reader.on.add("later_marks")
    await behind.check()
    await behind.check()
    assert reader.reads == 3
    assert behind.on == {"early_marks", "later_marks"}
