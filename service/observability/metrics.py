"""Prometheus metrics, served on a port of their own (``--metrics-listen``).

Names follow Prometheus conventions (``chronicle_`` prefix, base units,
``_total`` counters). Labels are bounded sets (command types the plugins
registered, status codes, store operations): never aggregate ids.

- ``chronicle_commands_total{command_type, outcome}``: commands processed;
  outcome is ``ok``, ``replayed``, ``dry_run`` or the gRPC code in lower case
  (``failed_precondition``, ``permission_denied``, ``aborted``, …). Commands
  refused as their request was decoded count too (``DecodingRefusals``), a
  type no plugin registered as ``command_type="(unknown)"``.
- ``chronicle_tenant_commands_total{tenant, outcome}`` and
  ``chronicle_tenant_events_appended_total{tenant}``, only with
  ``--metrics-tenants N``: commands run (``accepted``, ``refused``) and the
  events they appended, by their aggregate's tenant, N tenants labelled at
  most (``service.observability.tenant_metrics``).
- ``chronicle_command_duration_seconds{command_type}``: from taking a command
  to its result, queue wait included (histogram).
- ``chronicle_command_refusals_total{reason}``: commands refused, by the
  error's machine-readable reason (``INSUFFICIENT_FUNDS``,
  ``WRONG_EXPECTED_VERSION``, ``SUBMIT_DENIED``, ``INVALID_COMMAND_ID``,
  ``UNKNOWN_COMMAND_TYPE``, …): the plugins' and the server's reasons, a
  bounded set; in the pipeline or as the request was decoded.
- ``chronicle_rpc_refusals_total{reason}``: RPCs refused before a command
  was read (``NO_CREDENTIALS``, ``TOKEN_EXPIRED``, ``TOO_MANY_REQUESTS``,
  ``MALFORMED_REQUEST``, …).
- ``chronicle_principal_rate_limited_total{outcome}``: calls and stream
  messages a principal's commands-per-second limit held back: ``refused``
  (a Submit or SubmitBatch, or a stream that could not wait within its
  deadline) or ``waited`` (a stream's message started late). No principal
  label (cardinality): the audit log names whose calls were refused.
- ``chronicle_console_refusals_total{reason}``: what the operators' console
  refused: logins with a bad credential (``UNKNOWN_API_KEY``,
  ``INVALID_TOKEN``, ``TOKEN_EXPIRED``, …) and pages the policy denied its
  session's principal (``READ_DENIED``, …); the audit log has each one.
- ``chronicle_audit_refusals_sampled_total{reason}``: refusals of callers
  that were not authenticated beyond the audit log's rate for them, counted
  in a sampled entry (its ``occurrences``) instead of one of their own.
- ``chronicle_jwks_fetches_total{outcome}`` (``ok``, ``failed``, ``too_large``),
  ``chronicle_jwks_keys``, ``chronicle_jwks_last_fetched_timestamp_seconds``:
  with ``--jwt-jwks-url``, its key set's fetches, the keys in use and when
  they were fetched (``service.security.jwks_url``); alert on a timestamp
  falling behind.
- ``chronicle_queued_commands``, ``chronicle_live_workers``,
  ``chronicle_rpcs_in_flight``: gauges read at scrape time.
- ``chronicle_concurrency_conflicts_total``: appends that lost a version
  race; each is retried unless the budget is spent (the command then counts
  with outcome ``aborted``), so retries = conflicts - aborted.
- ``chronicle_subscriptions``, ``chronicle_subscription_lag_positions``:
  subscriptions open, and how far the slowest is behind the log's head.
- ``chronicle_subscription_held_bytes``: bytes of events the subscriptions
  and group consumers hold (pages being sent and read ahead; a consumer's
  events read ahead and sent unsettled; ``service.processing.held_events``)
- ``chronicle_group_consumers``: subscription-group consumer streams open
  on this replica; ``chronicle_group_lag_positions{group}``,
  ``chronicle_group_parked_events{group}``: how far each group's lowest
  checkpoint is behind the log's head, and its parked events;
  ``chronicle_group_skipped_events{group}``,
  ``chronicle_group_dismissed_events{group}``: the events it did not
  process, skipped by its consumers and dismissed by an operator, in all
  (sampled every few seconds from the store; the same for every replica).
- ``chronicle_projection_position{projection}``,
  ``chronicle_projection_lag_positions{projection}``,
  ``chronicle_projection_failing{projection}``,
  ``chronicle_projection_parked_events{projection}``, and for reactions
  ``chronicle_reaction_position{reaction}``,
  ``chronicle_reaction_lag_positions{reaction}``,
  ``chronicle_reaction_failing{reaction}``,
  ``chronicle_reaction_parked_commands{reaction}``: where each read model
  and reaction stands, how far behind the log's head, whether its last
  attempt failed (1) and what it parked; reported by the replica that runs
  it only (``service.observability.runners``), sampled with the groups'.
- ``chronicle_store_operation_duration_seconds{operation}``: time in the
  store per operation (``append``, ``read_aggregate``, …; histogram).
- ``chronicle_store_batches_total``, ``chronicle_store_batched_appends_total``,
  ``chronicle_store_unbatched_appends_total`` (PostgreSQL): group commit's
  batches, the appends they carried (the ratio of their rates is the
  mean batch: near 1 means group commit has nothing to group), and the
  appends that went alone after their batch refused itself (conflicts).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from service.errors import ChronicleError, ConfigurationError
from service.observability.scrape_server import start_scrape_server
from service.observability.tenant_metrics import TenantCounts
from service.plugins.middleware import CommandCall, Middleware
from service.processing.deadlines import DEADLINE_FIRED
from service.version import VERSION, commit

if TYPE_CHECKING:  # only PostgreSQL has group commit: no import of it for the others
    from service.security.jwks_url import JwksStats  # a sibling layer: its type only
    from service.store.postgres.group_commit import BatchCounts

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True, slots=True)
class RunnerGauges:
    """The gauges of one kind of runner (projections, or reactions), with
    the runner's name as their one label."""

    position: Gauge
    lag: Gauge
    failing: Gauge
    parked: Gauge

    @classmethod
    def of(cls, kind: str, parked: str, registry: CollectorRegistry) -> RunnerGauges:
        """``chronicle_<kind>_…{<kind>}``; ``parked``: what it parks (events, commands)."""
        return cls(
            position=Gauge(
                f"chronicle_{kind}_position",
                f"The log position a {kind} has handled up to, on the replica that runs it",
                [kind],
                registry=registry,
            ),
            lag=Gauge(
                f"chronicle_{kind}_lag_positions",
                f"How far a {kind} is behind the log's head, in positions, on the replica that runs it",
                [kind],
                registry=registry,
            ),
            failing=Gauge(
                f"chronicle_{kind}_failing",
                f"1 while a {kind}'s last attempt failed (it retries), else 0, on the replica that runs it",
                [kind],
                registry=registry,
            ),
            parked=Gauge(
                f"chronicle_{kind}_parked_{parked}",
                f"{parked.capitalize()} a {kind} parked, on the replica that runs it",
                [kind],
                registry=registry,
            ),
        )

    def remove(self, name: str) -> None:
        for gauge in (self.position, self.lag, self.failing, self.parked):
            with contextlib.suppress(KeyError):  # not set yet (its parked count is set last)
                gauge.remove(name)


