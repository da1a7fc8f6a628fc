"""The store contract's transfer part, as shipped (service/store_contract/test_transfer.py),
on each of Chronicle's stores."""

from service.store_contract.test_transfer import *  # noqa: F403
