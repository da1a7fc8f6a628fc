"""The store contract's claims part, as shipped (service/store_contract/test_claims.py),
on each of Chronicle's stores."""

from service.store_contract.test_claims import *  # noqa: F403
