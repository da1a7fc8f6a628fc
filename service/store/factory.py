"""Choosing a store from a database URL."""

from __future__ import annotations

from urllib.parse import urlsplit

from service.errors import ConfigurationError
from service.store.base import DEFAULT_KEEP_SNAPSHOTS, StoreAdapter


def open_store(url: str, *, pool_size: int = 10, keep_snapshots: int = DEFAULT_KEEP_SNAPSHOTS) -> StoreAdapter:
    """The store a URL names; not yet opened.

    ``sqlite:///relative/path.db`` and ``sqlite:////absolute/path.db`` (as in
    SQLAlchemy), ``memory://``, and ``postgresql://…`` (or ``postgres://…``,
    any libpq URL: ``?sslmode=require`` and the like pass through).
    ``pool_size`` bounds PostgreSQL connections per server process;
    ``keep_snapshots`` is how many snapshots each aggregate keeps.
    """
    scheme = urlsplit(url).scheme if "://" in url else ""
    if scheme in ("postgresql", "postgres"):
        from service.store.postgres import PostgresStore

        return PostgresStore(url, pool_size=pool_size, keep_snapshots=keep_snapshots)
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

        return SqliteStore(path, keep_snapshots=keep_snapshots)
    raise ConfigurationError(
        f"unsupported database URL {_redacted(url)!r}: use sqlite:///…, memory:// or postgresql://…",
        reason="BAD_DATABASE_URL",
    )


_KINDS = {"MemoryStore": "memory", "SqliteStore": "sqlite", "PostgresStore": "postgresql"}


def store_kind(adapter: object) -> str:
    """The kind of store an adapter is, as export headers name it."""
    name = type(adapter).__name__
    return _KINDS.get(name, name)


def _redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url
