"""The store contract's log part, as shipped (service/store_contract/test_log.py),
on each of Chronicle's stores."""

from service.store_contract.test_log import *  # noqa: F403
