"""``ClaimRegistry`` on PostgreSQL (claims are taken and released by appends:
appends.py). The unique key on (scope, value) decides between replicas."""

from __future__ import annotations

from service.store.postgres import sql
from service.store.postgres.connection import Statement
from service.store.postgres.database import Database
from service.store.postgres.rows import rows, scalar
from service.store.records import HIDDEN_CLAIM_MARK, HeldClaim
from service.store.sql_common import claim_from_row


class ClaimsRole:
    _db: Database

    async def claim_owner(self, scope: str, value: str) -> str | None:
        (result,) = await self._db.run(
            "claim_owner", [Statement(sql.CLAIM_OWNER.encode(), (scope, value))], read_only=True
        )
        owner = scalar(result)
        return None if owner is None else str(owner)

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        (result,) = await self._db.run(
            "claims_in_clear", [Statement(sql.CLAIMS_IN_CLEAR.encode(), (HIDDEN_CLAIM_MARK, limit))], read_only=True
        )
        return [claim_from_row(row) for row in rows(result)]

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        (result,) = await self._db.run(
            "hide_claim",
            [Statement(sql.HIDE_CLAIM.encode(), (claim.scope, claim.value, claim.aggregate_id, hidden_value))],
        )
        return bool(result.ntuples) and scalar(result) == claim.aggregate_id
