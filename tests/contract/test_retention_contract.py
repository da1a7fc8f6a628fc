"""The store contract's retention part, as shipped (service/store_contract/test_retention.py),
on each of Chronicle's stores."""

from service.store_contract.test_retention import *  # noqa: F403
