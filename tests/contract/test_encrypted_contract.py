"""The store contract's encrypted part, as shipped (service/store_contract/test_encrypted.py),
on each of Chronicle's stores."""

from service.store_contract.test_encrypted import *  # noqa: F403
