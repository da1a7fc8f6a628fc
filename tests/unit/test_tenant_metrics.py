"""Per-tenant counters (``--metrics-tenants N``): the label each aggregate
id gets, and the bound on how many tenants are labelled."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from service.errors import ConfigurationError
from service.observability.tenant_metrics import NO_TENANT, OTHER_TENANTS, TenantCounts
from service.principal import tenant_problem
from service.settings import MAX_METRICS_TENANTS, Settings


def commands(registry: CollectorRegistry, tenant: str, outcome: str) -> float:
    return registry.get_sample_value("chronicle_tenant_commands_total", {"tenant": tenant, "outcome": outcome}) or 0.0


def events(registry: CollectorRegistry, tenant: str) -> float:
    return registry.get_sample_value("chronicle_tenant_events_appended_total", {"tenant": tenant}) or 0.0


def tenant_labels(registry: CollectorRegistry) -> set[str]:
    return {
        sample.labels["tenant"]
        for family in registry.collect()
        for sample in family.samples
        if sample.name.startswith("chronicle_tenant_")
    }


def test_the_first_tenants_seen_are_labelled_and_every_later_one_is_other() -> None:
    registry = CollectorRegistry()
    counts = TenantCounts(registry, 2)
    counts.accepted("acme:acc-1", 2)
    counts.accepted("globex:acc-1", 1)
    counts.accepted("initech:acc-1", 3)  # the third tenant: over the bound
    counts.refused("umbrella:acc-1")
    counts.accepted("acme:acc-2", 0)  # a command that appended nothing
    counts.refused("acme:acc-1")
    assert counts.labelled == {"acme", "globex"}
    assert (commands(registry, "acme", "accepted"), commands(registry, "acme", "refused")) == (2, 1)
    assert (events(registry, "acme"), events(registry, "globex")) == (2, 1)
    assert (commands(registry, OTHER_TENANTS, "accepted"), commands(registry, OTHER_TENANTS, "refused")) == (1, 1)
    assert events(registry, OTHER_TENANTS) == 3
    assert "initech" not in tenant_labels(registry)


def test_a_refused_command_takes_no_label_and_counts_under_other_until_its_tenant_has_one() -> None:
    registry = CollectorRegistry()
    counts = TenantCounts(registry, 2)
    for number in range(1, 6):
        counts.refused(f"junk{number}:x")
    counts.accepted("acme:acc-1", 1)
    counts.refused("acme:acc-1")
    counts.accepted("globex:acc-1", 1)
    assert counts.labelled == {"acme", "globex"}
    assert commands(registry, OTHER_TENANTS, "refused") == 5
    assert commands(registry, "acme", "refused") == 1


@pytest.mark.parametrize(
    "aggregate_id",
    ["acc-1", "", ":acc-1", "a b:acc-1", "x" * 65 + ":acc-1", "tab\t:acc-1"],
)
def test_an_id_of_no_tenant_counts_under_none_and_takes_no_place(aggregate_id: str) -> None:
    registry = CollectorRegistry()
    counts = TenantCounts(registry, 1)
    counts.refused(aggregate_id)
    assert commands(registry, NO_TENANT, "refused") == 1
    assert counts.labelled == frozenset()
    counts.accepted("acme:acc-1", 1)  # the one place is still free
    assert counts.labelled == {"acme"}


def test_a_tenant_of_any_name_is_told_apart_from_the_out_of_band_labels() -> None:
    """Before: the labels were ``(none)`` and ``(other)``, which are tenant
    ids, so tenants named so were counted under ``(other)`` with the rest.
    The labels now hold a space, which no tenant id may."""
    registry = CollectorRegistry()
    counts = TenantCounts(registry, 5)
    counts.accepted("(none):acc-1", 1)
    counts.accepted("(other):acc-1", 2)
    counts.refused("acc-1")
    assert counts.labelled == {"(none)", "(other)"}
    assert (commands(registry, "(none)", "accepted"), events(registry, "(other)")) == (1, 2)
    assert (commands(registry, OTHER_TENANTS, "accepted"), commands(registry, NO_TENANT, "refused")) == (0, 1)
    for label in (NO_TENANT, OTHER_TENANTS):
        assert tenant_problem(label.partition(":")[0])  # no tenant can be named as they are


def test_however_many_tenants_come_the_labels_stay_bounded() -> None:
    registry = CollectorRegistry()
    counts = TenantCounts(registry, 10)
    for n in range(5000):
        counts.accepted(f"tenant{n}:acc-1", 1)
    assert len(tenant_labels(registry)) == 10 + 2  # the first ten, and the two out-of-band labels
    assert commands(registry, OTHER_TENANTS, "accepted") == 4990
    assert commands(registry, "tenant9", "accepted") == 1


def test_the_setting_is_off_by_default_and_bounded() -> None:
    assert Settings().metrics_tenants == 0
    assert Settings(metrics_tenants=MAX_METRICS_TENANTS).metrics_tenants == MAX_METRICS_TENANTS
    for bad in (-1, MAX_METRICS_TENANTS + 1):
        with pytest.raises(ConfigurationError) as refused:
            Settings(metrics_tenants=bad)
        assert refused.value.reason == "BAD_SETTING"


def test_tenants_counted_with_no_metrics_served_are_warned_of() -> None:
    """Before: --metrics-tenants without --metrics-listen or --console-listen
    (where the metrics are kept) was accepted and did nothing, silently."""
    (warning,) = Settings(metrics_tenants=5).without_effect()
    assert warning.startswith("--metrics-tenants 5 counts nothing: there are no metrics without --metrics-listen")
    assert Settings(metrics_tenants=5, metrics_listen="127.0.0.1:0").without_effect() == []
    assert Settings(metrics_tenants=5, console_listen="127.0.0.1:0").without_effect() == []
    assert Settings().without_effect() == []
