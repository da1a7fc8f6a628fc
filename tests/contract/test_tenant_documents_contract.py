"""The store contract's part on tenant_keyed read models' documents under
tenants' keys, as shipped (service/store_contract/test_tenant_documents.py),
on each of Chronicle's stores."""

from service.store_contract.test_tenant_documents import *  # noqa: F403
