"""Uniqueness-claim scopes a plugin declares per tenant.

A scope is global unless its plugin declares it ``per_tenant``
(``plugin.claims_scope("users.email", per_tenant=True)``): then a value is
unique within the tenant of the claiming aggregate (the part of its id
before ``:``), and two tenants may both hold it. Such a claim is stored
under the scope, ``TENANT_SCOPE_MARK`` and the tenant
(``users.email\\x1eacme``): the store's unique key on (scope, value) then
decides per tenant with no change to any store, and under encryption at
rest the scope's data key is one of (scope, tenant), whose id
(``claims_key_id`` of that stored scope) ``master_keys.owner_tenant``
reads the tenant back from, so the tenant's master key wraps it and
destroying that key makes the tenant's claimed values untestable wherever
they are, backups included.

The mark is ``master_keys.TENANT_OWNED_MARK`` (written out here and in
``errors.NotUnique``, which sit below the store; a test says they agree):
no scope can hold it (scopes are printable), nor a tenant id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from service.errors import ClaimScopeSwitched, ClaimWithoutTenant
from service.principal import tenant_of_id
from service.store.base import TenantClaimsProbe
from service.store.claim_scope_names import TENANT_SCOPE_MARK, declared_scope, scope_tenant, tenant_scope
from service.store.records import ClaimChange

if TYPE_CHECKING:
    from service.store.base import Transfer

__all__ = [
    "TENANT_SCOPE_MARK",
    "declared_scope",
    "refuse_scopes_switched",
    "scope_tenant",
    "stored_claims",
    "stored_scope",
    "tenant_scope",
    "undeclared_tenant_scopes",
]


def stored_scope(scope: str, aggregate_id: str, per_tenant: frozenset[str]) -> str:
    """Where ``aggregate_id``'s claims in ``scope`` are stored: the scope
    itself if it is global, else the scope of the aggregate's tenant.
    ClaimWithoutTenant for an aggregate of no tenant in a per-tenant scope:
    it has no tenant to be unique in, and a global claim there would be
    unique across nothing declared."""
    if scope not in per_tenant:
        return scope
    tenant = tenant_of_id(aggregate_id)
    if not tenant:
        raise ClaimWithoutTenant(scope, aggregate_id)
    return tenant_scope(scope, tenant)


def stored_claims(
    claims: Sequence[ClaimChange], aggregate_id: str, per_tenant: frozenset[str]
) -> tuple[ClaimChange, ...]:
    """``claims`` of ``aggregate_id`` as stored (``stored_scope``)."""
    if not per_tenant:
        return tuple(claims)
    return tuple(replace(c, scope=stored_scope(c.scope, aggregate_id, per_tenant)) for c in claims)


async def refuse_scopes_switched(
    transfer: Transfer, per_tenant: frozenset[str], global_scopes: frozenset[str] = frozenset()
) -> None:
    """Raise ClaimScopeSwitched if a scope declared per tenant holds claims
    stored globally (taken before the declaration), or a scope declared
    global holds claims stored per tenant (taken while it was per tenant):
    either would be checked no more, so a value one aggregate holds could
    be taken again. One read per scope. A scope's global claims come right
    after (scope, '') in (scope, value) order, whatever the collation; its
    tenants' claims are a range in code point order, which the store asks
    for (``TenantClaimsProbe``), not a page in the database's collation: a
    linguistic one ignores the mark at first, and interleaves them with
    other scopes'. A store without that role (a plugin's adapter) has its
    global scopes unchecked."""
    for scope in sorted(per_tenant):
        first = await transfer.claims_page((scope, ""), 1)
        if first and first[0].scope == scope:
            raise ClaimScopeSwitched(scope)
    if not isinstance(transfer, TenantClaimsProbe):
        return
    for scope in sorted(global_scopes):
        if await transfer.holds_tenant_claims(scope):
            raise ClaimScopeSwitched(scope, per_tenant=False)


async def undeclared_tenant_scopes(transfer: Transfer, declared: frozenset[str]) -> list[str]:
    """The scopes holding claims stored per tenant that no plugin declares
    (``declared``: every scope declared, either way). A scope nobody
    declares is global, but checked globally such a scope's claims would be
    seen by no one, and a value a tenant holds could be taken again in that
    tenant: the server keeps checking it per tenant, as stored
    (``Registry.keep_per_tenant``), and warns at start. Not refused, as a
    scope declared global again is (``refuse_scopes_switched``: a switch
    the code asks for): a declaration goes with its plugin when a domain is
    retired. One index probe per such scope; none on a store without
    ``TenantClaimsProbe``."""
    if not isinstance(transfer, TenantClaimsProbe):
        return []
    return [scope for scope in await transfer.tenant_claim_scopes() if scope not in declared]
