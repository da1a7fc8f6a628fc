"""What an import's summary counts of claims (docs/export-format.md,
"Claims"; ``ImportLogResponse``): ``claims_written`` is every claim the run
took that the target did not hold, the stream's claim records and the
claims it derived alike; ``claims_derived`` every claim derived from the
imported aggregates' state, taken now or found held. The walkthrough read
``claims_written`` 1 for a stream without claim records as a claim counted
twice: it is the derived claim, taken; a second run takes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from service.transfer.exporter import FORMAT, FORMAT_VERSION
from tests.support.import_claims import chronicle

COUNTS = ("events_written", "claims_written", "claims_derived")


def users_export(path: Path, *, with_claim: bool) -> Path:
    event = {
        "event": {
            "event": {
                "event_id": "4a1b0000-0000-4000-8000-0000000000c1",
                "aggregate_id": "user-k1",
                "aggregate_type": "User",
                "version": "1",
                "timestamp": "2023-01-01T10:00:00Z",
                "event_type": "users.v1.UserRegistered",
                "schema_version": 1,
                "payload": {"@type": "type.googleapis.com/users.v1.UserRegistered", "email": "ann@example.com"},
            }
        }
    }
    claim = {"claim": {"scope": "users.email", "value": "ann@example.com", "aggregate_id": "user-k1"}}
    records = [event, claim] if with_claim else [event]
    lines = [
        {"header": {"format": FORMAT, "format_version": FORMAT_VERSION, "exported_at": "2026-01-01T00:00:00Z"}},
        *records,
        {"end": {"events": "1", "claims": "1" if with_claim else "0"}},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def counts(export: Path, url: str) -> tuple[int, ...]:
    summary = json.loads(chronicle("import", str(export), "--quiet", "--database-url", url).stdout)
    return tuple(summary[count] for count in COUNTS)


def test_claims_written_counts_the_derived_claims_taken_and_claims_derived_those_found_held_too(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/derived.db"
    export = users_export(tmp_path / "no-claims.jsonl", with_claim=False)
    assert counts(export, url) == (1, 1, 1)  # derived, and taken
    assert counts(export, url) == (0, 0, 1)  # derived again, held already: nothing taken

    url = f"sqlite:///{tmp_path}/records.db"
    export = users_export(tmp_path / "claims.jsonl", with_claim=True)
    assert counts(export, url) == (1, 1, 1)  # the record's claim taken; derived, found held
