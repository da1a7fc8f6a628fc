"""Server settings. Every setting is a command-line flag and an environment
variable (``CHRONICLE_*``); a flag wins over the variable, which wins over the
default. Only the composition root reads the environment."""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields

from service.cluster.addresses import WILDCARD_HOSTS
from service.cluster.hashing import MAX_PARTITIONS, check_partition_count
from service.errors import ConfigurationError
from service.security.jwks_url import check_jwks_url
from service.store.base import DEFAULT_KEEP_SNAPSHOTS

# Tenants labelled at most in the per-tenant metrics (--metrics-tenants):
# each is a series per metric Prometheus keeps (observability/tenant_metrics.py).
MAX_METRICS_TENANTS = 1000

MIN_LEASE_SECONDS = 0.5
MAX_PROCESSES = 256

DEFAULT_DATABASE_URL = "sqlite:///data/chronicle.db"


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    listen: str = field(default="127.0.0.1:50051", metadata={"help": "host:port to serve gRPC on"})
    database_url: str = field(
        default=DEFAULT_DATABASE_URL,
        metadata={"help": "sqlite:///relative.db, sqlite:////absolute.db, memory:// or postgresql://…"},
    )
    read_database_url: str = field(
        default="",
        metadata={
            "help": "postgresql://… of a hot standby of --database-url: ReadAggregate, GetAggregate and Subscribe"
            " read from it (empty: from the primary)"
        },
    )
    read_wait_seconds: float = field(
        default=5.0,
        metadata={"help": "how long a read with min_position waits for the reads to reach that position"},
    )
    migrate: str = field(
        default="auto",
        metadata={
            "help": "auto: bring an older schema up to date at start (needs the right to change it); never: refuse"
            " to start on one (SCHEMA_TOO_OLD), run `chronicle migrate` first (docs/deployment.md); force: as auto,"
            " also a migration that raises the compatibility floor while live replicas run below it"
        },
    )
    db_pool_size: int = field(default=10, metadata={"help": "PostgreSQL connections per server process"})
    plugins: tuple[str, ...] = field(
        default=(),
        metadata={"help": "plugin module paths (module or module:attr), in addition to entry points"},
    )
    discover_plugins: bool = field(
        default=True, metadata={"help": "load the plugins of the 'chronicle.plugins' entry-point group"}
    )
    example_plugins: bool = field(
        default=True,
        metadata={
            "help": "with discovery, load Chronicle's own example plugins (bank_account, box, users) too; the"
            " Docker image turns this off (--plugin still loads one by name)"
        },
    )
    max_message_bytes: int = field(default=4 * 1024 * 1024, metadata={"help": "largest gRPC message accepted"})
    max_event_bytes: int = field(
        default=1024 * 1024,
        metadata={
            "help": "largest event a command may produce (payload and metadata; at most a quarter of"
            " --max-message-bytes); a larger one is refused, EVENT_TOO_LARGE"
        },
    )
    read_page_events: int = field(
        default=1000, metadata={"help": "events per message of a paged read or a subscription's catch-up, at most"}
    )
    queue_depth: int = field(default=64, metadata={"help": "commands that may wait per aggregate"})
    idle_timeout: float = field(default=30.0, metadata={"help": "seconds before an idle aggregate worker leaves"})
    max_workers: int = field(default=100_000, metadata={"help": "aggregates that may be live at once"})
    conflict_retries: int = field(default=5, metadata={"help": "attempts at a command under concurrent writers"})
    snapshot_every: int = field(
        default=0, metadata={"help": "default snapshot interval in events for aggregate types that set none (0: off)"}
    )
    postgres_json_events: bool = field(
        default=False,
        metadata={
            "help": "PostgreSQL: also keep each event's payload as JSON (column payload_json) to query in SQL;"
            " not with encryption at rest"
        },
    )
    command_retention: float = field(
        default=0.0,
        metadata={
            "help": "keep command records this long, with a unit (90d, 12h): a retry of a command older than"
            " this runs again; at least 1h unless --allow-short-retention; 0: forever"
        },
    )
    refusal_retention: float = field(
        default=0.0,
        metadata={
            "help": "keep the audit's entries of commands refused before a handler, and of dry runs, this long,"
            " with a unit (90d); 0: forever"
        },
    )
    allow_short_retention: bool = field(
        default=False,
        metadata={
            "help": "take a --command-retention under an hour (tests, demos): a retry of an older command runs again"
        },
    )
    retention_interval: float = field(
        default=60.0, metadata={"help": "seconds between rounds of pruning records past their retention"}
    )
    keep_snapshots: int = field(
        default=DEFAULT_KEEP_SNAPSHOTS,
        metadata={"help": "snapshots kept per aggregate, the newest (older past versions replay from the start)"},
    )
    slow_handler_seconds: float = field(
        default=0.1, metadata={"help": "warn when one handler call blocks the event loop longer than this (0: off)"}
    )
    loop_lag_seconds: float = field(
        default=0.25, metadata={"help": "warn when anything blocks the event loop longer than this (0: off)"}
    )
    health_interval: float = field(
        default=2.0, metadata={"help": "seconds between store health checks (NOT_SERVING while it is down)"}
    )
    checkpoint_seconds: float = field(
        default=1.0, metadata={"help": "at most this often, subscriptions send a checkpoint while the log moves"}
    )
    poll_seconds: float = field(
        default=1.0, metadata={"help": "subscriptions look for new events at least this often (besides notifications)"}
    )
    subscription_read_ahead_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={
            "help": "bytes of events the server's subscriptions and group consumers may hold together (pages"
            " being sent and events unacknowledged included) and still read their next page ahead; past it"
            " each reads when it needs to (0: never ahead)"
        },
    )
    subscription_stall_seconds: float = field(
        default=1.0,
        metadata={
            "help": "a subscription (or group consumer) whose client took no message (nor answered) in two checks"
            " this far apart lets go of the events it read ahead, and reads them again when the client reads"
        },
    )
    processes: int = field(
        default=1, metadata={"help": "server processes sharing the listen port (SO_REUSEPORT), for more cores"}
    )
    reuse_port: bool = field(
        default=False, metadata={"help": "bind with SO_REUSEPORT, so that several servers share one port"}
    )
    partitions: int = field(
        default=64,
        metadata={"help": "partitions of the aggregate hash space that replicas share out (a power of two)"},
    )
    advertise_address: str = field(
        default="",
        metadata={"help": "host:port routing clients should use for this replica (empty: the listen address)"},
    )
    process_listen: str = field(
        default="",
        metadata={
            "help": "host:port this process also serves on and advertises to routing clients"
            " (--processes gives each process one; port 0: any free port)"
        },
    )
    lease_seconds: float = field(
        default=3.0,
        metadata={"help": "seconds after a replica's last heartbeat before others take its partitions and projections"},
    )
    shutdown_drain: float = field(
        default=1.0,
        metadata={"help": "seconds between reporting NOT_SERVING and refusing new calls on shutdown"},
    )
    shutdown_grace: float = field(default=10.0, metadata={"help": "seconds in-flight calls get on shutdown"})
    keepalive_seconds: float = field(
        default=60.0,
        metadata={
            "help": "seconds between the server's pings on each client connection, with calls open or not"
            " (dead peers found)"
        },
    )
    keepalive_timeout_seconds: float = field(
        default=20.0,
        metadata={"help": "seconds a ping waits for its answer before the connection and its calls are dropped"},
    )
    min_client_ping_seconds: float = field(
        default=5.0,
        metadata={
            "help": "shortest interval between a client's keepalive pings that the server accepts, with calls open"
            " or without (more often: GOAWAY too_many_pings, the connection's calls end)"
        },
    )
    max_connection_age_seconds: float = field(
        default=0.0,
        metadata={
            "help": "seconds after which a client's connection is closed (GOAWAY: the client reconnects, behind"
            " a load balancer perhaps to another replica); 0: never"
        },
    )
    max_connection_age_grace_seconds: float = field(
        default=30.0,
        metadata={"help": "seconds the calls on a connection past its age get to finish"},
    )
    handshake_timeout_seconds: float = field(
        default=10.0,
        metadata={
            "help": "seconds a new gRPC connection gets to finish its TLS handshake and send HTTP/2's settings;"
            " then it is closed (gRPC's own default: 120 s)"
        },
    )
    max_connection_idle_seconds: float = field(
        default=300.0,
        metadata={
            "help": "seconds a client connection may go without a call open (a stream open is a call) before it is"
            " closed (GOAWAY: the client reconnects for its next call; gRPC looks once a period, so up to twice"
            " this after the last call ended); 0: never"
        },
    )
    max_connections: int = field(
        default=10_000,
        metadata={
            "help": "client connections the gRPC server holds at once, handshakes under way included; one more"
            " is closed at once (each takes a file descriptor)"
        },
    )
    auth_reload_seconds: float = field(
        default=5.0,
        metadata={
            "help": "seconds between looks at the API-key, JWT-key, policy and master-key files: a changed one is"
            " read again and used for new calls (a broken one is logged and the previous kept); 0: never"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_format: str = field(default="text", metadata={"help": "text, or json: one object per line with command ids"})
    metrics_listen: str = field(
        default="", metadata={"help": "host:port to serve Prometheus metrics on (/metrics); empty: off"}
    )
    metrics_tenants: int = field(
        default=0,
        metadata={
            "help": "count commands and events per tenant for the first N tenants each replica accepts a command"
            ' of (the rest, and refusals of others, as tenant="(other tenants)"), in chronicle_tenant_*_total;'
            " 0: off. Every tenant labelled is a"
            f" Prometheus series per metric: at most {MAX_METRICS_TENANTS}"
        },
    )
    console_listen: str = field(
        default="",
        metadata={
            "help": "host:port to serve the operators' web console on (docs/console.md); empty: off. Beyond"
            " loopback it needs --auth"
        },
    )
    console_sample_seconds: float = field(
        default=5.0, metadata={"help": "seconds between the console's samples of the load (15 minutes are kept)"}
    )
    console_path_prefix: str = field(
        default="",
        metadata={
            "help": "the path the console is served under behind a reverse proxy (/chronicle): every link,"
            " redirect and the session cookie are under it, and requests outside it are 404; empty: the root"
        },
    )
    console_public_origin: str = field(
        default="",
        metadata={
            "help": "the origin browsers reach the console at through a reverse proxy (https://ops.example.com):"
            " its forms are accepted from it, and with https its cookie is Secure, while the proxy speaks"
            " plain HTTP to the console; empty: none"
        },
    )
    max_concurrent_rpcs: int = field(
        default=1000, metadata={"help": "RPCs handled at once; one more is RESOURCE_EXHAUSTED (health checks exempt)"}
    )
    max_subscriptions: int = field(
        default=1000, metadata={"help": "subscriptions open at once; one more is RESOURCE_EXHAUSTED"}
    )
    max_rpcs_per_principal: int = field(
        default=500,
        metadata={"help": "RPCs one authenticated principal may have in flight at once (subscriptions apart)"},
    )
    max_subscriptions_per_principal: int = field(
        default=100, metadata={"help": "subscriptions one authenticated principal may have open at once"}
    )
    max_concurrent_rpcs_per_tenant: int = field(
        default=500,
        metadata={
            "help": "RPCs the authenticated principals of one tenant may have in flight at once, together"
            " (subscriptions apart, streams counted as --max-concurrent-rpcs counts them; principals without a"
            " tenant are not counted); one more is RESOURCE_EXHAUSTED TENANT_TOO_MANY_REQUESTS. 0: no limit"
        },
    )
    max_subscriptions_per_tenant: int = field(
        default=250,
        metadata={
            "help": "subscriptions the authenticated principals of one tenant may have open at once, together"
            " (principals without a tenant are not counted); one more is RESOURCE_EXHAUSTED"
            " TENANT_TOO_MANY_SUBSCRIPTIONS. 0: no limit"
        },
    )
    max_commands_per_second_per_principal: int = field(
        default=0,
        metadata={
            "help": "commands per second one authenticated principal may submit, counted per command (a batch or"
            " page of N is N), unless its policy roles set commands_per_second; over it a Submit or SubmitBatch is"
            " RESOURCE_EXHAUSTED PRINCIPAL_RATE_LIMITED with RetryInfo, a stream waits; administrators exempt."
            " 0: no limit"
        },
    )
    commands_burst_per_principal: int = field(
        default=0,
        metadata={
            "help": "commands a principal may submit at once above --max-commands-per-second-per-principal"
            " (its token bucket's size); 0: one second's worth"
        },
    )
    max_commands_per_second_per_tenant: int = field(
        default=0,
        metadata={
            "help": "commands per second the authenticated principals of one tenant may submit together (one"
            " second's worth at once), beside each principal's own limit; over it a Submit or SubmitBatch is"
            " RESOURCE_EXHAUSTED TENANT_RATE_LIMITED with RetryInfo, a stream waits; administrators and principals"
            " of no tenant not counted. 0: no limit"
        },
    )
    max_health_watches: int = field(
        default=1000, metadata={"help": "health Watch streams open at once (they need no credentials)"}
    )
    # -- security (docs/security.md) -------------------------------------
    auth: bool = field(
        default=False, metadata={"help": "require credentials on every RPC and enforce --policy-file (deny by default)"}
    )
    insecure: bool = field(
        default=False,
        metadata={
            "help": "serve beyond loopback with authentication off (refused without): anyone may submit and read"
        },
    )
    anonymous_admin: bool = field(
        default=False,
        metadata={
            "help": "with authentication off, let anonymous callers administer (forget, audit): on loopback only"
        },
    )
    policy_file: str = field(default="", metadata={"help": "TOML policy: roles, their grants, principals' roles"})
    api_keys_file: str = field(default="", metadata={"help": "TOML file of SHA-256 hashed API keys (bearer tokens)"})
    jwt_key_file: str = field(
        default="",
        metadata={
            "help": 'PEM public key (RS/PS/ES/EdDSA), HMAC secret or JSON Web Key Set ({"keys": [...]}, a kid'
            " each) that signs bearer JWTs; read again when it changes"
        },
    )
    jwt_jwks_url: str = field(
        default="",
        metadata={
            "help": "https:// URL of the identity provider's JSON Web Key Set (its /.well-known/jwks.json): fetched"
            " at start (the server does not start without it), again every --jwt-jwks-refresh-seconds and when a"
            " token names an unknown kid; instead of --jwt-key-file"
        },
    )
    jwt_jwks_ca_file: str = field(
        default="", metadata={"help": "PEM CA certificates --jwt-jwks-url is checked against (empty: the system's)"}
    )
    jwt_jwks_refresh_seconds: float = field(
        default=300.0, metadata={"help": "how often the set at --jwt-jwks-url is fetched again"}
    )
    jwt_jwks_unknown_kid_seconds: float = field(
        default=30.0,
        metadata={
            "help": "the set at --jwt-jwks-url is fetched for a token naming an unknown kid at most once per this"
            " long: a flood of made-up kids costs the provider one request per period"
        },
    )
    jwt_jwks_timeout_seconds: float = field(
        default=10.0,
        metadata={
            "help": "a fetch of --jwt-jwks-url (connecting, and reading the answer to its end) that takes longer"
            " fails; the keys fetched before stay in use"
        },
    )
    jwt_issuer: str = field(default="", metadata={"help": "required 'iss' of bearer JWTs"})
    jwt_audience: str = field(
        default="", metadata={"help": "required 'aud' of bearer JWTs (empty: tokens must have none)"}
    )
    jwt_tenant_claim: str = field(
        default="",
        metadata={
            "help": "the JWT claim naming the principal's tenant, for tenant-scoped roles (empty: tokens name none)"
        },
    )
    jwt_leeway_seconds: float = field(
        default=30.0,
        metadata={
            "help": "clock skew allowed on a JWT's exp: a token is accepted, and a stream opened with it lives,"
            " this long past its exp"
        },
    )
    tls_cert_file: str = field(default="", metadata={"help": "PEM certificate chain: serve TLS (with --tls-key-file)"})
    tls_key_file: str = field(default="", metadata={"help": "PEM private key of --tls-cert-file"})
    master_key_file: str = field(
        default="",
        metadata={
            "help": "file of master keys 'id:base64' (first wraps new keys) and tenants' 'tenant:id:base64':"
            " encrypt payloads at rest"
        },
    )
    master_keys: str = field(
        default="",
        repr=False,  # a secret: never in logs
        metadata={"help": "master keys 'id:base64,…' inline; prefer the environment variable to the flag"},
    )
    tls_client_ca_file: str = field(
        default="", metadata={"help": "PEM CA: require client certificates it signed (mutual TLS); subject = principal"}
    )
    allow_readable_keys: bool = field(
        default=False,
        metadata={"help": "start even when key files are open to group or others (warn instead of refusing)"},
    )

    def __post_init__(self) -> None:
        """Refuse a value that cannot work, naming its flag, what is wrong
        with it and what would be accepted (``BAD_SETTING``): the server
        must not start on it, nor fail later with a traceback."""
        _check_address("listen", self.listen, host_required=True)
        for name in ("process_listen", "metrics_listen", "console_listen"):
            if getattr(self, name):
                _check_address(name, getattr(self, name))
        if self.advertise_address:
            _check_address("advertise_address", self.advertise_address, host_required=True, port_zero=False)
            _check_dialable("advertise_address", self.advertise_address)
        if self.console_path_prefix:
            _check_path_prefix("console_path_prefix", self.console_path_prefix)
        if self.console_public_origin:
            _check_origin("console_public_origin", self.console_public_origin)
        for name in (
            "max_message_bytes",
            "queue_depth",
            "max_workers",
            "conflict_retries",
            "db_pool_size",
            "keep_snapshots",
            "processes",
            "partitions",
            "max_event_bytes",
            "read_page_events",
            "max_concurrent_rpcs",
            "max_subscriptions",
            "max_rpcs_per_principal",
            "max_subscriptions_per_principal",
            "max_health_watches",
            "max_connections",
        ):
            if getattr(self, name) < 1:
                raise bad_setting(name, f"{getattr(self, name)} is too small", _accepted_int(name, at_least=1))
        for name in (
            "max_commands_per_second_per_principal",
            "commands_burst_per_principal",
            "max_concurrent_rpcs_per_tenant",
            "max_subscriptions_per_tenant",
            "max_commands_per_second_per_tenant",
        ):
            if getattr(self, name) < 0:
                raise bad_setting(name, f"{getattr(self, name)} is negative", _accepted_int(name, at_least=0))
        if not 0 <= self.metrics_tenants <= MAX_METRICS_TENANTS:
            raise bad_setting(
                "metrics_tenants",
                f"{self.metrics_tenants} is out of range",
                f"from 0 (off) to {MAX_METRICS_TENANTS}: each tenant labelled is a series Prometheus keeps",
            )
        if self.subscription_read_ahead_bytes < 0:
            raise bad_setting(
                "subscription_read_ahead_bytes",
                f"{self.subscription_read_ahead_bytes} is negative",
                _accepted_int("subscription_read_ahead_bytes", at_least=0),
            )
        if self.snapshot_every < 0:
            raise bad_setting(
                "snapshot_every", f"{self.snapshot_every} is negative", _accepted_int("snapshot_every", at_least=0)
            )
        if self.max_event_bytes * 4 > self.max_message_bytes:
            raise bad_setting(
                "max_event_bytes",
                f"{self.max_event_bytes} is more than a quarter of --max-message-bytes ({self.max_message_bytes})",
                f"at most {self.max_message_bytes // 4}, so that every event and every result can be sent back"
                " (or a larger --max-message-bytes)",
            )
        for item in fields(self):
            if item.type == "float" and not math.isfinite(getattr(self, item.name)):
                raise bad_setting(item.name, f"{getattr(self, item.name)} is not a finite number", DURATION)
        for name in (
            "idle_timeout",
            "health_interval",
            "poll_seconds",
            "subscription_stall_seconds",
            "retention_interval",
            "keepalive_seconds",
            "keepalive_timeout_seconds",
            "lease_seconds",
            "console_sample_seconds",
            "handshake_timeout_seconds",
            "jwt_jwks_refresh_seconds",
            "jwt_jwks_timeout_seconds",
        ):
            if not getattr(self, name) > 0:
                raise bad_setting(name, f"{getattr(self, name):g} is not positive", f"more than 0: {DURATION}")
        for name in (
            "checkpoint_seconds",
            "shutdown_drain",
            "shutdown_grace",
            "slow_handler_seconds",
            "loop_lag_seconds",
            "command_retention",
            "refusal_retention",
            "min_client_ping_seconds",
            "max_connection_age_seconds",
            "max_connection_age_grace_seconds",
            "max_connection_idle_seconds",
            "auth_reload_seconds",
            "jwt_leeway_seconds",
            "jwt_jwks_unknown_kid_seconds",
            "read_wait_seconds",
        ):
            if not getattr(self, name) >= 0:
                raise bad_setting(name, f"{getattr(self, name):g} is negative", f"0 or more: {DURATION}")
        if 0 < self.command_retention < MIN_COMMAND_RETENTION and not self.allow_short_retention:
            # A retry of a command whose record was pruned runs again: a
            # window within clients' retries (a unary call's 30 s, a stored
            # command id sent again after a client restarts) runs commands
            # twice; a bare 90 meant 90 seconds to someone who meant days.
            raise bad_setting(
                "command_retention",
                f"{self.command_retention:g} seconds is shorter than an hour: a client's retry of an older command"
                " would run it again (a deposit twice)",
                "0 (forever) or at least 1h, such as 90d; or --allow-short-retention to mean it",
            )
        if self.lease_seconds < MIN_LEASE_SECONDS:
            # A heartbeat is a third of it, and a round trip to the database.
            raise bad_setting(
                "lease_seconds", f"{self.lease_seconds:g} is too short", f"at least {MIN_LEASE_SECONDS:g} seconds"
            )
        if self.processes > MAX_PROCESSES:
            raise bad_setting("processes", f"{self.processes} is too many", f"from 1 to {MAX_PROCESSES}")
        try:
            check_partition_count(self.partitions)
        except ConfigurationError:
            raise bad_setting(
                "partitions",
                f"{self.partitions} is not a power of two from 1 to {MAX_PARTITIONS}",
                f"1, 2, 4, 8, … up to {MAX_PARTITIONS}",
            ) from None
        if self.read_database_url and not self.database_url.startswith(("postgresql:", "postgres:")):
            raise bad_setting(
                "read_database_url",
                "a standby needs a PostgreSQL --database-url",
                "the postgresql:// URL of a hot standby of a PostgreSQL --database-url",
            )
        if self.read_database_url and not self.read_database_url.startswith(("postgresql:", "postgres:")):
            raise bad_setting(
                "read_database_url", "is not a postgresql:// URL", "the postgresql:// URL of a hot standby"
            )
        if self.log_level.upper() not in logging.getLevelNamesMapping():
            raise bad_setting("log_level", f"{self.log_level!r} is not a level", "DEBUG, INFO, WARNING or ERROR")
        if self.migrate not in MIGRATE_CHOICES:
            raise bad_setting("migrate", f"{self.migrate!r} is not a choice", "auto, never or force")
        if self.log_format not in LOG_FORMATS:
            raise bad_setting("log_format", f"{self.log_format!r} is not a format", "text or json")
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            missing = "tls_key_file" if self.tls_cert_file else "tls_cert_file"
            raise bad_setting(missing, "is missing", "TLS needs both --tls-cert-file and --tls-key-file")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise bad_setting(
                "tls_client_ca_file", "mutual TLS needs TLS", "with --tls-cert-file and --tls-key-file, or none"
            )
        if self.auth and not self.policy_file:
            raise bad_setting("policy_file", "is missing", "--auth needs a --policy-file (deny by default)")
        if self.auth and not (self.api_keys_file or self.jwt_key_file or self.jwt_jwks_url or self.tls_client_ca_file):
            raise bad_setting(
                "auth",
                "has no way to authenticate anyone",
                "--auth needs a credential source: --api-keys-file, --jwt-key-file, --jwt-jwks-url or"
                " --tls-client-ca-file",
            )
        if self.auth and self.anonymous_admin:
            raise bad_setting(
                "anonymous_admin",
                "is not for servers with --auth",
                "with --auth off only: with --auth the policy grants admin",
            )
        if self.postgres_json_events and (self.master_key_file or self.master_keys):
            raise bad_setting(
                "postgres_json_events",
                "would keep payloads in the clear beside their encrypted copies",
                "not with encryption at rest (--master-key-file, --master-keys)",
            )
        if self.master_key_file and self.master_keys:
            raise bad_setting("master_keys", "are given twice", "master keys in a file or inline, not both")
        if self.jwt_key_file and not self.jwt_issuer:
            raise bad_setting("jwt_issuer", "is missing", "--jwt-key-file needs --jwt-issuer")
        self._check_jwks_url()

    def _check_jwks_url(self) -> None:
        if not self.jwt_jwks_url:
            if self.jwt_jwks_ca_file:
                raise bad_setting("jwt_jwks_ca_file", "checks nothing", "with --jwt-jwks-url only")
            return
        if self.jwt_key_file:
            raise bad_setting(
                "jwt_jwks_url", "is given with --jwt-key-file", "one source of JWT keys: the URL or the file"
            )
        if not self.jwt_issuer:
            raise bad_setting("jwt_issuer", "is missing", "--jwt-jwks-url needs --jwt-issuer")
        problem = check_jwks_url(self.jwt_jwks_url)
        if problem:
            raise bad_setting("jwt_jwks_url", problem, "https://idp.example/.well-known/jwks.json")

    def without_effect(self) -> list[str]:
        """Warnings, for the server's start, about settings given that do
        nothing as the others are. Warned, not refused (as a setting that
        needs another to be safe is): nothing is exposed or half-working,
        and the same environment is read by commands that serve nothing."""
        warnings = []
        if self.metrics_tenants and not (self.metrics_listen or self.console_listen):
            warnings.append(
                f"--metrics-tenants {self.metrics_tenants} counts nothing: there are no metrics without"
                " --metrics-listen or --console-listen (give one, or leave --metrics-tenants out)"
            )
        return warnings


# The shortest --command-retention taken without --allow-short-retention.
MIN_COMMAND_RETENTION = 3600.0
# Durations counted in days, given in seconds only by mistake: a bare
# number (other than 0, forever) is refused, the unit is to be written.
UNIT_REQUIRED = ("command_retention", "refusal_retention")

# What a duration setting takes, said when one is refused.
DURATION = "seconds (2.5) or a number and a unit: 250ms, 30s, 15m, 12h, 90d, 2w"
LOG_FORMATS = ("text", "json")
MIGRATE_CHOICES = ("auto", "never", "force")
MAX_PORT = 65535


def flag(name: str) -> str:
    """The command-line flag of setting ``name``."""
    return "--" + name.replace("_", "-")


def bad_setting(name: str, problem: str, accepted: str) -> ConfigurationError:
    """The refusal of setting ``name``: ``--flag: what is wrong; what is
    accepted``, as ``chronicle serve`` prints it after ``error: BAD_SETTING:``."""
    return ConfigurationError(f"{flag(name)}: {problem}; {accepted}", reason="BAD_SETTING")


def _accepted_int(name: str, *, at_least: int) -> str:
    unit = " of bytes" if name.endswith("_bytes") else ""
    return f"a whole number{unit}, at least {at_least}"


# A path prefix: segments of letters, digits and "-", "_", "." and "~" (RFC
# 3986's unreserved characters: nothing a browser encodes, so the prefix is
# compared as it is sent, and nothing that could end the path or an
# attribute: no "?", "#", "%", quotes, spaces or controls).
_PATH_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def _check_path_prefix(name: str, value: str) -> None:
    """``value`` is a path such as ``/chronicle`` or ``/ops/chronicle``: it
    starts with "/", does not end with one, and holds only safe characters
    and no "." or ".." segment (a browser would resolve those away)."""
    accepted = "a path such as /chronicle: '/' then letters, digits, '-', '_', '.' or '~', no trailing '/'"
    if not value.startswith("/"):
        raise bad_setting(name, f"{value!r} does not start with '/'", accepted)
    if value.endswith("/"):
        raise bad_setting(name, f"{value!r} ends with '/'", accepted)
    if not _PATH_PREFIX.fullmatch(value):
        raise bad_setting(name, f"{value!r} holds a character that is not allowed or an empty segment", accepted)
    if any(part in (".", "..") for part in value.split("/")):
        raise bad_setting(name, f"{value!r} has a '.' or '..' segment", accepted)


# An origin as a browser sends it: scheme, lower-case host (a name or a
# bracketed IPv6 address), a port; nothing else (no path, no user).
_ORIGIN = re.compile(r"(?P<scheme>https?)://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::(?P<port>[0-9]{1,5}))?")
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _check_origin(name: str, value: str) -> None:
    """``value`` is an origin exactly as a browser's Origin header names
    it (compared as it is): ``https://ops.example.com``, a port only when
    it is not the scheme's own."""
    accepted = (
        "an origin such as https://ops.example.com or https://ops.example.com:8443: http or https, the host in"
        " lower case, a port only when not the scheme's default, no path (not even '/')"
    )
    found = _ORIGIN.fullmatch(value)
    if found is None:
        raise bad_setting(name, f"{value!r} is not an origin", accepted)
    port = found["port"]
    if port is not None and not 0 < int(port) <= 65535:
        raise bad_setting(name, f"port {port} is out of range", accepted)
    if port is not None and int(port) == _DEFAULT_PORTS[found["scheme"]]:
        raise bad_setting(name, f"{value!r} names its scheme's default port, which a browser leaves out", accepted)


def _check_address(name: str, value: str, *, host_required: bool = False, port_zero: bool = True) -> None:
    """``value`` is ``host:port`` with a port a socket can bind (0: any
    free one, where ``port_zero``) or a client can dial."""
    host, sep, port = value.rpartition(":")
    lowest = 0 if port_zero else 1
    accepted = f"host:port, the port from {lowest} to {MAX_PORT}" + (" (0: any free port)" if port_zero else "")
    if not sep or (host_required and not host) or not (port.isascii() and port.isdigit()):
        raise bad_setting(name, f"{value!r} is not host:port", accepted)
    if not lowest <= int(port) <= MAX_PORT:
        raise bad_setting(name, f"port {int(port)} is out of range", accepted)


def _check_dialable(name: str, value: str) -> None:
    """``value``'s host is one a client can dial: a wildcard (0.0.0.0,
    [::]) binds every address and names none, so routing clients given it
    would dial their own host."""
    host = value.rpartition(":")[0]
    if host in WILDCARD_HOSTS:
        raise bad_setting(
            name,
            f"{value!r} is a wildcard host, which clients cannot dial",
            "host:port that clients reach this replica at (its pod IP, its host name); on Kubernetes the pod's IP"
            " from the downward API (docs/deployment.md)",
        )


def env_name(name: str) -> str:
    return f"CHRONICLE_{name.upper()}"


def env_value(environ: Mapping[str, str], variable: str) -> str | None:
    """``variable``'s value in ``environ``, None when it is not set or is
    empty (blank): templating tools (Helm, Compose, envsubst) write
    ``CHRONICLE_INSECURE=`` for a value left out, meaning "unset", and a
    setting so written takes its default, as if the line were not there."""
    value = environ.get(variable)
    return value if value is not None and value.strip() else None


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def seconds(text: str) -> float:
    """A duration: seconds (``2.5``), or a number and a unit: ``250ms``,
    ``30s``, ``15m``, ``12h``, ``90d``, ``2w``."""
    stripped = text.strip().lower()
    for unit in sorted(_UNITS, key=len, reverse=True):
        if stripped.endswith(unit) and stripped[: -len(unit)].strip():
            return float(stripped[: -len(unit)]) * _UNITS[unit]
    return float(stripped)


def _convert(name: str, kind: str, text: str) -> object:
    """``text`` (a flag's or an environment variable's) as setting
    ``name`` of type ``kind``; refused as ``bad_setting`` says."""
    try:
        if kind == "bool":
            return _parse_bool(text)
        if kind == "int":
            return int(text)
        if kind == "float":
            if name in UNIT_REQUIRED and _bare_number(text):
                raise bad_setting(
                    name,
                    f"{text.strip()!r} has no unit (seconds? days?)",
                    "a number and a unit, such as 90d, 12h, 2w; 0: forever",
                )
            return seconds(text)
    except ValueError:
        raise bad_setting(name, f"{text!r} is not {_WHAT[kind]}", _accepted(name, kind)) from None
    if kind == "tuple[str, ...]":
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def _bare_number(text: str) -> bool:
    """Whether ``text`` is a number without a unit, other than 0."""
    try:
        return float(text) != 0
    except ValueError:
        return False


_WHAT = {"bool": "a boolean", "int": "a whole number", "float": "a duration"}


_MAY_BE_ZERO = frozenset({"snapshot_every", "max_commands_per_second_per_principal", "commands_burst_per_principal"})


def _accepted(name: str, kind: str) -> str:
    if kind == "bool":
        return "true, false, yes, no, on, off, 1 or 0"
    if kind == "int":
        return _accepted_int(name, at_least=0 if name in _MAY_BE_ZERO else 1)
    return DURATION


# What starts like a number, negative included: a value, never a flag.
_NUMBER_LIKE = re.compile(r"^-(?:\.?\d|inf|nan)", re.IGNORECASE)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting, ``--database-url`` for ``database_url``.

    A negative value written apart from its flag (``--shutdown-grace -1s``)
    reaches the settings' checks and is refused as ``BAD_SETTING`` like any
    other: argparse takes only bare negative numbers ("-1", "-1.5") as values
    and anything else that starts with "-" for an unknown option, a usage
    error that names neither the setting nor what it accepts. No flag of
    ours starts with "-" and a digit, so nothing else changes meaning."""
    parser._negative_number_matcher = _NUMBER_LIKE
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        help_text = f"{f.metadata.get('help', '')} (env {env_name(f.name)}; default {f.default!r})"
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.type == "tuple[str, ...]":
            parser.add_argument(
                flag.rstrip("s"), dest=f.name, action="append", default=None, help=help_text + "; repeatable"
            )
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=help_text)


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags (``args``), then ``environ``, then defaults."""
    values: dict[str, object] = {}
    for f in fields(Settings):
        flag_value = getattr(args, f.name, None) if args is not None else None
        if flag_value is not None:
            if isinstance(flag_value, list):
                values[f.name] = tuple(flag_value)
            elif isinstance(flag_value, str):
                values[f.name] = _convert(f.name, str(f.type), flag_value)
            else:
                values[f.name] = flag_value
        elif environ is not None and (text := env_value(environ, env_name(f.name))) is not None:
            values[f.name] = _convert(f.name, str(f.type), text)
    return Settings(**values)  # type: ignore[arg-type]


def settings_from(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_settings(parser.parse_args(list(argv)), environ)
