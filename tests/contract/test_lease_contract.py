"""The store contract's leases part, as shipped (service/store_contract/test_leases.py),
on each of Chronicle's stores."""

from service.store_contract.test_leases import *  # noqa: F403
