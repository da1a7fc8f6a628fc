"""Importing claims taken while a scope was global into one now declared per tenant.

A plugin that declares a scope per tenant over claims taken while it was
global does not start (``claim_scopes.refuse_scopes_switched``): those
claims would be checked no more. The way over is a new store, the old
one's export imported with ``derive_per_tenant_claims``: each claim record
that is global in a scope declared per tenant is left out, and its
aggregate's claims are derived from its state in the aggregate's tenant
(claims.py), as the plugin's ``AggregateType.claims`` declares them.

A global claim cannot simply be moved into its tenant's scope: under
encryption at rest its value is a keyed hash under the scope's key, and
the tenant's scope has a key of its own; the state, which the server
opens, holds the value in the clear. A value global once is unique within
each tenant, so the derived claims never clash with each other unless the
declaration says otherwise than the handlers did (CLAIM_HELD, as any
derived claim).

A left-out claim is refused (BAD_RECORD) when nothing would take its value
again: its aggregate is of a type that declares no claims, or came with no
events before its claim records, or names no tenant. Without the option a
global claim in a per-tenant scope is refused (BAD_RECORD), as before: an
import never drops a claim unasked.
"""

from __future__ import annotations

from service.errors import InvalidInput
from service.plugins.registry import Registry
from service.principal import tenant_of_id
from service.store.records import HeldClaim
from service.transfer.claims import ClaimsToDerive
from service.transfer.records import BAD_RECORD

__all__ = ["NO_PER_TENANT_SCOPES", "check_switching", "left_out_to_derive"]

NO_PER_TENANT_SCOPES = "NO_PER_TENANT_SCOPES"


def check_switching(registry: Registry | None) -> None:
    """Refuse ``derive_per_tenant_claims`` where no plugin declares a scope
    per tenant (a server whose plugin is not the new one yet): it would
    leave nothing out, and the per-tenant procedure would end with its
    claims global."""
    if registry is None or not registry.per_tenant_claim_scopes:
        raise InvalidInput.for_field(
            "options.derive_per_tenant_claims",
            "no plugin of this server declares a claims scope per tenant (plugin.claims_scope(NAME,"
            " per_tenant=True)): there is no global claim to derive per tenant; load the plugin that declares it",
            reason=NO_PER_TENANT_SCOPES,
        )


def left_out_to_derive(
    registry: Registry, to_derive: ClaimsToDerive, claim: HeldClaim, where: str, *, deriving: bool
) -> bool:
    """Whether ``claim`` is global in a scope ``registry`` declares per tenant,
    to be left out and derived (``deriving``, the import's option). Such a
    claim that cannot be is refused, BAD_RECORD, naming ``where``."""
    if claim.scope not in registry.per_tenant_claim_scopes:
        return False
    at_fault = f"{claim.scope!r} is declared per tenant, and this claim of {claim.aggregate_id!r} is global"
    if not deriving:
        raise InvalidInput.for_field(
            where,
            f"{at_fault}: import with derive_per_tenant_claims (chronicle import --derive-per-tenant-claims) to"
            " leave it out and derive it from the aggregate's state, in its tenant",
            reason=BAD_RECORD,
        )
    if not tenant_of_id(claim.aggregate_id):
        cannot = "its aggregate names no tenant to hold it in (CLAIM_WITHOUT_TENANT)"
    elif not to_derive.declaring(claim.aggregate_id):
        cannot = (
            "the stream brought no events of it before, of an aggregate type whose plugin declares its claims"
            " (@aggregate.claims), to derive it from"
        )
    else:
        return True
    raise InvalidInput.for_field(
        where,
        f"{at_fault}, and cannot be derived per tenant: {cannot}; left out, its value would be held by no one",
        reason=BAD_RECORD,
    )
