"""The benchmark checks what it counts: every command a client was told
had succeeded is in the database, with its events. A point whose
acknowledged commands are not all there fails the run loudly."""

from __future__ import annotations

from collections.abc import Sequence

import psycopg


class CheckFailed(RuntimeError):
    """The database does not hold what the clients were told."""


def acknowledged_are_stored(database_url: str, command_ids: Sequence[str], *, point: str) -> dict[str, int]:
    """Every command id in ``command_ids`` is recorded, and its events are in
    the log (as many as its record says); returns the counts."""
    unique = sorted(set(command_ids))
    with psycopg.connect(database_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), coalesce(sum(last_version - first_version + 1), 0)"
            " FROM chronicle.commands WHERE command_id = ANY(%s) AND rejection IS NULL",
            (unique,),
        ).fetchone()
        recorded, promised = (int(row[0]), int(row[1])) if row else (0, 0)
        row = conn.execute("SELECT count(*) FROM chronicle.events WHERE command_id = ANY(%s)", (unique,)).fetchone()
        events = int(row[0]) if row else 0
    if recorded != len(unique):
        raise CheckFailed(f"{point}: {len(unique)} commands acknowledged, {recorded} recorded as accepted")
    if events != promised:
        raise CheckFailed(f"{point}: the acknowledged commands recorded {promised} events, the log holds {events}")
    return {"acknowledged": len(unique), "recorded": recorded, "events": events}
