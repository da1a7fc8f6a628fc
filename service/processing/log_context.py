"""The command a log line is about: ``command_log_context`` holds its ids
while it is decided (set by the worker, or around any code with
``logging_command``); the JSON log format (``service.observability.logs``)
adds them to every line."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Mapping
from types import MappingProxyType

_NO_COMMAND: Mapping[str, str] = MappingProxyType({})
command_log_context: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "chronicle_command_log_context", default=_NO_COMMAND
)


@contextlib.contextmanager
def logging_command(*, command_id: str, correlation_id: str, aggregate_id: str) -> Iterator[None]:
    token = command_log_context.set(
        {"command_id": command_id, "correlation_id": correlation_id or command_id, "aggregate_id": aggregate_id}
    )
    try:
        yield
    finally:
        command_log_context.reset(token)
