"""The store contract's data_key part, as shipped (service/store_contract/test_data_key.py),
on each of Chronicle's stores."""

from service.store_contract.test_data_key import *  # noqa: F403
