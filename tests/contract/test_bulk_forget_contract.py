"""The store contract's bulk-forget part, as shipped (service/store_contract/test_bulk_forget.py),
on each of Chronicle's stores."""

from service.store_contract.test_bulk_forget import *  # noqa: F403
