"""The store contract's tenant-keys part, as shipped (service/store_contract/test_tenant_keys.py),
on each of Chronicle's stores."""

from service.store_contract.test_tenant_keys import *  # noqa: F403
