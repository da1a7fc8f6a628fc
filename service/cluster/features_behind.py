"""Live members that do not honour the cluster features on.

A feature (``service/store/features.py``) is turned on only while every
live server honours it; it is never turned off. A server of an older
version that joins afterwards (a rollback, an old replica restarted late)
does not know the features table: it reads what a feature writes as absent
(``tenant_document_keys``: a ``tenant_keyed`` read model's documents under
tenants' keys) and builds on what it does not see. It cannot say so itself;
the newer servers can, from the members their heartbeats read: each member
says the schema its code knows, and one below the migration that made the
table (``FeatureReader.features_schema``) does not honour it.

Which features are on is read from the store at start, and again at each
change of the topology while none is (once one is, it stays on: no need to
ask again). Whether a member is behind is then computed from the topology
itself wherever it is shown (``behind``: GetTopology's ``behind_features``,
the metric ``chronicle_cluster_members_behind_features``), so the two never
disagree; the ERROR line is written once per member that falls behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from service.cluster.ownership import Ownership
from service.errors import StoreUnavailable
from service.store.features import TENANT_DOCUMENT_KEYS, FeatureReader
from service.store.leasing import LeaseMember
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Looked at again this often without a change of the topology, in case the
# store did not answer at the change.
RECHECK_SECONDS = 30.0

# What each feature means for a member that does not honour it, and what
# to do (docs/deployment.md, "Upgrading and rolling back").
_REMEDIES = {
    TENANT_DOCUMENT_KEYS: (
        "it reads tenant_keyed read models' documents written under tenants' keys as absent. If it is an old"
        " replica that should have gone, stop it; if this is a rollback, once every replica runs the old version"
        " rebuild each tenant_keyed projection (chronicle projection rebuild NAME)"
    ),
}


class FeaturesBehind:
    def __init__(self, features: FeatureReader, ownership: Ownership) -> None:
        self._features = features
        self._ownership = ownership
        self._since = features.features_schema()
        self.on: frozenset[str] = frozenset()
        self._reported: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def behind(self, members: Sequence[LeaseMember]) -> list[LeaseMember]:
        """Those of ``members`` whose code knows a schema below the
        features table's, while a feature is on (0: a version from before
        members said their schema, older still)."""
        if not self.on:
            return []
        return [m for m in members if m.schema_version < self._since]

    def count(self) -> int:
        """How many live members are behind (the metric, at scrape time)."""
        return len(self.behind(self._ownership.topology().members))

    async def check(self) -> None:
        """Read the features while none is on, and report the members newly
        behind. StoreUnavailable: looked at again at the next change."""
        if not self.on:
            self.on = await self._features.features_on()
        members = self._ownership.topology().members
        behind = {m.member_id: m for m in self.behind(members)}
        for member_id in sorted(behind.keys() - self._reported):
            self._log_behind(behind[member_id])
        for member_id in sorted(self._reported - behind.keys()):
            log.info("cluster member %s, behind the features on, is no longer live", member_id)
        self._reported = set(behind)

    def _log_behind(self, member: LeaseMember) -> None:
        remedies = "; ".join(f"{name}: {_REMEDIES.get(name, 'see its docs')}" for name in sorted(self.on))
        log.error(
            "cluster member %s (at %s, version %s, schema %d) does not honour the cluster features on (%s, since"
            ' schema %d): %s (docs/deployment.md, "Upgrading and rolling back")',
            member.member_id,
            member.address,
            member.version or "before 0.2.0",
            member.schema_version,
            ", ".join(sorted(self.on)),
            self._since,
            remedies,
        )

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="features-behind")

    async def _run(self) -> None:
        version = -1
        while True:
            try:
                await self.check()
            except StoreUnavailable as error:
                log.debug("cluster features not read (%s): again at the next change", error)
            except Exception:  # a watch that dies would go silent: say so, look again later
                log.warning("members behind the cluster features not checked", exc_info=True)
            version = await self._ownership.wait_for_change(version, RECHECK_SECONDS)

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task, "the watch of members behind the cluster features", log)
