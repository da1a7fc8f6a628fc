"""JSON a person typed for a message (the CLI's command payloads), read
strictly and refused in one plain sentence: the JSON library and protobuf's
own messages for these mistakes ("'NoneType' object is not iterable",
"Failed to load JSON: Failed to load JSON: duplicate key") are about their
insides, not the input."""

from __future__ import annotations

import json
from collections.abc import Callable


class JsonInputError(ValueError):
    """The text is not the JSON object asked for; the message says why."""


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):  # before int: a bool is an int
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _without_duplicates(what: str) -> Callable[[list[tuple[str, object]]], dict[str, object]]:
    # Python's json keeps the last of two equal keys: the first would be
    # silently lost, so two are refused wherever they are.
    def build(pairs: list[tuple[str, object]]) -> dict[str, object]:
        built: dict[str, object] = {}
        for key, value in pairs:
            if key in built:
                raise JsonInputError(f"{what} has the key {json.dumps(key)} twice in one object")
            built[key] = value
        return built

    return build


def _no_constant(what: str) -> Callable[[str], object]:
    def refuse(name: str) -> object:
        raise JsonInputError(f"{what} is not valid JSON: {name} is not a JSON value")

    return refuse


def parse_object(text: str, *, what: str = "the payload") -> dict[str, object]:
    """``text`` as a JSON object, or ``JsonInputError`` naming ``what``."""
    try:
        value = json.loads(text, object_pairs_hook=_without_duplicates(what), parse_constant=_no_constant(what))
    except json.JSONDecodeError as error:
        raise JsonInputError(
            f"{what} is not valid JSON: {error.msg} (line {error.lineno}, column {error.colno})"
        ) from None
    if not isinstance(value, dict):
        raise JsonInputError(f"{what} must be a JSON object ({{...}}), got {_kind(value)}")
    return value
