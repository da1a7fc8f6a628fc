"""The store monitor tells a store out of reach from a schema this replica's
code is below (observability.md: ``chronicle_store_up`` and
``chronicle_schema_compatible``): SCHEMA_TOO_NEW is a store that answered.
Over a real PostgreSQL: tests/integration/test_schema_floor_while_serving.py."""

from __future__ import annotations

from service.api.health import Health, StoreMonitor
from service.errors import StoreUnavailable
from service.store.schema_use import SCHEMA_TOO_NEW


class ScriptedPing:
    """A store whose ping raises ``failure`` (None: answers)."""

    def __init__(self) -> None:
        self.failure: Exception | None = None

    async def ping(self) -> None:
        if self.failure is not None:
            raise self.failure


async def test_a_schema_too_new_is_a_reachable_store_and_an_unreachable_one_keeps_the_schema_as_seen() -> None:
    store, health = ScriptedPing(), Health()
    monitor = StoreMonitor(store, health, interval=1.0)  # type: ignore[arg-type]
    assert (monitor.store_up, monitor.schema_compatible) == (False, True)  # before the first ping
    assert await monitor.check()
    assert (monitor.store_up, monitor.schema_compatible, health.serving) == (True, True, True)

    store.failure = StoreUnavailable("floor above this code", reason=SCHEMA_TOO_NEW)
    assert not await monitor.check()
    assert (monitor.store_up, monitor.schema_compatible, health.serving) == (True, False, False)

    # Out of reach: whether the schema changed is not known.
    store.failure = StoreUnavailable("connection refused", reason="STORE_UNAVAILABLE")
    assert not await monitor.check()
    assert (monitor.store_up, monitor.schema_compatible, health.serving) == (False, False, False)
    store.failure = TimeoutError()
    assert not await monitor.check()
    assert (monitor.store_up, monitor.schema_compatible) == (False, False)

    store.failure = None
    assert await monitor.check()
    assert (monitor.store_up, monitor.schema_compatible, health.serving) == (True, True, True)
