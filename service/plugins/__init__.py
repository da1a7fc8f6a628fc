"""The plugin API: everything a domain plugin imports from Chronicle."""

from chronicle.v1.event_pb2 import AggregateDeleted
from service.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, NotUnique, ValidationError
from service.plugins.api import AggregateType, CommandSpec, EventSpec, OldEvent, Plugin, UpcasterSpec
from service.plugins.context import CommandContext, Effects
from service.plugins.middleware import CommandCall, Middleware
from service.plugins.projections import Documents, ProjectedEvent, Projection
from service.plugins.reactions import IGNORE, Cancel, Deadline, Ignore, Reaction, Refusal, Schedule, Send
from service.plugins.tenancy import TenantGuard
from service.principal import tenant_of_id

__all__ = [
    "IGNORE",
    "AggregateDeleted",
    "AggregateType",
    "AlreadyExistsError",
    "Cancel",
    "CommandCall",
    "CommandContext",
    "CommandSpec",
    "Deadline",
    "Documents",
    "Effects",
    "EventSpec",
    "Ignore",
    "InvalidArgumentError",
    "Middleware",
    "NotFoundError",
    "NotUnique",
    "OldEvent",
    "Plugin",
    "ProjectedEvent",
    "Projection",
    "Reaction",
    "Refusal",
    "Schedule",
    "Send",
    "TenantGuard",
    "UpcasterSpec",
    "ValidationError",
    "tenant_of_id",
]
