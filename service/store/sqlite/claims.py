"""``ClaimRegistry`` on SQLite (claims are taken and released by appends:
events.py). The primary key on (scope, value) decides."""

from __future__ import annotations

import sqlite3

from service.store.records import HIDDEN_CLAIM_MARK, HeldClaim
from service.store.sql_common import claim_from_row
from service.store.sqlite import sql
from service.store.sqlite.writer import Writer, writing


class ClaimsRole:
    _writer: Writer

    async def claim_owner(self, scope: str, value: str) -> str | None:
        row = await self._writer.run(lambda db: db.execute(sql.CLAIM_OWNER, (scope, value)).fetchone())
        return None if row is None else str(row[0])

    async def claims_in_clear(self, limit: int) -> list[HeldClaim]:
        params = (HIDDEN_CLAIM_MARK, limit)
        rows = await self._writer.run(lambda db: db.execute(sql.CLAIMS_IN_CLEAR, params).fetchall())
        return [claim_from_row(row) for row in rows]

    async def hide_claim(self, claim: HeldClaim, hidden_value: str) -> bool:
        return await self._writer.run(_hide_claim, claim, hidden_value)


def _hide_claim(db: sqlite3.Connection, claim: HeldClaim, hidden_value: str) -> bool:
    """Drop the clear claim if it is still held as given, and take the
    hidden one for the same holder (unless another aggregate holds it)."""
    with writing(db):
        dropped = db.execute(sql.RELEASE_CLAIM, (claim.scope, claim.value, claim.aggregate_id)).rowcount
        if dropped:
            db.execute(sql.TAKE_CLAIM, (claim.scope, hidden_value, claim.aggregate_id))
        (holder,) = db.execute(sql.CLAIM_OWNER, (claim.scope, hidden_value)).fetchone() or (None,)
    return bool(dropped) and holder == claim.aggregate_id
