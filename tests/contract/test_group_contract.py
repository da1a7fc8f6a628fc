"""The store contract's groups part, as shipped (service/store_contract/test_groups.py),
on each of Chronicle's stores."""

from service.store_contract.test_groups import *  # noqa: F403
