"""The plugin API: everything a domain plugin imports from Chronicle."""

from service.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, ValidationError
from service.plugins.api import AggregateType, CommandContext, CommandSpec, EventSpec, OldEvent, Plugin, UpcasterSpec
from service.processing.middleware import CommandCall, Middleware

__all__ = [
    "AggregateType",
    "AlreadyExistsError",
    "CommandCall",
    "CommandContext",
    "CommandSpec",
    "EventSpec",
    "InvalidArgumentError",
    "Middleware",
    "NotFoundError",
    "OldEvent",
    "Plugin",
    "UpcasterSpec",
    "ValidationError",
]
