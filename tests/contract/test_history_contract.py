"""The store contract's history part, as shipped (service/store_contract/test_history.py),
on each of Chronicle's stores."""

from service.store_contract.test_history import *  # noqa: F403
