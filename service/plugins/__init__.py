"""The plugin API: everything a domain plugin imports from Chronicle."""

from service.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, ValidationError
from service.plugins.api import AggregateType, CommandContext, CommandSpec, EventSpec, OldEvent, Plugin, UpcasterSpec

__all__ = [
    "AggregateType",
    "AlreadyExistsError",
    "CommandContext",
    "CommandSpec",
    "EventSpec",
    "InvalidArgumentError",
    "NotFoundError",
    "OldEvent",
    "Plugin",
    "UpcasterSpec",
    "ValidationError",
]