class Metrics:
    """Every metric of one server, in a registry of its own."""

    def __init__(self, *, tenants: int = 0) -> None:
        """``tenants``: how many tenants get series of their own in the
        per-tenant counters (0: none are kept, ``--metrics-tenants``)."""
        self.registry = CollectorRegistry()
        r = self.registry
        self.tenants = TenantCounts(r, tenants) if tenants else None
        self.commands = Counter(
            "chronicle_commands", "Commands processed, by type and outcome", ["command_type", "outcome"], registry=r
        )
        self.command_duration = Histogram(
            "chronicle_command_duration_seconds",
            "Time from taking a command to its result, queue wait included",
            ["command_type"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.command_refusals = Counter(
            "chronicle_command_refusals", "Commands refused, by the error's reason", ["reason"], registry=r
        )
        self.rpc_refusals = Counter(
            "chronicle_rpc_refusals", "RPCs refused before a command was read, by reason", ["reason"], registry=r
        )
        self.console_refusals = Counter(
            "chronicle_console_refusals",
            "Logins and pages the operators' console refused, by reason",
            ["reason"],
            registry=r,
        )
        self.conflicts = Counter(
            "chronicle_concurrency_conflicts", "Appends that lost a version race (then retried)", registry=r
        )
        self.audit_refusals_sampled = Counter(
            "chronicle_audit_refusals_sampled",
            "Refusals of unauthenticated callers counted in a sampled audit entry, not recorded one by one, by reason",
            ["reason"],
            registry=r,
        )
        self.store_duration = Histogram(
            "chronicle_store_operation_duration_seconds",
            "Time spent in the store, by operation",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Always 1: which build this replica runs is in its labels (a rolling
        # upgrade shows as two versions at once: count by (version)).
        self.build_info = Gauge(
            "chronicle_build_info",
            "The Chronicle version and git commit this replica runs",
            ["version", "commit"],
            registry=r,
        )
        self.build_info.labels(version=VERSION, commit=commit() or "unknown").set(1)
        self.log_rewinds = Counter(
            "chronicle_log_rewinds",
            "Times this replica found its store's log gone back under what it had seen (a failover that lost"
            " commits, a restore into the live database): docs/observability.md",
            registry=r,
        )
        self.store_up = Gauge(
            "chronicle_store_up",
            "1 while the store answers this replica's health pings (reachable, whatever its schema), 0 while not",
            registry=r,
        )
        self.schema_compatible = Gauge(
            "chronicle_schema_compatible",
            "0 while the store's schema has a compatibility floor above this replica's code, 1 otherwise",
            registry=r,
        )
        self.serving = Gauge(
            "chronicle_serving", "1 while this replica's health says SERVING, 0 while NOT_SERVING", registry=r
        )
        self.schema_version = Gauge(
            "chronicle_schema_version",
            "The store's schema version as this replica last checked it (0: not yet)",
            registry=r,
        )
        self.owned_partitions = Gauge(
            "chronicle_owned_partitions", "Partitions of the aggregate hash space this replica owns", registry=r
        )
        self.cluster_members = Gauge(
            "chronicle_cluster_members",
            "Live replicas (members of the partitions' lease group) as this replica's last heartbeat saw them",
            registry=r,
        )
        self.cluster_members_behind_features = Gauge(
            "chronicle_cluster_members_behind_features",
            "Live replicas of a version that does not honour the cluster features on (a rollback, or an old replica"
            " that joined late): they read what the features write as absent (docs/deployment.md)",
            registry=r,
        )
        self.held_runners = Gauge(
            "chronicle_held_runner_leases",
            "Projections and reactions this replica runs (holds the lease of), by kind",
            ["kind"],
            registry=r,
        )
        self.queued = Gauge("chronicle_queued_commands", "Commands waiting in aggregate queues", registry=r)
        self.live_workers = Gauge("chronicle_live_workers", "Aggregate workers alive", registry=r)
        self.rpcs_in_flight = Gauge("chronicle_rpcs_in_flight", "RPCs being handled", registry=r)
        self.subscriptions = Gauge("chronicle_subscriptions", "Subscriptions open", registry=r)
        self.subscription_held_bytes = Gauge(
            "chronicle_subscription_held_bytes",
            "Bytes of events subscriptions and group consumers hold: read ahead, being sent, sent unsettled",
            registry=r,
        )
        self.rate_limited = Counter(
            "chronicle_principal_rate_limited",
            "Calls refused and stream messages made to wait by a principal's commands-per-second limit",
            ["outcome"],
            registry=r,
        )
        self.reaction_commands = Counter(
            "chronicle_reaction_commands",
            "Commands reactions sent, by reaction and outcome (accepted, replayed, refused, parked, ignored)",
            ["reaction", "outcome"],
            registry=r,
        )
        self.reaction_deadlines_fired = Counter(
            "chronicle_reaction_deadlines_fired",
            "Deadlines reactions' processes scheduled that fired (committed), by reaction",
            ["reaction"],
            registry=r,
        )
        self.subscription_lag = Gauge(
            "chronicle_subscription_lag_positions",
            "How far the slowest open subscription is behind the log's head, in positions",
            registry=r,
        )

        self.group_consumers = Gauge(
            "chronicle_group_consumers", "Subscription-group consumer streams open on this replica", registry=r
        )
        self.group_lag = Gauge(
            "chronicle_group_lag_positions",
            "How far a subscription group's lowest checkpoint is behind the log's head, in positions",
            ["group"],
            registry=r,
        )
        self.group_parked = Gauge(
            "chronicle_group_parked_events", "Events a subscription group parked", ["group"], registry=r
        )
        # Totals kept in the store (each event once), so gauges read from it,
        # not counters: every replica shows the same, across restarts.
        self.group_skipped = Gauge(
            "chronicle_group_skipped_events",
            "Events a subscription group's consumers skipped (nack action SKIP), in all",
            ["group"],
            registry=r,
        )
        self.group_dismissed = Gauge(
            "chronicle_group_dismissed_events",
            "Parked events of a subscription group that an operator dismissed, in all",
            ["group"],
            registry=r,
        )
        self.projections = RunnerGauges.of("projection", "events", r)
        self.reactions = RunnerGauges.of("reaction", "commands", r)

    def watch(
        self,
        *,
        queued: Callable[[], float],
        live_workers: Callable[[], float],
        rpcs_in_flight: Callable[[], float],
        subscriptions: Callable[[], float],
        subscription_held_bytes: Callable[[], float] = lambda: 0,
    ) -> None:
        """Gauges read at scrape time (on the metrics thread) from the parts
        that know; each callable must only read."""
        self.queued.set_function(queued)
        self.live_workers.set_function(live_workers)
        self.rpcs_in_flight.set_function(rpcs_in_flight)
        self.subscriptions.set_function(subscriptions)
        self.subscription_held_bytes.set_function(subscription_held_bytes)

    def watch_state(
        self,
        *,
        store_up: Callable[[], bool],
        serving: Callable[[], bool],
        schema_version: Callable[[], int | None],
        owned_partitions: Callable[[], int],
        schema_compatible: Callable[[], bool] = lambda: True,
        held_projections: Callable[[], int],
        held_reactions: Callable[[], int],
        cluster_members: Callable[[], int] = lambda: 0,
        members_behind_features: Callable[[], int] = lambda: 0,
        partitions_taken_over: Callable[[], int] = lambda: 0,
    ) -> None:
        """This replica's state, read at scrape time: the store's health, the
        health it reports, the schema, what it owns and runs, the live
        members it sees, and the partitions it took from members whose
        membership expired (replicas that died rather than stopped)."""
        self.cluster_members.set_function(cluster_members)
        self.cluster_members_behind_features.set_function(members_behind_features)
        self.registry.register(
            _CountCollector(
                "chronicle_partitions_taken_over",
                "Partitions this replica took from replicas whose membership expired (died, hung or cut off)",
                partitions_taken_over,
            )
        )
        self.store_up.set_function(lambda: 1.0 if store_up() else 0.0)
        self.serving.set_function(lambda: 1.0 if serving() else 0.0)
        self.schema_version.set_function(lambda: float(schema_version() or 0))
        self.schema_compatible.set_function(lambda: 1.0 if schema_compatible() else 0.0)
        self.owned_partitions.set_function(owned_partitions)
        self.held_runners.labels(kind="projection").set_function(held_projections)
        self.held_runners.labels(kind="reaction").set_function(held_reactions)

    def watch_jwks(self, stats: JwksStats) -> None:
        """The fetches of --jwt-jwks-url's key set, read at scrape time."""
        self.registry.register(_JwksCollector(stats))

    def watch_batches(self, counts: Callable[[], BatchCounts]) -> None:
        """Group commit's counters, read at scrape time."""
        self.registry.register(_BatchCollector(counts))

    def reaction_outcome(self, reaction: str, outcome: str) -> None:
        """A reaction's ``Outcomes`` hook: a command's outcome, or a deadline fired."""
        if outcome == DEADLINE_FIRED:
            self.reaction_deadlines_fired.labels(reaction=reaction).inc()
            return
        self.reaction_commands.labels(reaction=reaction, outcome=outcome).inc()

    def principal_rate_limited(self, outcome: str) -> None:
        """``RateLimits``' ``on_limited`` hook."""
        self.rate_limited.labels(outcome=outcome).inc()

    async def rpc_refused(
        self, method: str, request: object, error: ChronicleError, principal: object, peer: str
    ) -> None:
        """An ``OnRefused`` hook for the gate."""
        self.rpc_refusals.labels(reason=error.reason).inc()

    def console_refused(self, error: ChronicleError) -> None:
        """A login or a page the console refused (its ``on_refused`` hook
        counts it here and audits it)."""
        self.console_refusals.labels(reason=error.reason).inc()

    def audit_sampled(self, reason: str) -> None:
        """A refusal counted in a sampled audit entry instead of one of its own."""
        self.audit_refusals_sampled.labels(reason=reason).inc()


class _CountCollector(Collector):
    """A counter whose value a part keeps (read at scrape time)."""

    def __init__(self, name: str, documentation: str, value: Callable[[], int]) -> None:
        self._name, self._documentation, self._value = name, documentation, value

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self._value())


class _JwksCollector(Collector):
    def __init__(self, stats: JwksStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        fetches = CounterMetricFamily(
            "chronicle_jwks_fetches", "Fetches of the JWT signing keys' set (--jwt-jwks-url)", labels=["outcome"]
        )
        fetches.add_metric(["ok"], self._stats.fetched)
        fetches.add_metric(["failed"], self._stats.failed)
        fetches.add_metric(["too_large"], self._stats.too_large)
        yield fetches
        yield GaugeMetricFamily("chronicle_jwks_keys", "Signing keys in the set in use", value=self._stats.keys)
        yield GaugeMetricFamily(
            "chronicle_jwks_last_fetched_timestamp_seconds",
            "When the set in use was fetched (seconds since the epoch)",
            value=self._stats.last_fetched,
        )


class _BatchCollector(Collector):
    def __init__(self, counts: Callable[[], BatchCounts]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._counts()
        yield CounterMetricFamily("chronicle_store_batches", "Group-commit transactions written", value=counts.batches)
        yield CounterMetricFamily(
            "chronicle_store_batched_appends", "Appends that went through group commit", value=counts.appends
        )
        yield CounterMetricFamily(
            "chronicle_store_unbatched_appends",
            "Appends written alone after their batch refused itself (a conflict or a retried command)",
            value=counts.alone,
        )


# What a refused command counts as: the lower-case name of its gRPC code
# (``service.api.status`` knows it; the composition root passes it in).
CodeName = Callable[[ChronicleError], str]


def outcome(call: CommandCall, code_name: CodeName) -> str:
    if call.error is None:
        if call.dry_run:
            return "dry_run"
        return "replayed" if call.result is not None and call.result.replayed else "ok"
    if isinstance(call.error, ChronicleError):
        return code_name(call.error)
    if isinstance(call.error, asyncio.CancelledError):
        return "cancelled"
    return "internal"


class MetricsMiddleware(Middleware):
    name = "metrics"

    def __init__(self, metrics: Metrics, *, code_name: CodeName) -> None:
        self._metrics = metrics
        self._code_name = code_name

    def _count(self, call: CommandCall) -> None:
        self._metrics.commands.labels(command_type=call.command_type, outcome=outcome(call, self._code_name)).inc()
        self._metrics.command_duration.labels(command_type=call.command_type).observe(call.elapsed)

    def after(self, call: CommandCall) -> None:
        self._count(call)
        tenants = self._metrics.tenants
        # Each command once, when it runs: not a retry answered from its
        # record, nor a dry run (chronicle_commands_total has both).
        if tenants is not None and not call.dry_run and call.result is not None and not call.result.replayed:
            tenants.accepted(call.aggregate_id, len(call.result.events))

    def on_error(self, call: CommandCall) -> None:
        self._count(call)
        tenants = self._metrics.tenants
        if tenants is not None and not call.dry_run:
            tenants.refused(call.aggregate_id)
        if isinstance(call.error, ChronicleError):
            self._metrics.command_refusals.labels(reason=call.error.reason).inc()


# The ``command_type`` of a command refused as it was decoded whose type no
# plugin registered (or that names none): not the caller's string, which
# would make a label of anything a client sends. No Protobuf name is spelt so.
UNKNOWN_TYPE = "(unknown)"


class DecodingRefusals:
    """Counts the commands refused as their requests were decoded, between
    the gate and the pipeline (a command id that is no UUID, a type no
    plugin registered, a malformed field, a batch against the batch rules):
    as ``MetricsMiddleware`` counts the pipeline's refusals, in
    ``chronicle_commands_total`` (outcome: the gRPC code) and
    ``chronicle_command_refusals_total`` (by reason). The command service's
    ``counted`` hook, called on the refusal's path only.

    Not in the duration histogram: such a command never waited for
    anything, and the histogram is of commands that reached the pipeline."""

    def __init__(self, metrics: Metrics, *, code_name: CodeName, registered: Callable[[str], bool]) -> None:
        self._metrics = metrics
        self._code_name = code_name
        self._registered = registered

    def __call__(self, command_type: str, aggregate_id: str, error: ChronicleError) -> None:
        label = command_type if command_type and self._registered(command_type) else UNKNOWN_TYPE
        self._metrics.commands.labels(command_type=label, outcome=self._code_name(error)).inc()
        self._metrics.command_refusals.labels(reason=error.reason).inc()
        if self._metrics.tenants is not None:
            # The id as sent, which may be malformed: a tenant is only
            # labelled when its part before ':' is a tenant id.
            self._metrics.tenants.refused(aggregate_id)


class MetricsServer:
    """The HTTP endpoint Prometheus scrapes (``/metrics``), on its own thread,
    its connections bounded (``scrape_server``)."""

    def __init__(self, metrics: Metrics, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        try:
            self._server: WSGIServer
            self._server, self._thread = start_scrape_server(host, int(port), metrics.registry)
        except OSError as error:
            raise ConfigurationError(f"cannot serve metrics on {listen}: {error}", reason="BIND_FAILED") from error
        self.address = f"{host}:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
