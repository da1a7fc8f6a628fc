"""Structured logs: one JSON object per line (``--log-format json``), carrying
the command id, correlation id and aggregate of the command being processed.

``command_log_context`` is set for the duration of a command, in the RPC's
task by ``LoggingMiddleware`` and in the aggregate worker's task around the
executor, so every record logged while a command runs (a failing handler, a
retry) names the command without passing it around.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

from service.errors import ChronicleError
from service.plugins.middleware import CommandCall, Middleware
from service.processing.log_context import command_log_context

# LogRecord attributes that are not "extra" fields.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **command_log_context.get(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure(*, level: str, json_format: bool) -> None:
    """Set up the root logger (called once, by ``chronicle serve``)."""
    handler = logging.StreamHandler()
    if json_format:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


log = logging.getLogger("chronicle.commands")


class LoggingMiddleware(Middleware):
    """One line per command: what, for whom, how it ended and how long it took.
    Accepted commands log at DEBUG, refusals at INFO, failures at WARNING."""

    name = "logging"

    def wants(self, hook: str) -> bool:
        # Accepted commands are logged at DEBUG only: with the level above
        # that (set once, at start), the after hook would never write a line.
        if hook == "after":
            return log.isEnabledFor(logging.DEBUG)
        return super().wants(hook)

    def before(self, call: CommandCall) -> None:
        command_log_context.set(
            {"command_id": call.command_id, "correlation_id": call.correlation_id, "aggregate_id": call.aggregate_id}
        )

    def _fields(self, call: CommandCall, outcome: str) -> dict[str, object]:
        fields: dict[str, object] = {
            "command_type": call.command_type,
            "principal": call.principal.name,
            "outcome": outcome,
            "duration_ms": round(call.elapsed * 1000, 3),
        }
        if call.dry_run:
            fields["dry_run"] = True  # decided, nothing written: as the metrics count it apart
        return fields

    def after(self, call: CommandCall) -> None:
        if not log.isEnabledFor(logging.DEBUG):
            return  # the common case: nothing to build
        version = call.result.version if call.result is not None else 0
        log.debug("command %s ok at version %d", call.command_type, version, extra=self._fields(call, "ok"))

    def on_error(self, call: CommandCall) -> None:
        error = call.error
        if isinstance(error, ChronicleError):
            fields = {**self._fields(call, "refused"), "reason": error.reason}
            log.info("command %s refused: %s", call.command_type, error.reason, extra=fields)
        else:
            log.warning("command %s failed: %r", call.command_type, error, extra=self._fields(call, "failed"))
