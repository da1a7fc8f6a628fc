"""Commands and events counted per tenant (``--metrics-tenants N``), with a
bound on how many tenants get a series of their own.

Off by default because every label value is a time series Prometheus
stores and indexes for as long as it keeps data: a label per tenant on a
server of ten thousand tenants is ten thousand series per metric and
outcome, which slows every query and can exhaust the Prometheus server's
memory. So the first N tenants this replica accepts a command of get a
``tenant`` label of their own for as long as it runs, and every later one
is counted under ``tenant="(other tenants)"``, as is a refused command of a
tenant not labelled yet (a refusal takes no place: a client refused every
command could otherwise fill them with made-up tenants); commands to an
aggregate of no tenant (an id without a valid tenant before ``:``) under
``tenant="(no tenant)"``. At most N + 2 values per metric, whatever clients
send. The two hold a space, which no tenant id may (``tenant_problem``): a
tenant of any name, one spelt ``(other)`` or ``(none)`` too, has a series
of its own that no out-of-band value shares.

Why the first N seen and not the N busiest: a label that moved between a
tenant's own series and ``(other tenants)`` as traffic shifted would break each
series' counter (``rate()`` over a series that stops and restarts), and
finding the busiest takes counting every tenant, the unbounded state the
bound is there to avoid. The first N are stable until the replica
restarts; each replica picks its own.

A command's tenant is its aggregate's (the id's part before ``:``,
``service.principal.tenant_of_id``), whoever sent it: a reaction's
commands and an unscoped principal's count for the tenant whose aggregate
they change. Cost on the command's path: one ``str.partition`` and one
dict lookup for a tenant already labelled (its counters are kept, not
looked up by label); a tenant beyond the bound also has its id checked
(``tenant_problem``, a few string tests) each time, as nothing is kept
for it.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from service.principal import TENANT_SEPARATOR, tenant_problem

# Labels no tenant id can take (a space: service.principal.tenant_problem),
# so no tenant is ever counted under them, nor they under a tenant's.
NO_TENANT = "(no tenant)"
OTHER_TENANTS = "(other tenants)"
ACCEPTED = "accepted"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class _TenantSeries:
    """One tenant label's counters, kept so that counting is no label lookup."""

    accepted: Counter
    refused: Counter
    events: Counter


class TenantCounts:
    """``chronicle_tenant_commands_total{tenant, outcome}`` and
    ``chronicle_tenant_events_appended_total{tenant}``, ``limit`` tenants
    labelled at most."""

    def __init__(self, registry: CollectorRegistry, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1 (no per-tenant counters: none of these)")
        self._commands = Counter(
            "chronicle_tenant_commands",
            "Commands run, by the tenant of their aggregate (the first --metrics-tenants tenants; the rest"
            f" '{OTHER_TENANTS}', ids of no tenant '{NO_TENANT}') and outcome (accepted, refused)",
            ["tenant", "outcome"],
            registry=registry,
        )
        self._events = Counter(
            "chronicle_tenant_events_appended",
            "Events appended by commands, by the tenant of their aggregate (as chronicle_tenant_commands_total)",
            ["tenant"],
            registry=registry,
        )
        self._limit = limit
        self._labelled: dict[str, _TenantSeries] = {}
        self._none = self._series(NO_TENANT)
        self._other = self._series(OTHER_TENANTS)

    def _series(self, label: str) -> _TenantSeries:
        return _TenantSeries(
            accepted=self._commands.labels(tenant=label, outcome=ACCEPTED),
            refused=self._commands.labels(tenant=label, outcome=REFUSED),
            events=self._events.labels(tenant=label),
        )

    def series_of(self, aggregate_id: str, *, may_label: bool) -> _TenantSeries:
        """The series ``aggregate_id``'s command counts under; ``may_label``:
        a tenant not labelled yet may take a free place (an accepted
        command), else it counts under ``(other tenants)`` (a refused one)."""
        tenant, separator, _ = aggregate_id.partition(TENANT_SEPARATOR)
        found = self._labelled.get(tenant) if separator else self._none
        if found is not None:
            return found
        if tenant_problem(tenant):
            return self._none
        if not may_label or len(self._labelled) >= self._limit:
            return self._other
        series = self._labelled[tenant] = self._series(tenant)
        return series

    def accepted(self, aggregate_id: str, events: int) -> None:
        series = self.series_of(aggregate_id, may_label=True)
        series.accepted.inc()
        if events:
            series.events.inc(events)

    def refused(self, aggregate_id: str) -> None:
        # A refused command never takes a place: whoever may send commands
        # (even one refused every one, SUBMIT_DENIED) could otherwise fill
        # the places with ids of made-up tenants before the real ones came.
        self.series_of(aggregate_id, may_label=False).refused.inc()

    @property
    def labelled(self) -> frozenset[str]:
        """The tenants with series of their own."""
        return frozenset(self._labelled)
