"""Middleware: behaviour around the processing of every command.

As gRPC interceptors wrap an RPC, middleware wraps a command: its hooks run
before the command is queued for its aggregate's worker, and after it
finished (``after``) or failed (``on_error``). Logging, metrics, tracing,
audit and authorization are middleware; a plugin can add its own with
``Plugin.add_middleware``.

Order is explicit and onion-shaped: ``before`` hooks run in pipeline order,
``after`` and ``on_error`` hooks in reverse order, and only for the
middleware whose ``before`` ran. A ``before`` hook refuses a command by
raising a ``ChronicleError`` (e.g. ``PermissionDenied``): nothing is queued,
the outer middleware's ``on_error`` hooks see the refusal. An exception in an
``after`` or ``on_error`` hook is logged and ignored: the command's outcome
is already decided and may be committed.

A batch (``SubmitBatch``) passes every hook once per command, in the
batch's order: ``before`` hooks of one middleware for all its commands, then
the next middleware's; a refusal of any command refuses the batch (the error
names the command: ``batch_index``, ``command_id``) and the ``on_error`` hooks
run for every (middleware, command) whose ``before`` ran. A dry run passes
the hooks like a real command, with ``call.dry_run`` set.

Each hook receives one frozen ``CommandCall``, so adding a field to it breaks
no middleware. A hook is a plain method or a coroutine: plain ones run
inline and cost the command nothing more, so built-in middleware is plain;
a coroutine is awaited. The hooks of one call run in that call's
``contextvars`` context, so a middleware may keep per-call state in a
``contextvars.ContextVar``: ``before`` in the caller's task, ``after`` and
``on_error`` there too or, plain ones run inline, where the aggregate's
worker finishes the command, in a copy of the context ``before`` left.
"""

from __future__ import annotations

from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from google.protobuf.message import Message

from service.principal import ANONYMOUS, Principal

if TYPE_CHECKING:
    from service.processing.commands import CommandResult

__all__ = ["CommandCall", "Middleware"]


@dataclass(frozen=True, slots=True, kw_only=True)
class CommandCall:
    """One command passing through the pipeline, as middleware sees it.

    ``message`` is the decoded command; middleware must not change it.
    ``principal`` is who sent it (anonymous when authentication is off).
    ``result`` is set for ``after`` hooks, ``error`` for ``on_error``
    hooks, and ``elapsed`` (seconds since the pipeline took the command) for
    both. ``refused_by`` names the middleware whose ``before`` hook refused
    the command (empty when processing itself failed). ``dry_run``: the
    command is decided but nothing is written. ``tenant`` is the tenant the
    command acts for ("" none): a client's, its caller's (as the policy
    resolves it, docs/security.md#tenants); a reaction's, the tenant of the
    aggregate whose event caused it (its id's prefix before ``:``), so that
    a guard can refuse a reaction's command to another tenant's aggregate.
    """

    command_id: str
    command_type: str
    aggregate_id: str
    aggregate_type: str
    message: Message
    principal: Principal = ANONYMOUS
    user_id: str = ""
    origin: str = ""
    correlation_id: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    expected_version: int | None = None
    result: CommandResult | None = None
    error: BaseException | None = None
    elapsed: float = 0.0
    refused_by: str = ""
    dry_run: bool = False
    tenant: str = ""


class Middleware:
    """Base class: override the hooks you need; each defaults to nothing.
    Override with ``def`` (runs inline) or ``async def`` (awaited)."""

    #: Shown in logs when a hook fails.
    name = "middleware"

    def wants(self, hook: str) -> bool:
        """Whether the pipeline should call ``hook`` ("before", "after" or
        "on_error") at all, asked once when the pipeline is built. By
        default, the hooks a subclass overrides."""
        return getattr(type(self), hook) is not getattr(Middleware, hook)

    def before(self, call: CommandCall) -> Awaitable[None] | None:
        """Runs before the command is queued. Raise a ChronicleError to refuse it."""
        return None

    def after(self, call: CommandCall) -> Awaitable[None] | None:
        """Runs after the command succeeded (``call.result`` is set)."""
        return None

    def on_error(self, call: CommandCall) -> Awaitable[None] | None:
        """Runs after the command failed or was refused (``call.error`` is set)."""
        return None
