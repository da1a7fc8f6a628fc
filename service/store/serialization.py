"""Turning store values into column values and back, shared by the SQL stores."""

from __future__ import annotations

import json
from collections.abc import Mapping

import orjson

from service.store.records import Rejection


def compact_json(value: object) -> str:
    """``value`` as compact JSON text, for the batch statements' JSON
    parameters (a group commit's events and command records, a read model's
    documents): orjson, several times faster than ``json.dumps`` on the
    command path. Non-ASCII is written as UTF-8, not escaped (PostgreSQL
    reads both alike)."""
    return orjson.dumps(value).decode()


def dump_metadata(metadata: Mapping[str, str]) -> str:
    return json.dumps(dict(metadata), separators=(",", ":"), sort_keys=True)


def load_metadata(text: str | Mapping[str, str] | None) -> dict[str, str]:
    if not text:
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    return dict(json.loads(text))


def rejection_dict(rejection: Rejection) -> dict[str, object]:
    data: dict[str, object] = {
        "kind": rejection.kind,
        "reason": rejection.reason,
        "message": rejection.message,
        "metadata": dict(rejection.metadata),
    }
    if rejection.violations:  # only then: a refusal without them is stored as it always was
        data["violations"] = [list(v) for v in rejection.violations]
    return data


def dump_rejection(rejection: Rejection | None) -> str | None:
    if rejection is None:
        return None
    return json.dumps(rejection_dict(rejection), separators=(",", ":"))


def load_rejection(value: str | Mapping[str, object] | None) -> Rejection | None:
    if value is None:
        return None
    data = json.loads(value) if isinstance(value, str) else dict(value)
    metadata = data.get("metadata") or {}
    assert isinstance(metadata, dict)
    violations = data.get("violations") or []
    assert isinstance(violations, list)
    return Rejection(
        kind=str(data["kind"]),
        reason=str(data["reason"]),
        message=str(data["message"]),
        metadata={str(k): str(v) for k, v in metadata.items()},
        violations=tuple((str(f), str(d)) for f, d in violations),
    )
