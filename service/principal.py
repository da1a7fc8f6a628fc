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

    @property
    def authenticated(self) -> bool:
        return self.method != "anonymous"


ANONYMOUS = Principal("", "anonymous")

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
