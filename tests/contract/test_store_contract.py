"""The store contract's store part, as shipped (service/store_contract/test_store.py),
on each of Chronicle's stores."""

from service.store_contract.test_store import *  # noqa: F403
