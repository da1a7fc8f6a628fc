"""The store contract's audit part, as shipped (service/store_contract/test_audit.py),
on each of Chronicle's stores."""

from service.store_contract.test_audit import *  # noqa: F403
