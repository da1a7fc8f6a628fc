"""The store contract's projection part, as shipped (service/store_contract/test_projection.py),
on each of Chronicle's stores."""

from service.store_contract.test_projection import *  # noqa: F403
