"""Who is calling: the identity authentication established for one RPC."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller.

    ``name`` is the identity (a JWT's subject, an API key's principal, a
    client certificate's subject as an RFC 4514 string); ``roles`` are the
    roles the credential itself carries (a JWT ``roles`` claim, the API-key
    file's entry), to which the policy adds the principal's own.
    ``method`` says how it was established: ``jwt``, ``api-key``, ``mtls``
    or ``anonymous`` when authentication is off.
    """

    name: str
    method: str
    roles: frozenset[str] = frozenset()
    # The tenant the credential names ("": none; the policy may name one):
    # a tenant-scoped role grants only within it (service.security.policy).
    tenant: str = ""

    @property
    def authenticated(self) -> bool:
        return self.method != "anonymous"


ANONYMOUS = Principal("", "anonymous")

# An aggregate belongs to tenant ``acme`` when its id begins ``acme:``. The
# separator is fixed, not configurable: the same id must mean the same
# tenant on every replica and in every backup.
TENANT_SEPARATOR = ":"
MAX_TENANT_LENGTH = 64


def tenant_problem(tenant: str) -> str:
    """What is wrong with ``tenant`` as a tenant id, "" if nothing: not
    empty, at most 64 characters, printable, no whitespace and no
    separator (``acme:eu`` would own the ids of tenant ``acme`` too)."""
    if not tenant:
        return "must not be empty"
    if len(tenant) > MAX_TENANT_LENGTH:
        return f"must be at most {MAX_TENANT_LENGTH} characters"
    if not tenant.isprintable() or any(c.isspace() for c in tenant):
        return "must be printable, without spaces"
    if TENANT_SEPARATOR in tenant:
        return f"must not contain {TENANT_SEPARATOR!r}"
    return ""


def tenant_prefix(tenant: str) -> str:
    """How the ids of ``tenant``'s aggregates begin."""
    return tenant + TENANT_SEPARATOR


def tenant_of_prefix(prefix: str | None) -> str:
    """The tenant whose ids begin with ``prefix`` ("" for None)."""
    return prefix.removesuffix(TENANT_SEPARATOR) if prefix else ""


def tenant_of_id(aggregate_id: str) -> str:
    """The tenant ``aggregate_id`` belongs to: what precedes its first
    separator, if that is a valid tenant id; "" otherwise."""
    tenant, separator, _ = aggregate_id.partition(TENANT_SEPARATOR)
    return tenant if separator and not tenant_problem(tenant) else ""


def in_tenant(tenant: str, aggregate_id: str) -> bool:
    """Whether ``aggregate_id`` is one of ``tenant``'s (never for no tenant)."""
    return bool(tenant) and aggregate_id.startswith(tenant_prefix(tenant))


# A plugin's reaction sends its commands as ``reaction:<name>`` (the audit
# records that principal); no credential may stand for a name so spelt, or
# a caller could pass for a reaction in the audit.
REACTION_PREFIX = "reaction:"


def reaction_principal(name: str) -> Principal:
    """The principal a reaction's commands run as."""
    return Principal(f"{REACTION_PREFIX}{name}", "reaction")


def reserved(name: str) -> bool:
    """Whether ``name`` is kept for the server's own principals."""
    return name.startswith(REACTION_PREFIX)


# Set by the authentication interceptor for the duration of one RPC; the RPC
# runs in one task, so servicers read the caller from here.
current_principal: contextvars.ContextVar[Principal] = contextvars.ContextVar("chronicle_principal", default=ANONYMOUS)


def _no_peer() -> str:
    return ""


# Set by the gate for the duration of one RPC: how to ask gRPC for the
# caller's network address (``ipv4:host:port``), asked only when an audit
# entry is written deep in the command pipeline. Outside an RPC (a reaction's
# own commands) there is none.
current_peer: contextvars.ContextVar[Callable[[], str]] = contextvars.ContextVar("chronicle_peer", default=_no_peer)
