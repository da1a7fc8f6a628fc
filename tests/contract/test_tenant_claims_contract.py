"""The store contract's part on claims scopes unique per tenant, as shipped
(service/store_contract/test_tenant_claims.py), on each of Chronicle's stores."""

from service.store_contract.test_tenant_claims import *  # noqa: F403
