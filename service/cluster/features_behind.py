"""Live members that do not honour the cluster features on.

A feature (``service/store/features.py``) is turned on only while every
live server honours it; it is never turned off. A server of an older
version that joins afterwards (a rollback, an old replica restarted late)
does not know it: it reads what the feature writes as absent
(``tenant_document_keys``: a ``tenant_keyed`` read model's documents under
tenants' keys) and builds on what it does not see. It cannot say so itself;
the newer servers can, from the members their heartbeats read: each member
says the schema its code knows, and one below a feature's since-schema
(``FeatureReader.feature_schemas``: each feature has its own) does not
honour that feature. A member is behind when it does not honour one of
the features on, and its ERROR line names those it does not honour.

Which features are on is read from the store at start, and again at each
change of the topology while one this server declares is off (once on, a
feature stays on). A feature on that this server does not declare was
turned on by a newer version: this server cannot judge the members by it,
and says once that it does not honour it itself. Whether a member is
behind is computed from the topology wherever it is shown (``behind``:
GetTopology's ``behind_features``, the metric
``chronicle_cluster_members_behind_features``), so the two never disagree;
the ERROR line is written once per member that falls behind, and again if
a feature it does not honour is turned on later.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from service.cluster.ownership import Ownership
from service.errors import StoreUnavailable
from service.store.features import FEATURES, FeatureReader
from service.store.leasing import LeaseMember
from service.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Looked at again this often without a change of the topology, in case the
# store did not answer at the change.
RECHECK_SECONDS = 30.0


class FeaturesBehind:
    def __init__(self, features: FeatureReader, ownership: Ownership) -> None:
        self._features = features
        self._ownership = ownership
        self._since: Mapping[str, int] = features.feature_schemas()
        self.on: frozenset[str] = frozenset()
        # Each member reported, with the features it was reported behind.
        self._reported: dict[str, frozenset[str]] = {}
        self._unknown_reported: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def not_honoured(self, member: LeaseMember) -> frozenset[str]:
        """The features on that ``member``'s code does not honour: its
        schema is below theirs (0: a version from before members said their
        schema, older still)."""
        return frozenset(name for name in self.on & self._since.keys() if member.schema_version < self._since[name])

    def behind(self, members: Sequence[LeaseMember]) -> list[LeaseMember]:
        """Those of ``members`` that do not honour a feature on."""
        return [m for m in members if self.not_honoured(m)]

    def count(self) -> int:
        """How many live members are behind (the metric, at scrape time)."""
        return len(self.behind(self._ownership.topology().members))

    async def check(self) -> None:
        """Read the features while one this server declares is off, and
        report the members newly behind (or behind more features).
        StoreUnavailable: looked at again at the next change."""
        if not self._since.keys() <= self.on:
            self.on = await self._features.features_on()
            self._report_unknown()
        reported: dict[str, frozenset[str]] = {}
        for member in sorted(self._ownership.topology().members, key=lambda m: m.member_id):
            names = self.not_honoured(member)
            if not names:
                continue
            if not names <= self._reported.get(member.member_id, frozenset()):  # new, or behind one more
                self._log_behind(member, names)
            reported[member.member_id] = names
        for member_id in sorted(self._reported.keys() - reported.keys()):
            log.info("cluster member %s, behind the features on, is no longer live", member_id)
        self._reported = reported

    def _report_unknown(self) -> None:
        for name in sorted(self.on - self._since.keys() - self._unknown_reported):
            log.error(
                "the cluster feature %s is on in this database, turned on by a newer version: this server does"
                ' not honour it (see the docs of the version that turned it on, "Upgrading and rolling back")',
                name,
            )
            self._unknown_reported.add(name)

    def _log_behind(self, member: LeaseMember, names: frozenset[str]) -> None:
        log.error(
            "cluster member %s (at %s, version %s, schema %d) does not honour the cluster features on (%s): %s"
            ' (docs/deployment.md, "Upgrading and rolling back")',
            member.member_id,
            member.address,
            member.version or "before 0.2.0",
            member.schema_version,
            ", ".join(f"{name}, since schema {self._since[name]}" for name in sorted(names)),
            "; ".join(f"{name}: {_what_to_do(name)}" for name in sorted(names)),
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


def _what_to_do(name: str) -> str:
    feature = FEATURES.get(name)  # a plugin's FeatureReader may name others
    return feature.behind if feature is not None else "see its docs"
