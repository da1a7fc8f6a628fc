"""The store contract's listing part, as shipped (service/store_contract/test_listing.py),
on each of Chronicle's stores."""

from service.store_contract.test_listing import *  # noqa: F403
