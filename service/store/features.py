"""Features the servers of one database turn on for good, once every live
server reads what they write (``cluster_features``: PostgreSQL's migration
29, SQLite's 25).

A new way of storing something an older version cannot read would break a
rolling upgrade, where replicas of both versions share the database: the
older ones would build on data they do not see. Such a feature is written
only once its row exists, and the row is inserted only while no live
server (a member of a lease group but a subscription group's, its
membership not lapsed) knows a schema below the feature's own migration:
the first schema whose code honours that feature. Each feature has its
own, so that one added in a later version waits for the servers of every
version before it, not only for those older than the table. A replica of
an older version cannot stop the row from being inserted by reading it;
it stops it by being live and saying its schema. The row is never deleted:
going back to an older version afterwards needs what the feature's docs
say (for ``TENANT_DOCUMENT_KEYS``, a rebuild of each ``tenant_keyed`` read
model).

Adding a feature: declare it in ``FEATURES`` below with
``since``, the name (without its number, so that renumbering it needs
nothing else) of the first migration whose servers honour it, in both
stores' numbering: a migration of that name must exist in each store's
``migrations/``. If the version that brings the feature needs no migration
of its own in a store, add an empty one (``-- additive``): without it that
version's servers would say the same schema as the older ones and nothing
could tell them apart. And ``behind``: what a live server that does not
honour it does wrong and what to do, the ERROR line the newer servers
write about it (service/cluster/features_behind.py). Asking for an
undeclared feature is a programming error (``UnknownFeature``).

Why a stored flag and not the live members alone: a server that switched
back to the old form whenever an older replica appeared would still have
written the new form before it, which the older replica does not read; the
flag makes the switch one-way and visible, and the check before it is the
one question that matters (is anyone live who would not read it).

An adapter without the role (the memory store: one process, so one
version; a plugin's adapter) is taken to have every feature on, as before
the table existed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from service.store.sql_common import Migration


@dataclass(frozen=True)
class Feature:
    name: str
    # The name of the first migration (in each store) whose code honours it.
    since: str
    # What a live server of a version before it does wrong, and what to do.
    behind: str


# A tenant_keyed read model's documents sealed under a key per (read
# model, tenant) (document_ciphers.py), which Chronicle 0.3.0 does not read.
TENANT_DOCUMENT_KEYS = "tenant_document_keys"

FEATURES: dict[str, Feature] = {
    feature.name: feature
    for feature in (
        Feature(
            TENANT_DOCUMENT_KEYS,
            since="cluster_features",
            behind=(
                "it reads tenant_keyed read models' documents written under tenants' keys as absent, and a"
                " tenant_keyed projection it runs builds on that (this version keeps those it holds from it). If it"
                " is an old replica that should have gone, or this is a roll-forward after a rollback, stop the old"
                " replicas, then rebuild each tenant_keyed projection with this version (chronicle projection"
                " rebuild NAME); if this is a rollback, once every replica runs the old version rebuild each of them"
                " with it"
            ),
        ),
    )
}


class UnknownFeature(LookupError):
    """A feature asked for that ``FEATURES`` does not declare, or whose
    migration a store does not have: a mistake in the code, not in input."""


@runtime_checkable
class ClusterFeatures(Protocol):
    async def enable_feature(self, name: str) -> bool:
        """Whether ``name`` is on: it was, or it is turned on now, in one
        transaction, because no live server knows a schema below the one
        from which servers honour it (``feature_since``). ``UnknownFeature``
        if ``FEATURES`` does not declare it."""
        ...


@runtime_checkable
class FeatureReader(Protocol):
    """Which features are on, and below which schema a server does not
    honour each: what a newer server checks the live members against
    (service/cluster/features_behind.py), a role apart from turning them on
    so that a writer's stand-in need not read."""

    def feature_schemas(self) -> Mapping[str, int]:
        """Each feature this code declares, with the schema (this store's
        numbering) below which a live server does not honour it."""
        ...

    async def features_on(self) -> frozenset[str]:
        """The features turned on (for good), those of newer versions
        included."""
        ...


def feature_since(name: str, migrations: Sequence[Migration]) -> int:
    """The schema version, in the store of ``migrations``, of the first
    migration whose code honours feature ``name``."""
    feature = FEATURES.get(name)
    if feature is None:
        raise UnknownFeature(f"the cluster feature {name!r} is not declared (service/store/features.py FEATURES)")
    for migration in migrations:
        if migration.name == feature.since:
            return migration.version
    raise UnknownFeature(f"the cluster feature {name!r} is since migration {feature.since!r}, which this store lacks")


def feature_schemas(migrations: Sequence[Migration]) -> dict[str, int]:
    """``feature_since`` of every declared feature."""
    return {name: feature_since(name, migrations) for name in FEATURES}
