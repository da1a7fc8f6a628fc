"""How a per-tenant claims scope is stored (``service.claim_scopes`` says
why): the scope, ``TENANT_SCOPE_MARK`` and the tenant. Here, below the
store, so that the store's adapters read a stored scope's parts without
importing the plugin-facing module."""

from __future__ import annotations

TENANT_SCOPE_MARK = "\x1e"


def tenant_scope(scope: str, tenant: str) -> str:
    """The stored scope of ``tenant``'s claims in the per-tenant ``scope``."""
    return scope + TENANT_SCOPE_MARK + tenant


def declared_scope(stored: str) -> str:
    """The scope a plugin named, of a stored scope (itself for a global one)."""
    return stored.partition(TENANT_SCOPE_MARK)[0]


def scope_tenant(stored: str) -> str:
    """The tenant a stored scope is of ('' for a global scope's)."""
    return stored.partition(TENANT_SCOPE_MARK)[2]


def tenant_scopes_range(scope: str) -> tuple[str, str]:
    """The stored scopes of ``scope``'s tenants, in code point order: from
    ``scope`` and the mark (included) to ``scope`` and the character after
    the mark (excluded). A global scope's own claims are outside it."""
    return scope + TENANT_SCOPE_MARK, scope + chr(ord(TENANT_SCOPE_MARK) + 1)
