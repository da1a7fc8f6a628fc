"""Choosing a store from a database URL: the built-in schemes, and any
other scheme a package registers in the ``chronicle.stores`` entry-point
group (docs/stores.md)."""

from __future__ import annotations

import re
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Protocol
from urllib.parse import unquote, urlsplit

from service.errors import ConfigurationError
from service.store.base import DEFAULT_KEEP_SNAPSHOTS, StoreAdapter
from service.store.schema_use import SchemaUse

STORE_ENTRY_POINT_GROUP = "chronicle.stores"
BUILT_IN_SCHEMES = ("sqlite", "memory", "postgresql", "postgres")


class StoreFactory(Protocol):
    """What a ``chronicle.stores`` entry point names: the store for a URL of
    its scheme, not yet opened. ``pool_size`` is how many connections a
    server process may use; ``keep_snapshots`` how many snapshots each
    aggregate keeps (``SnapshotStore.save_snapshot``)."""

    def __call__(self, url: str, *, pool_size: int, keep_snapshots: int) -> StoreAdapter: ...


def open_store(
    url: str,
    *,
    pool_size: int = 10,
    keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS,
    json_of: Callable[[str, bytes], object] | None = None,
    refuse_sealed: bool = False,
    use: SchemaUse = SchemaUse.MIGRATE,
    force_migration: bool = False,
) -> StoreAdapter:
    """The store a URL names; not yet opened.

    A scheme other than the built-in ones is looked up in the
    ``chronicle.stores`` entry points. ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (as in
    SQLAlchemy), ``memory://``, and ``postgresql://…`` (or ``postgres://…``,
    any libpq URL: ``?sslmode=require`` and the like pass through).
    ``pool_size`` bounds PostgreSQL connections per server process;
    ``keep_snapshots`` is how many snapshots each aggregate keeps;
    ``json_of`` makes PostgreSQL keep a JSON copy of each payload (other
    stores refuse it); ``refuse_sealed``: a server without master keys
    (PostgreSQL refuses to serve if it holds data keys sealed by them, also
    when it is first reached after start-up; ``service.app`` checks every
    store at start-up); ``use``: what the SQL stores may do to the schema
    they find (schema_use.py: migrate it, take it as it is, or write
    nothing); a store of another package opens as its factory makes it.
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        from service.store.postgres import PostgresStore

        return PostgresStore(
            url,
            pool_size=pool_size,
            keep_snapshots=keep_snapshots,
            json_of=json_of,
            refuse_sealed=refuse_sealed,
            use=use,
            force_migration=force_migration,
        )
    if json_of is not None:
        raise ConfigurationError(
            "--postgres-json-events: only PostgreSQL keeps a JSON copy of events; with a postgresql:// --database-url",
            reason="BAD_SETTING",
        )
    if scheme == "memory":
        from service.store.memory import MemoryStore

        return MemoryStore(keep_snapshots=keep_snapshots)
    if scheme == "sqlite":
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else ""
        if not path:
            raise ConfigurationError(
                f"a SQLite URL names a file: sqlite:///relative.db or sqlite:////absolute.db, got {url!r}",
                reason="BAD_DATABASE_URL",
            )
        from service.store.sqlite import SqliteStore

        return SqliteStore(path, keep_snapshots=keep_snapshots, use=use)
    entry = {e.name: e for e in entry_points(group=STORE_ENTRY_POINT_GROUP)}.get(scheme)
    if entry is None:
        others = sorted(e.name for e in entry_points(group=STORE_ENTRY_POINT_GROUP))
        installed = f" (installed: {', '.join(s + '://' for s in others)})" if others else ""
        raise ConfigurationError(
            f"unsupported database URL {redacted_url(url)!r}: use sqlite:///…, memory:// or postgresql://…,"
            f" or a scheme a package registers in the {STORE_ENTRY_POINT_GROUP!r} entry points{installed}",
            reason="BAD_DATABASE_URL",
        )
    try:
        factory = entry.load()
    except Exception as error:  # a broken third-party store must say which one
        raise ConfigurationError(
            f"the store of scheme {scheme!r} ({entry.value}) failed to load: {error}", reason="STORE_IMPORT_FAILED"
        ) from error
    store: StoreAdapter = factory(url, pool_size=pool_size, keep_snapshots=keep_snapshots)
    return store


def check_shared_by_processes(adapter: object, url: str) -> None:
    """Several server processes on one port (``--processes``,
    ``--reuse-port``) share the work out through the store's leases. A store
    that serves one process (``serves_one_process``) is refused: memory,
    whose every process would hold every lease and keep data of its own (one
    aggregate could be opened twice), and SQLite, whose file takes one
    writer at a time (the processes would only queue for it)."""
    if getattr(adapter, "serves_one_process", False):
        raise ConfigurationError(
            f"the store {redacted_url(url)!r} serves one process: several processes on one port"
            " (--processes, --reuse-port) need a database they can all write at once (postgresql://…)",
            reason="ONE_PROCESS_STORE",
        )


_KINDS = {"MemoryStore": "memory", "SqliteStore": "sqlite", "PostgresStore": "postgresql"}


def store_kind(adapter: object) -> str:
    """The kind of store an adapter is, as export headers name it."""
    name = type(adapter).__name__
    return _KINDS.get(name, name)


def redacted_url(url: str) -> str:
    """The URL without its password, for messages and logs. A libpq
    key=value string (``host=db password=…``), which is no URL but is
    what some operators pass, has its secret values hidden too: a message
    that refuses it must not echo them."""
    if "://" not in url and "=" in url:
        return _SECRET_KEYWORD.sub(lambda found: f"{found.group(1)}=***", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        parts = parts._replace(netloc=netloc)
    if parts.query:
        # libpq takes a password as a parameter too (?password=…, ?sslpassword=…).
        query = "&".join(
            f"{key}=***" if unquote(key).lower() in _SECRET_PARAMETERS else f"{key}={value}" if sep else key
            for key, sep, value in (item.partition("=") for item in parts.query.split("&"))
        )
        parts = parts._replace(query=query)
    shown = parts.geturl()
    # Rebuilt only when something was hidden (geturl writes sqlite:/// as sqlite:/).
    return url if shown == urlsplit(url).geturl() else shown


_SECRET_PARAMETERS = frozenset({"password", "sslpassword"})
# A secret keyword of a key=value string and its value: quoted (with \' and
# \\ escapes inside) or up to the next space.
_SECRET_KEYWORD = re.compile(r"\b(password|sslpassword)\s*=\s*(?:'(?:[^'\\]|\\.)*'?|\S*)", re.IGNORECASE)
