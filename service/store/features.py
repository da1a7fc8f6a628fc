"""Features the servers of one database turn on for good, once every live
server reads what they write (``cluster_features``: PostgreSQL's migration
29, SQLite's 25).

A new way of storing something an older version cannot read would break a
rolling upgrade, where replicas of both versions share the database: the
older ones would build on data they do not see. Such a feature is written
only once its row exists, and the row is inserted only while no live
server (a member of a lease group but a subscription group's, its
membership not lapsed) knows a schema below the migration that made the
table: the first version that honours these rows. A replica of an older
version does not know the table, so it cannot stop the row from being
inserted; it stops it by being live. The row is never deleted: going back
to an older version afterwards needs what the feature's docs say (for
``TENANT_DOCUMENT_KEYS``, a rebuild of each ``tenant_keyed`` read model).

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

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from service.store.sql_common import Migration

# A tenant_keyed read model's documents sealed under a key per (read
# model, tenant) (document_ciphers.py), which Chronicle 0.3.0 does not read.
TENANT_DOCUMENT_KEYS = "tenant_document_keys"


@runtime_checkable
class ClusterFeatures(Protocol):
    async def enable_feature(self, name: str) -> bool:
        """Whether ``name`` is on: it was, or it is turned on now, in one
        transaction, because no live server knows a schema below the one
        that made the table (this store's ``FEATURES_SINCE``)."""
        ...


@runtime_checkable
class FeatureReader(Protocol):
    """Which features are on, and below which schema a server does not
    honour them: what a newer server checks the live members against
    (service/cluster/features_behind.py), a role apart from turning them on
    so that a writer's stand-in need not read."""

    def features_schema(self) -> int:
        """This store's ``FEATURES_SINCE``: a live server knowing a schema
        below it does not read what the features on write."""
        ...

    async def features_on(self) -> frozenset[str]:
        """The features turned on (for good)."""
        ...


def features_since(migrations: Sequence[Migration]) -> int:
    """The schema version of the migration that made ``cluster_features``
    (found by its name, so that renumbering it needs nothing else): the
    first schema whose code honours the table."""
    return next(m.version for m in migrations if m.name.endswith("cluster_features"))
