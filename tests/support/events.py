"""Building store records in tests: the store contract's helpers."""

from service.store_contract.records import command_record, new_event, recorded_event

__all__ = ["command_record", "new_event", "recorded_event"]
