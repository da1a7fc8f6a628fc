"""The composition root: settings → store → plugins → processor → server.

The only place that wires concrete parts together. ``Application`` owns
their lifecycle: ``start`` opens the store and binds the port, ``stop``
drains in order (health NOT_SERVING first, and new calls still served for
``shutdown_drain`` seconds so that load balancers see it; then new calls
refused while in-flight RPCs get ``shutdown_grace``; then workers, then the
store).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import grpc

from service.api.admin_service import AdminService
from service.api.cluster_service import ClusterService
from service.api.command_service import CommandService
from service.api.disclosure import Disclosure
from service.api.dry_runs import DryRunAudit
from service.api.event_service import EventService
from service.api.gate import RpcGate, refused_rpc_hooks
from service.api.group_service import SubscriptionGroupService
from service.api.health import Health, StoreMonitor
from service.api.projection_service import ProjectionService
from service.api.rate_limits import RateLimits
from service.api.reaction_service import ReactionService
from service.api.refused_commands import RefusedCommands
from service.api.server import build_server
from service.api.status import status_code
from service.api.tracing import TracingInterceptor
from service.api.transfers import Transfers
from service.audit import AuditLog, AuditMiddleware, SampledRefusals
from service.claim_scopes import refuse_scopes_switched, undeclared_tenant_scopes
from service.cluster.addresses import WILDCARD_HOSTS, advertised_address, with_port
from service.cluster.features_behind import FeaturesBehind
from service.cluster.leases import KeeperLease, LeaseGroup, LeaseKeeper
from service.cluster.ownership import Ownership, partition_group
from service.console.load import LoadSampler
from service.console.server import Console, check_console_exposure
from service.console.server import OnRefused as ConsoleRefused
from service.console.views import Parts
from service.errors import ChronicleError, ConfigurationError, StoreUnavailable
from service.groups import SubscriptionGroups
from service.observability.logs import LoggingMiddleware
from service.observability.metrics import DecodingRefusals, Metrics, MetricsMiddleware, MetricsServer
from service.observability.runners import RunnerWatch
from service.observability.store_timing import timed
from service.observability.subscriptions import GroupSampler, LagSampler, SubscriptionTracker
from service.observability.tracing import TracingMiddleware
from service.observability.tracing import wanted as tracing_wanted
from service.plugins.discovery import ENTRY_POINT_GROUP, discover_plugins
from service.plugins.middleware import Middleware
from service.plugins.registry import Registry
from service.principal import Principal, reaction_principal
from service.processing.executor import CommandExecutor
from service.processing.held_events import MAX_SUBSCRIPTION_MESSAGE_BYTES, HeldEvents
from service.processing.log_rewinds import LogRewindWatch
from service.processing.memory_limit import check_cache_memory
from service.processing.middleware import Pipeline
from service.processing.payload_json import payload_json
from service.processing.projections import ProjectionRunner, Projections
from service.processing.reaction_starts import fix_start_of, fix_starts_safely
from service.processing.reactions import ReactionRunner, Reactions
from service.processing.retention import Pruner, ReactionHorizon
from service.processing.router import Router
from service.processing.snapshots import SnapshotPolicy
from service.processing.state import AggregateLoader
from service.processing.subscriptions import Subscriptions
from service.processing.watchdog import LoopLagWatchdog
from service.security import policy_names
from service.security.credentials import ApiKeys, Authenticator, JwtVerifier
from service.security.exposure import check_exposure, check_metrics_exposure, is_loopback
from service.security.jwks_url import RemoteJwks
from service.security.key_files import check_private
from service.security.middleware import AuthorizationMiddleware, ReactionOnlyCommands
from service.security.open_files import open_files_warnings, raise_open_files_limit
from service.security.policy import Authorizer, Policy, Rate, principals_without_credential, roles_without_consume
from service.security.reloading import SecurityReloader, WatchedFile
from service.security.tls import server_credentials
from service.settings import Settings, bad_setting
from service.store.base import Store, StoreAdapter
from service.store.encrypted import encrypted
from service.store.encryption import Keyring, MasterKeys, refuse_if_sealed
from service.store.factory import check_shared_by_processes, open_store, redacted_url, store_kind
from service.store.features import TENANT_DOCUMENT_KEYS, ClusterFeatures, FeatureReader
from service.store.leasing import LeaseMember
from service.store.schema_use import SchemaUse
from service.transfer.sealing import import_sealing
from service.version import described as described_version

if TYPE_CHECKING:
    from service.store.postgres.standby import StandbyStore

log = logging.getLogger("chronicle")
# The most a page of events, documents or command results carries before its
# last item (see ``start``).
MAX_PAGE_BYTES = 1024 * 1024
PROJECTIONS_GROUP = "projections"


def build_registry(settings: Settings) -> Registry:
    plugins = discover_plugins(
        settings.plugins,
        entry_point_group=ENTRY_POINT_GROUP if settings.discover_plugins else None,
        examples=settings.example_plugins,
    )
    return Registry(plugins)


def build_authentication(
    settings: Settings, registry: Registry, jwks: RemoteJwks | None = None
) -> tuple[Authenticator | None, Authorizer]:
    """Who callers are and what they may do; with auth off (None, every
    caller anonymous and never an administrator unless --anonymous-admin).
    ``jwks``: the keys of --jwt-jwks-url (``build_remote_jwks``)."""
    if not settings.auth:
        return None, Authorizer.anonymous(admin=settings.anonymous_admin)
    policy = _policy(settings, registry)
    api_keys = _api_keys(settings, policy) if settings.api_keys_file else None
    jwt_verifier = _jwt_verifier(settings) if settings.jwt_key_file else None
    if jwks is not None:
        jwt_verifier = JwtVerifier(
            keys=jwks,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience or None,
            leeway_seconds=settings.jwt_leeway_seconds,
            tenant_claim=settings.jwt_tenant_claim,
        )
    authenticator = Authenticator(api_keys=api_keys, jwt_verifier=jwt_verifier, mtls=bool(settings.tls_client_ca_file))
    return authenticator, Authorizer(policy)


def _policy(settings: Settings, registry: Registry) -> Policy:
    """The policy file, loaded, its names checked against the plugins
    (``service.security.policy_names``: the wrong kind of type refused, an
    undeclared one said) and against the API keys' roles; a role that
    subscribes but names no group to consume is said (it loads: refusing it
    would stop servers whose consumers merely lose their groups until the
    grant is written)."""
    policy = Policy.load(settings.policy_file)
    for warning in policy_names.check_names(policy, registry, source=settings.policy_file):
        log.warning("policy %s", warning)
    if settings.api_keys_file:  # a reload that drops a role the keys hold is refused (the keys read again)
        _check_key_roles(settings, ApiKeys.load(settings.api_keys_file), policy)
    methods = _credential_kinds(settings)
    if len(methods) > 1:
        for name in principals_without_credential(policy):
            log.warning(
                "policy %s: principals.%s names no credential: it stands for a %s of that name alike (a token"
                " whose subject is a certificate's name gets the certificate's roles); add credential = one of %s",
                settings.policy_file,
                name,
                " or ".join(methods),
                methods,
            )
    for role in roles_without_consume(policy):
        log.warning(
            "policy %s: role %r grants subscribe but no consume: its principals may not consume subscription"
            ' groups (since the consume grant; add consume = ["group-name", "prefix-*"], or ["*"] for every'
            " group, as before)",
            settings.policy_file,
            role,
        )
    return policy


def _credential_kinds(settings: Settings) -> list[str]:
    """The kinds of credential the server accepts (``Principal.method``)."""
    configured = {"mtls": settings.tls_client_ca_file, "jwt": settings.jwt_key_file, "api-key": settings.api_keys_file}
    return [method for method, setting in configured.items() if setting]


def _api_keys(settings: Settings, policy: Policy | None = None) -> ApiKeys:
    """The API-key file; their roles checked against ``policy`` (None: the
    policy file, read again for the check, as when the keys are reloaded)."""
    _check_private(settings, settings.api_keys_file, "API-key file")
    keys = ApiKeys.load(settings.api_keys_file)
    _check_key_roles(settings, keys, policy if policy is not None else Policy.load(settings.policy_file))
    return keys


def _check_key_roles(settings: Settings, keys: ApiKeys, policy: Policy) -> None:
    policy_names.check_key_roles(keys, policy, keys_source=settings.api_keys_file, policy_source=settings.policy_file)


def _jwt_verifier(settings: Settings) -> JwtVerifier:
    verifier = JwtVerifier.from_key_file(
        settings.jwt_key_file,
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience or None,
        leeway_seconds=settings.jwt_leeway_seconds,
        tenant_claim=settings.jwt_tenant_claim,
    )
    if verifier.symmetric:  # a public key is no secret
        _check_private(settings, settings.jwt_key_file, "JWT secret")
    return verifier


async def build_remote_jwks(settings: Settings) -> RemoteJwks | None:
    """The keys at --jwt-jwks-url, fetched once (ConfigurationError
    ``JWKS_UNAVAILABLE`` if that fails); its refresh starts with ``start``."""
    if not (settings.auth and settings.jwt_jwks_url):
        return None
    jwks = RemoteJwks(
        settings.jwt_jwks_url,
        ca_file=settings.jwt_jwks_ca_file,
        refresh_seconds=settings.jwt_jwks_refresh_seconds,
        unknown_kid_seconds=settings.jwt_jwks_unknown_kid_seconds,
        timeout_seconds=settings.jwt_jwks_timeout_seconds,
    )
    await jwks.fetch_first()
    return jwks


def build_security_reloader(
    settings: Settings,
    authenticator: Authenticator | None,
    authorizer: Authorizer,
    use_master_keys: Callable[[MasterKeys], Awaitable[None]] | None = None,
    *,
    registry: Registry,
) -> SecurityReloader | None:
    """What reads the API keys, the JWT key, the policy and the master-key
    file again when they change (``service.security.reloading``), loaded and
    checked as at start-up (the policy's names against ``registry``'s
    plugins). ``use_master_keys``: where new master keys go
    (checked against the store's data keys first: ``Keyring.use_master_keys``)."""
    if settings.auth_reload_seconds <= 0:
        return None
    files = []
    if settings.master_key_file and use_master_keys is not None:
        files.append(
            WatchedFile(settings.master_key_file, "master-key file", lambda: _master_keys(settings), use_master_keys)
        )
    if authenticator is None:
        return SecurityReloader(files, interval=settings.auth_reload_seconds) if files else None
    files.append(
        WatchedFile(settings.policy_file, "policy file", lambda: _policy(settings, registry), authorizer.use_policy)
    )
    if settings.api_keys_file:
        files.append(
            WatchedFile(settings.api_keys_file, "API-key file", lambda: _api_keys(settings), authenticator.use_api_keys)
        )
    if settings.jwt_key_file:
        files.append(
            WatchedFile(
                settings.jwt_key_file, "JWT key", lambda: _jwt_verifier(settings), authenticator.use_jwt_verifier
            )
        )
    return SecurityReloader(files, interval=settings.auth_reload_seconds)


def _master_keys(settings: Settings) -> MasterKeys:
    _check_private(settings, settings.master_key_file, "master-key file")
    return MasterKeys.load(settings.master_key_file)


def _check_private(settings: Settings, path: str, what: str) -> None:
    check_private(path, what=what, allow_readable=settings.allow_readable_keys)


def build_master_keys(settings: Settings) -> MasterKeys | None:
    """The master keys that turn on encryption at rest, if any are configured."""
    if settings.master_key_file:
        return _master_keys(settings)
    if settings.master_keys:
        return MasterKeys.parse(settings.master_keys, source="CHRONICLE_MASTER_KEYS")
    return None


@dataclass
class Application:
    settings: Settings
    registry: Registry
    store: Store
    router: Router
    health: Health
    server: grpc.aio.Server
    port: int
    monitor: StoreMonitor
    rewind_watch: LogRewindWatch
    subscriptions: Subscriptions
    groups: SubscriptionGroups
    projections: Projections
    reactions: Reactions
    leases: LeaseKeeper
    ownership: Ownership
    cluster: ClusterService
    commands: CommandService
    watchdog: LoopLagWatchdog | None = None
    console: Console | None = None
    metrics_server: MetricsServer | None = None
    lag_sampler: LagSampler | None = None
    pruner: Pruner | None = None
    features_behind: FeaturesBehind | None = None
    security_reloader: SecurityReloader | None = None
    jwks: RemoteJwks | None = None  # the keys of --jwt-jwks-url
    refused: RefusedCommands | None = None
    gate: RpcGate | None = None
    # Each principal's commands per second (None: --auth is off).
    rate_limits: RateLimits | None = None
    group_sampler: GroupSampler | None = None
    standby: StandbyStore | None = None
    stopped: bool = False

    @property
    def address(self) -> str:
        host = self.settings.listen.rpartition(":")[0]
        return f"{host}:{self.port}"

    async def stop(self, grace: float | None = None, *, drain: float | None = None) -> None:
        if self.stopped:
            return
        self.stopped = True
        grace = self.settings.shutdown_grace if grace is None else grace
        drain = self.settings.shutdown_drain if drain is None else drain
        await self.monitor.stop()
        await self.rewind_watch.stop()
        # Counted before they are ended below: the summary's.
        streams = self.subscriptions.active + self.groups.active
        if self.security_reloader is not None:
            await self.security_reloader.stop()
        if self.jwks is not None:
            await self.jwks.stop()
        if self.lag_sampler is not None:
            await self.lag_sampler.stop()
        if self.group_sampler is not None:
            await self.group_sampler.stop()
        await self.health.set(False)
        # Partitions first: routing clients move to the replicas that take
        # them over while this one drains.
        await self.leases.leave(self.ownership.group.name)
        self.subscriptions.close()  # streams end with UNAVAILABLE: clients resume elsewhere
        self.groups.close()  # consumers too: they connect again, to any replica
        self.cluster.close()  # topology watchers too: they watch another member
        if self.console is not None:
            await self.console.stop()  # its live tails ended with the subscriptions
        # gRPC's stop refuses new calls at once. A load balancer that polls
        # health would never see NOT_SERVING, only a server that is gone, and
        # health watchers might hear of it after their calls were refused;
        # so keep serving a moment while health says we are leaving.
        await asyncio.sleep(drain)
        # Health watchers have heard NOT_SERVING: their streams end now, or
        # gRPC's stop would wait the whole grace for them to hang up.
        self.health.close()
        # Command streams take no more commands, answer those they started
        # (within the grace) and end SHUTTING_DOWN: their clients send the
        # rest elsewhere now, not when the grace runs out.
        self.commands.close()
        # One grace for the calls and the commands they wait for: the router's
        # share is what the server's stop left (a stop bounded by drain +
        # grace, as an orchestrator's termination period assumes).
        loop = asyncio.get_running_loop()
        graced_until = loop.time() + grace
        await self.server.stop(grace)
        await self.health.ended()
        await self.reactions.stop()  # before the router: a reaction's command in flight is sent again later
        await self.router.close(grace=max(0.0, graced_until - loop.time()))
        await self.projections.stop()  # an uncommitted batch is simply applied again later
        if self.pruner is not None:
            await self.pruner.stop()  # a batch is one transaction: done or not
        if self.features_behind is not None:
            await self.features_behind.stop()
        if self.refused is not None:
            await self.refused.close()  # the refusals counted in the last second
        await self.leases.stop(leave=True)
        await self.store.lifecycle.close()
        if self.standby is not None:
            await self.standby.close()
        if self.watchdog is not None:
            await self.watchdog.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        log.info(
            "Chronicle %s stopped: %d commands taken since it started; %d subscription and group consumer streams"
            " open at shutdown were ended (their clients resume on another replica)",
            described_version(),
            self.router.commands_taken,
            streams,
        )


async def start(
    settings: Settings,
    *,
    store: StoreAdapter | None = None,
    registry: Registry | None = None,
    tracer_provider: object | None = None,
) -> Application:
    """Open the store, bind the port and start serving.

    A store that cannot be reached yet does not stop the start: the server
    listens, reports NOT_SERVING, and serves once the store answers.
    ``tracer_provider``: the OpenTelemetry provider for spans (default: the
    one set for the process, if any: without one nothing is traced), when
    the OpenTelemetry packages are installed.
    """
    # Reachable from the network if any address it binds is (a process of
    # several also listens on a port of its own, --process-listen).
    addresses = [address for address in (settings.listen, settings.process_listen) if address]
    for warning in check_exposure(
        listen=next((address for address in addresses if not is_loopback(address)), settings.listen),
        auth=settings.auth,
        tls=bool(settings.tls_cert_file),
        insecure=settings.insecure,
        anonymous_admin=settings.anonymous_admin,
    ):
        log.warning("%s", warning)
    if settings.metrics_listen:
        for warning in check_metrics_exposure(settings.metrics_listen):
            log.warning("%s", warning)
    if settings.console_listen:
        for warning in check_console_exposure(
            listen=settings.console_listen,
            auth=settings.auth,
            tls=bool(settings.tls_cert_file),
            path_prefix=settings.console_path_prefix,
            public_origin=settings.console_public_origin,
        ):
            log.warning("%s", warning)
    for warning in settings.without_effect():
        log.warning("%s", warning)
    before, limit = raise_open_files_limit()
    if limit != before:
        log.info("raised the limit on open files (RLIMIT_NOFILE) from %d to %d, the hard limit", before, limit)
    for warning in open_files_warnings(limit, settings.max_connections):
        log.warning("%s", warning)
    registry = registry if registry is not None else build_registry(settings)
    for warning in registry.warnings:  # what `chronicle plugins` prints as warning: lines
        log.warning("plugins: %s", warning)
    if (too_many := check_cache_memory(settings.max_workers)) is not None:
        log.warning("%s", too_many)
    master_keys = build_master_keys(settings)
    adapter = (
        store
        if store is not None
        else open_store(
            settings.database_url,
            pool_size=settings.db_pool_size,
            keep_snapshots=settings.keep_snapshots,
            json_of=payload_json(registry) if settings.postgres_json_events else None,
            refuse_sealed=master_keys is None,
            use=SchemaUse.AS_IS if settings.migrate == "never" else SchemaUse.MIGRATE,
            force_migration=settings.migrate == "force",
        )
    )
    if settings.reuse_port:  # each of --processes N's processes has it too
        check_shared_by_processes(adapter, settings.database_url)
    roles = Store.of(adapter)
    jwks = await build_remote_jwks(settings)
    authenticator, authorizer = build_authentication(settings, registry, jwks)
    keyring: Keyring | None = None

    async def use_master_keys(keys: MasterKeys) -> None:  # the master-key file read again
        nonlocal master_keys
        if keyring is not None:
            await keyring.use_master_keys(keys)  # raises if they do not open the store: kept as they were
        master_keys = keys  # imports check the data keys they bring against these

    # Now: a file that changes from here on is read again once it starts.
    security_reloader = build_security_reloader(settings, authenticator, authorizer, use_master_keys, registry=registry)
    if settings.tls_key_file:
        _check_private(settings, settings.tls_key_file, "TLS key")
    credentials = (
        server_credentials(
            cert_file=settings.tls_cert_file,
            key_file=settings.tls_key_file,
            client_ca_file=settings.tls_client_ca_file,
        )
        if settings.tls_cert_file
        else None
    )
    # The console's load page draws the same metrics: they are kept for it too.
    metrics = Metrics(tenants=settings.metrics_tenants) if settings.metrics_listen or settings.console_listen else None
    if metrics is not None:
        batch_counts = getattr(adapter, "batch_counts", None)
        if batch_counts is not None:
            metrics.watch_batches(batch_counts)
        roles = timed(roles, metrics.store_duration, metrics.conflicts)
    # Their documents are sealed under a key per tenant (docs/security.md, "Per-tenant keys"),
    # once no replica of an older version is live (service/store/features.py).
    tenant_keyed = frozenset(p.name for p in registry.projections if p.tenant_keyed)
    features = adapter if isinstance(adapter, ClusterFeatures) else None
    if master_keys is not None:
        keyring = Keyring(roles.keys, master_keys)
        roles = encrypted(roles, keyring, tenant_keyed=tenant_keyed, features=features)
    await roles.lifecycle.open()
    if master_keys is None:
        await _refuse_sealed_store(roles)
    elif keyring is not None:
        await _check_master_keys(roles, keyring)
    await _check_claim_scopes(roles, registry)
    # Reads (ReadAggregate, GetAggregate, Subscribe) from a hot standby,
    # wrapped like the primary's roles; commands, claims and projections
    # stay on the primary.
    read_roles, standby = roles, None
    if settings.read_database_url:
        standby = _standby(settings, adapter)
        read_roles = Store.of(adapter).replacing(events=standby, log=standby, snapshots=standby)
        if metrics is not None:
            read_roles = timed(read_roles, metrics.store_duration, metrics.conflicts)
        if keyring is not None:
            read_roles = encrypted(read_roles, keyring, tenant_keyed=tenant_keyed, features=features)
        try:
            await standby.open()  # refuses a read database that is not the primary's (READ_DATABASE_MISMATCH)
        except ConfigurationError:
            await standby.close()
            await roles.lifecycle.close()
            raise
    executor = CommandExecutor(
        roles,
        registry,
        max_attempts=settings.conflict_retries,
        snapshots=SnapshotPolicy(settings.snapshot_every or None),
        slow_handler_seconds=settings.slow_handler_seconds,
        max_event_bytes=settings.max_event_bytes,
        # A Submit's or SubmitBatch's answer carries every event: half the
        # message limit leaves room for the envelopes' encoding.
        max_result_bytes=settings.max_message_bytes // 2,
    )
    router = Router(
        executor,
        queue_depth=settings.queue_depth,
        idle_timeout=settings.idle_timeout,
        max_workers=settings.max_workers,
    )
    audit = AuditLog(roles.audit)
    # One sampler for every refusal of a caller that was not authenticated,
    # before the pipeline or in it: one rate per reason.
    sampled_refusals = SampledRefusals(audit, on_sampled=metrics.audit_sampled if metrics is not None else None)
    refused_commands = RefusedCommands(audit, sampled=sampled_refusals)
    tracing = tracing_wanted(tracer_provider)
    # Outermost first: logging, tracing, metrics and audit see every outcome,
    # authorization's refusals included; plugin middleware sees only
    # authorized commands.
    middleware: list[Middleware] = [LoggingMiddleware()]
    if tracing:
        middleware.append(TracingMiddleware(tracer_provider))

    def code_name(error: ChronicleError) -> str:
        return str(status_code(error).name).lower()

    if metrics is not None:
        middleware.append(MetricsMiddleware(metrics, code_name=code_name))
    audited = AuditMiddleware(audit, sampled=sampled_refusals)
    middleware.append(audited)
    # Whatever the policy says (and with authentication off): a command a
    # plugin lets only reactions send is refused from anyone else.
    middleware.append(ReactionOnlyCommands(registry))
    if authorizer.enforcing:
        middleware.append(AuthorizationMiddleware(authorizer))
    middleware.extend(registry.middleware)
    pipeline = Pipeline(
        router.submit,
        middleware,
        submit_batch=router.submit_batch,
        start=router.start,
        tenant_of=authorizer.tenant_of,
    )
    # Reactions send their commands through the same pipeline but for
    # authorization: a plugin's reaction is part of the server, and its
    # commands act on behalf of the event's user, which no policy names.
    # Its refusals are the server's own, each audited (not sampled).
    reaction_pipeline = Pipeline(
        router.submit,
        [
            AuditMiddleware(audit) if m is audited else m
            for m in middleware
            if not isinstance(m, AuthorizationMiddleware)
        ],
    )
    on_refused = refused_rpc_hooks(refused_commands, metrics.rpc_refused if metrics is not None else None)
    gate = RpcGate(
        max_rpcs=settings.max_concurrent_rpcs,
        max_subscriptions=settings.max_subscriptions,
        max_rpcs_per_principal=settings.max_rpcs_per_principal,
        max_subscriptions_per_principal=settings.max_subscriptions_per_principal,
        max_rpcs_per_tenant=settings.max_concurrent_rpcs_per_tenant,
        max_subscriptions_per_tenant=settings.max_subscriptions_per_tenant,
        tenant_of=authorizer.tenant_of,
        authenticator=authenticator,
        on_refused=on_refused,
        on_denied=refused_commands.denied,
        grant_of=authorizer.access,
    )
    if security_reloader is not None and gate.streams is not None:
        security_reloader.on_change.append(gate.streams.recheck)
    if jwks is not None and authenticator is not None:
        jwks.on_change.append(authenticator.forget_verified)  # a key withdrawn admits no token it signed
        if gate.streams is not None:
            jwks.on_change.append(gate.streams.recheck)
    interceptors: list[grpc.aio.ServerInterceptor] = [TracingInterceptor(tracer_provider)] if tracing else []
    health = Health(max_watches=settings.max_health_watches)
    tracker = SubscriptionTracker()
    # A page of events ends with the one that brings it to a quarter of the
    # message limit; events being at most a quarter too, a page is at most
    # half of it. And at most 1 MiB before its last event, whatever the
    # limit: a client receives 4 MiB by default, and a server allowed larger
    # messages must not make every page larger than its clients take.
    page_bytes = min(settings.max_message_bytes // 4, MAX_PAGE_BYTES)
    # What subscriptions and group consumers hold of the log: one room to
    # read ahead in, one sweep of stalled streams, one gauge.
    held = HeldEvents(
        read_ahead_bytes=settings.subscription_read_ahead_bytes, stall_seconds=settings.subscription_stall_seconds
    )
    subscriptions = Subscriptions(
        read_roles.log,
        executor.loader.reader,
        page_size=settings.read_page_events,
        page_bytes=page_bytes,
        checkpoint_interval=settings.checkpoint_seconds,
        poll_interval=settings.poll_seconds,
        primary=roles.log,
        held=held,
        # A page a client asked for goes in messages of at most this much (a
        # store read may be 1 MiB): what a stopped client leaves in gRPC's
        # hands, the one message being sent, stays small.
        message_bytes=min(page_bytes, MAX_SUBSCRIPTION_MESSAGE_BYTES),
    )
    # Leases: the partitions this replica owns, and the projections it runs
    # (one replica runs each). The address is known once the port is bound.
    # (reactions too: their names share the projections' namespace and group).
    projection_group = LeaseGroup(
        PROJECTIONS_GROUP,
        (*(p.name for p in registry.projections), *(r.name for r in registry.reactions)),
        adopts=True,
        logged=True,
        # Sealed under tenants' keys once tenant_document_keys is on, which
        # a replica of an older version reads as absent: never handed to one
        # (service/cluster/leases.py, "Guarding"). Without encryption at rest
        # they are stored as any read model's.
        guarded=tenant_keyed if master_keys is not None else frozenset(),
    )
    leases = LeaseKeeper(
        roles.leases,
        member=LeaseMember(str(uuid.uuid4()), "", version=described_version()),
        groups=[partition_group(settings.partitions), *([projection_group] if projection_group.keys else [])],
        ttl=settings.lease_seconds,
        guard_below_schema=(
            adapter.feature_schemas()[TENANT_DOCUMENT_KEYS] if isinstance(adapter, FeatureReader) else None
        ),
    )
    # A document is sent back alone in a message at most (GetDocument, a
    # ListDocuments page of one): half the limit leaves room for its key,
    # its type and the rest of the answer.
    max_document_bytes = settings.max_message_bytes // 2
    projections = Projections(
        [
            ProjectionRunner(
                projection,
                log=roles.log,
                documents=roles.projections,
                reader=executor.loader.reader,
                poll_interval=settings.poll_seconds,
                lease=KeeperLease(leases, PROJECTIONS_GROUP, projection.name),
                page_bytes=page_bytes,
                slow_handler_seconds=settings.slow_handler_seconds,
                max_document_bytes=max_document_bytes,
            )
            for projection in registry.projections
        ]
    )
    reactions = Reactions(
        [
            ReactionRunner(
                reaction,
                registry=registry,
                # As the reaction: the audit, and middleware, see who sent it.
                submit=partial(reaction_pipeline.submit, principal=reaction_principal(reaction.name)),
                log=roles.log,
                documents=roles.projections,
                reader=executor.loader.reader,
                poll_interval=settings.poll_seconds,
                lease=KeeperLease(leases, PROJECTIONS_GROUP, reaction.name),
                page_bytes=page_bytes,
                outcomes=metrics.reaction_outcome if metrics is not None else None,
                slow_handler_seconds=settings.slow_handler_seconds,
                fix_start=partial(fix_start_of, roles.projections, roles.log, registry.reactions, reaction.name),
            )
            for reaction in registry.reactions
        ]
    )
    ownership = Ownership(leases, settings.partitions)
    # Members of an older version that joined once a feature is on (a
    # rollback): an ERROR line, GetTopology's mark and a metric.
    features_behind = FeaturesBehind(adapter, ownership) if isinstance(adapter, FeatureReader) else None
    cluster = ClusterService(ownership, behind=features_behind.behind if features_behind is not None else None)
    events = EventService(
        read_roles.events,
        executor.loader if standby is None else AggregateLoader(read_roles, registry),
        authorizer,
        subscriptions,
        registry,
        tracker,
        page_bytes=page_bytes,
        log=read_roles.log,
        primary_log=roles.log,
        read_wait=settings.read_wait_seconds,
        max_message_bytes=settings.max_message_bytes,
    )
    projection_service = ProjectionService(
        documents=roles.projections,
        log=roles.log,
        registry=registry,
        projections=projections,
        authorizer=authorizer,
        audit=audit,
        read_wait=settings.read_wait_seconds,
        page_bytes=page_bytes,
        keys=roles.keys,
        max_document_bytes=max_document_bytes,
    )
    # The highest end of the primary's log this server saw: one going back
    # under it (a failover, a restore under a running server) is a WARNING
    # and a count (processing/log_rewinds.py). Not the standby's: one behind
    # is lagging, not rewound.
    rewind_watch = LogRewindWatch(
        roles.log,
        interval=settings.health_interval,
        on_rewind=metrics.log_rewinds.inc if metrics is not None else None,
    )
    # Subscription groups read the primary's log: their checkpoints are
    # written there, and must never run ahead of what a consumer was sent.
    groups = SubscriptionGroups(
        roles.groups,
        roles.log,
        executor.loader.reader,
        lease_seconds=settings.lease_seconds,
        poll_interval=settings.poll_seconds,
        page_size=settings.read_page_events,
        page_bytes=page_bytes,
        held=held,
        replica=lambda: leases.member,  # its address is set once the server listens
        max_message_bytes=settings.max_message_bytes,
        watch=rewind_watch,
    )
    group_service = SubscriptionGroupService(
        groups=groups, log=roles.log, registry=registry, authorizer=authorizer, audit=audit
    )
    # Only with --auth, as the per-principal quotas: with it off every caller is the same anonymous one.
    rate_limits = (
        RateLimits(
            authorizer,
            Rate(
                settings.max_commands_per_second_per_principal,
                settings.commands_burst_per_principal or max(1, settings.max_commands_per_second_per_principal),
            ),
            per_tenant=Rate(settings.max_commands_per_second_per_tenant, settings.max_commands_per_second_per_tenant),
            on_limited=metrics.principal_rate_limited if metrics is not None else None,
        )
        if authorizer.enforcing
        else None
    )
    if rate_limits is not None and security_reloader is not None:
        security_reloader.on_change.append(rate_limits.policy_changed)
    commands = CommandService(
        registry,
        pipeline,
        refused_commands,
        Disclosure(authorizer, registry),
        DryRunAudit(audit),
        ownership=ownership,
        page_bytes=page_bytes,
        room_for=router.room_for,
        counted=DecodingRefusals(
            metrics, code_name=code_name, registered=lambda name: registry.command(name) is not None
        )
        if metrics is not None
        else None,
        authorizer=authorizer,
        replayer=executor.replayer,
        rate_limits=rate_limits,
    )
    reaction_service = ReactionService(
        documents=roles.projections,
        log=roles.log,
        registry=registry,
        reactions=reactions,
        authorizer=authorizer,
        audit=audit,
        page_bytes=page_bytes,
        keys=roles.keys,
        state_keys_hidden=keyring is not None,
        command_retention=settings.command_retention,
    )
    admin_service = AdminService(
        audit,
        authorizer,
        keyring,
        # Exports and imports move what is stored: the adapter's own roles.
        transfers=Transfers(
            Store.of(adapter),
            store_kind(adapter),
            evict=router.evict,
            registry=registry,
            sealing=lambda: import_sealing(keyring, lambda: master_keys),
            keyring=keyring,
            # Imported aggregates' claims are derived from their state as commands see it (decrypted).
            load_state=executor.loader.state_of,
            max_event_bytes=settings.max_event_bytes,
            max_message_bytes=settings.max_message_bytes,
        ),
        stored=Store.of(adapter),
    )
    server = build_server(
        commands=commands,
        events=events,
        admin=admin_service,
        projections=projection_service,
        reactions=reaction_service,
        cluster=cluster,
        groups=group_service,
        health=health,
        max_message_bytes=settings.max_message_bytes,
        gate=gate,
        interceptors=interceptors,
        reuse_port=settings.reuse_port,
        keepalive_seconds=settings.keepalive_seconds,
        keepalive_timeout_seconds=settings.keepalive_timeout_seconds,
        min_client_ping_seconds=settings.min_client_ping_seconds,
        max_connection_age_seconds=settings.max_connection_age_seconds,
        max_connection_age_grace_seconds=settings.max_connection_age_grace_seconds,
        max_connection_idle_seconds=settings.max_connection_idle_seconds,
        handshake_timeout_seconds=settings.handshake_timeout_seconds,
        max_connections=settings.max_connections,
    )
    metrics_server = None
    console = None
    binding = settings.listen  # the gRPC address being bound, named if it fails
    try:
        if metrics is not None:
            metrics.watch(
                queued=lambda: router.queued,
                live_workers=lambda: router.live_workers,
                rpcs_in_flight=lambda: gate.in_flight,
                subscriptions=lambda: tracker.count,
                subscription_held_bytes=lambda: subscriptions.held.bytes,
            )
            metrics.group_consumers.set_function(lambda: groups.active)
            if jwks is not None:
                metrics.watch_jwks(jwks.stats)
            if settings.metrics_listen:
                metrics_server = MetricsServer(metrics, settings.metrics_listen)
        port = _bind(server, settings.listen, credentials)
        # One of several processes (--processes) also listens on a port of
        # its own, which it advertises: routing clients reach it directly,
        # while plain clients keep the shared port.
        binding = settings.process_listen
        own_port = _bind(server, settings.process_listen, credentials) if settings.process_listen else None
        if settings.console_listen:
            # The console reads through the servicers above, as the caller
            # it logged in: the RPCs' authorization, not a copy of it.
            console = Console(
                Parts(
                    registry=registry,
                    authorizer=authorizer,
                    events=events,
                    projections=projection_service,
                    reactions=reaction_service,
                    cluster=cluster,
                    groups=group_service,
                    admin=admin_service,
                    aggregates=read_roles.events,
                    log=read_roles.log,
                    runners=projections,
                    ownership=ownership,
                    leases=leases,
                    load=LoadSampler(metrics.registry, interval=settings.console_sample_seconds)
                    if metrics is not None
                    else None,
                    projections_group=PROJECTIONS_GROUP,
                ),
                authenticator=authenticator,
                on_refused=_console_refusals(refused_commands, metrics),
                on_action_refused=metrics.console_refused if metrics is not None else None,
                path_prefix=settings.console_path_prefix,
                public_origin=settings.console_public_origin,
            )
            await console.start(settings.console_listen, tls=_console_tls(settings))
    except (RuntimeError, ConfigurationError) as error:
        if metrics_server is not None:
            metrics_server.stop()
        await roles.lifecycle.close()
        if isinstance(error, ConfigurationError):
            raise
        raise bind_failed(binding, error) from error
    # Leases: this replica's share of the partitions (and of the projections)
    # is known before it serves, when the store answers at once.
    if own_port is not None:
        advertise = with_port(settings.advertise_address, own_port) if settings.advertise_address else ""
        address = advertised_address(listen=settings.process_listen, port=own_port, advertise=advertise)
    else:
        address = advertised_address(listen=settings.listen, port=port, advertise=settings.advertise_address)
    # With its console's URL, for the other replicas' consoles to link to.
    leases.member = LeaseMember(
        leases.member_id, address, console.url(address) if console is not None else "", version=described_version()
    )
    # Before the first command: a reaction new to the store starts where its
    # start_from says, not after commands this server accepted meanwhile.
    await fix_starts_safely(roles.projections, roles.log, reactions.runners.values())
    await leases.beat_safely()
    leases.start()
    await server.start()
    monitor = StoreMonitor(roles.lifecycle, health, interval=settings.health_interval)
    await monitor.check()
    monitor.start()
    rewind_watch.start()
    projections.start()
    pruner = Pruner(
        roles.retention,
        command_retention=settings.command_retention,
        refusal_retention=settings.refusal_retention,
        interval=settings.retention_interval,
        horizon=ReactionHorizon(
            [reaction.name for reaction in registry.reactions],
            documents=roles.projections,
            log=roles.log,
            events=roles.events,
        ),
    )
    pruner.start()
    reactions.start()
    if features_behind is not None:
        features_behind.start()
    if security_reloader is not None:
        security_reloader.start()
    if jwks is not None:
        jwks.start()
    watchdog = LoopLagWatchdog(threshold=settings.loop_lag_seconds) if settings.loop_lag_seconds else None
    if watchdog is not None:
        watchdog.start()
    lag_sampler = group_sampler = None
    if metrics is not None:
        lag_sampler = LagSampler(roles.log, tracker, metrics.subscription_lag)
        lag_sampler.start()
        # The projections' and reactions' gauges, at the head the groups' round reads.
        runner_watches = (
            RunnerWatch(projections.runners, metrics.projections, roles.projections.count_parked_events),
            RunnerWatch(reactions.runners, metrics.reactions, roles.projections.count_parked_commands),
        )
        group_sampler = GroupSampler(
            roles.groups,
            roles.log,
            lag=metrics.group_lag,
            parked=metrics.group_parked,
            skipped=metrics.group_skipped,
            dismissed=metrics.group_dismissed,
            also=[watch.sample for watch in runner_watches],
        )
        group_sampler.start()
        projection_names = {projection.name for projection in registry.projections}
        reaction_names = {reaction.name for reaction in registry.reactions}

        def runs_here(names: set[str]) -> int:
            # On the metrics thread: a heartbeat may change the leases held
            # under it (a dict being iterated), then it looks again.
            for _ in range(3):
                with contextlib.suppress(RuntimeError):
                    return sum(1 for name in leases.held(PROJECTIONS_GROUP) if name in names)
            return 0

        metrics.watch_state(
            store_up=lambda: monitor.store_up,
            serving=lambda: health.serving,
            schema_version=lambda: getattr(adapter, "schema_version", None),
            schema_compatible=lambda: monitor.schema_compatible,
            owned_partitions=lambda: len(ownership.owned()),
            held_projections=lambda: runs_here(projection_names),
            held_reactions=lambda: runs_here(reaction_names),
            cluster_members=lambda: leases.members(ownership.group.name),
            members_behind_features=features_behind.count if features_behind is not None else lambda: 0,
            partitions_taken_over=lambda: leases.taken_over.get(ownership.group.name, 0),
        )
    # From now on a projection's or reaction's lease taken or given up is an
    # INFO line; what this replica runs at start is in describe's lines.
    leases.logging_changes = True
    return Application(
        settings=settings,
        registry=registry,
        store=roles,
        router=router,
        health=health,
        server=server,
        port=port,
        monitor=monitor,
        rewind_watch=rewind_watch,
        subscriptions=subscriptions,
        groups=groups,
        projections=projections,
        reactions=reactions,
        leases=leases,
        ownership=ownership,
        cluster=cluster,
        commands=commands,
        watchdog=watchdog,
        console=console,
        metrics_server=metrics_server,
        lag_sampler=lag_sampler,
        pruner=pruner,
        features_behind=features_behind,
        refused=refused_commands,
        gate=gate,
        rate_limits=rate_limits,
        group_sampler=group_sampler,
        standby=standby,
        security_reloader=security_reloader,
        jwks=jwks,
    )


async def _refuse_sealed_store(roles: Store) -> None:
    """Without master keys, do not start over a store written with them: it
    could read none of what they sealed, and would write new payloads and
    claims in the clear (a value claimed under encryption, kept as a keyed
    hash, could be claimed again). A store that does not answer yet is
    checked when it first does, where it can be (PostgreSQL: open_store's
    ``refuse_sealed``)."""
    try:
        await refuse_if_sealed(roles.keys, roles.projections, roles.transfer)
    except StoreUnavailable:
        return
    except ConfigurationError:
        await roles.lifecycle.close()
        raise


async def _check_master_keys(roles: Store, keyring: Keyring) -> None:
    """With master keys, do not start if they do not open the store's data
    keys (a wrong key under the right id, the wrong file): every read of a
    sealed payload would fail, and a wrong active key would wrap new data
    keys that nothing opens (``check_master_keys``: a sample, cheap). A store
    that does not answer yet is checked at the keyring's first use."""
    try:
        await keyring.check()
    except StoreUnavailable:
        return
    except ConfigurationError:
        await roles.lifecycle.close()
        raise


async def _check_claim_scopes(roles: Store, registry: Registry) -> None:
    """Do not start with a claims scope declared per tenant that holds
    claims taken while it was global, or one declared global that holds its
    tenants' claims (CLAIM_SCOPE_SWITCHED): they would be checked no more.
    A store that does not answer yet is not checked (the declaration is new
    in a deploy that starts against a live store). A scope of tenants'
    claims that no plugin declares any more is checked per tenant still,
    and warned of (``undeclared_tenant_scopes`` says why)."""
    declared = registry.per_tenant_claim_scopes | registry.global_claim_scopes
    try:
        await refuse_scopes_switched(roles.transfer, registry.per_tenant_claim_scopes, registry.global_claim_scopes)
        undeclared = await undeclared_tenant_scopes(roles.transfer, declared)
    except StoreUnavailable:
        if declared:
            log.warning(
                "the claims scopes declared were not checked for claims stored the other way (global, per tenant):"
                " the store is unavailable"
            )
        return
    except ConfigurationError:
        await roles.lifecycle.close()
        raise
    registry.keep_per_tenant(undeclared)
    for scope in undeclared:
        log.warning(
            "claims scope %r holds claims stored per tenant, but no plugin declares it any more: it is checked per"
            " tenant still, as its claims are stored (a scope nobody declares is otherwise global). If a plugin"
            " claims in it, declare it again to say so: plugin.claims_scope(%r, per_tenant=True); declaring it"
            " global is refused (CLAIM_SCOPE_SWITCHED) until its tenants' claims are moved. A retired domain's"
            " claims stay until their aggregates are deleted",
            scope,
            scope,
        )


def _standby(settings: Settings, adapter: StoreAdapter) -> StandbyStore:
    from service.store.postgres import PostgresStore
    from service.store.postgres.standby import StandbyStore

    if not isinstance(adapter, PostgresStore):
        raise bad_setting(
            "read_database_url",
            "a standby needs a PostgreSQL --database-url",
            "the postgresql:// URL of a hot standby of a PostgreSQL --database-url",
        )
    return StandbyStore(
        settings.read_database_url,
        primary=adapter,
        pool_size=settings.db_pool_size,
        watch_interval=settings.health_interval,  # its losses and returns are logged, health is the primary's
    )


def _console_tls(settings: Settings) -> ssl.SSLContext | None:
    """The console serves TLS with the API's certificate when the API does."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
    return context


def _console_refusals(refused: RefusedCommands, metrics: Metrics | None) -> ConsoleRefused:
    """What the console refused: audited, and counted when there are metrics
    (``chronicle_console_refusals_total``), as the API's refusals are both."""
    if metrics is None:
        return refused.console

    async def refused_and_counted(
        path: str, error: ChronicleError, principal: Principal | None, peer: str, aggregate_id: str
    ) -> None:
        metrics.console_refused(error)
        await refused.console(path, error, principal, peer, aggregate_id)

    return refused_and_counted


def bind_failed(listen: str, cause: object) -> ConfigurationError:
    """BIND_FAILED: the server cannot have its gRPC address ``listen``, for
    ``cause`` (gRPC's error, or the system's: ``chronicle serve`` finds an
    address in use before gRPC tries it). Most often another server holds the
    port: one started before, a ``make run`` in another terminal."""
    return ConfigurationError(
        f"cannot listen on {listen}: {str(cause).rstrip('.')}. Another server may hold the port (a `make run`"
        " still running, say): stop it, or serve elsewhere with --listen HOST:PORT (env CHRONICLE_LISTEN)",
        reason="BIND_FAILED",
    )


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    if credentials is not None:
        return int(server.add_secure_port(address, credentials))
    return int(server.add_insecure_port(address))


def _console_line(console: Console, api_address: str) -> str:
    """Where the console is, as an operator can open it: a wildcard bind
    (``0.0.0.0:8081``) is no address a browser opens, so it says so, with
    the URL at the host this replica is advertised at when that is one."""
    host, _, port = console.address.rpartition(":")
    if host not in WILDCARD_HOSTS:
        return f"on {console.url(api_address)}/"
    url = console.url(api_address)
    reachable = url.rpartition(":")[0].partition("://")[2] not in WILDCARD_HOSTS
    return f"on all interfaces, port {port}" + (f": {url}/" if reachable else " (open it at this machine's address)")


def describe(app: Application) -> str:
    lines = [
        f"Chronicle serving gRPC on {app.address} (store: {redacted_url(app.settings.database_url)};"
        f" version {described_version()})"
    ]
    settings = app.settings
    lines.append(
        "  authentication "
        + (
            "on"
            if settings.auth
            else "OFF: anonymous callers may submit, read and subscribe to everything"
            + (" and administer (--anonymous-admin)" if settings.anonymous_admin else " (not administer)")
        )
        + (", TLS" if settings.tls_cert_file else ", plaintext")
        + (", payloads encrypted at rest" if settings.master_key_file or settings.master_keys else "")
    )
    if settings.read_database_url:
        standby = redacted_url(settings.read_database_url)
        lines.append(f"  reads (ReadAggregate, GetAggregate, Subscribe) from the standby {standby}")
    owned = len(app.ownership.owned())
    lines.append(
        f"  advertised to routing clients as {app.leases.member.address};"
        f" owns {owned} of {settings.partitions} partitions now (leases of {settings.lease_seconds:g} s)"
    )
    running = app.leases.held(PROJECTIONS_GROUP)
    if running:  # later changes are INFO lines ("this replica took lease …")
        lines.append(f"  runs here now: {', '.join(running)}")
    if app.metrics_server is not None:
        lines.append(f"  metrics on http://{app.metrics_server.address}/metrics")
    if app.console is not None:
        lines.append(f"  console {_console_line(app.console, app.leases.member.address)}")
    for plugin in app.registry.plugins:
        lines.append(f"  plugin {plugin.name}")
        for aggregate in plugin.aggregates:
            specs = aggregate.commands.values()
            commands = ", ".join(sorted(spec.name for spec in specs if not spec.internal))
            internal = ", ".join(sorted(spec.name for spec in specs if spec.internal))
            # Reactions' own commands apart: no client may send them (ListTypes lists them apart too).
            lines.append(f"    {aggregate.name}: {commands}" + (f" (reactions only: {internal})" if internal else ""))
    if not app.registry.plugins:
        lines.append("  no plugins loaded: every command will be refused as UNKNOWN_COMMAND_TYPE")
    return "\n".join(lines)


# The collector's first generation runs after this many new objects. Python's
# default (700) is met every few commands: each command makes a few hundred
# short-lived objects, almost none in reference cycles, and every collection
# walks the young ones. Memory stays bounded by the same collections, run less
# often.
GC_YOUNG_THRESHOLD = 50_000


def tune_garbage_collection() -> None:
    """After start-up: the objects made so far (modules, plugins, the server)
    live as long as the process, so they leave the collector's view
    (``gc.freeze``), and young collections run less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def serve(settings: Settings) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully."""
    app = await start(settings)
    tune_garbage_collection()
    if settings.log_format == "json":
        log.info("%s", describe(app))  # one JSON record, as every other line of the log
    else:
        print(describe(app), flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("shutting down (grace %gs)", settings.shutdown_grace)
    await app.stop()
