"""The SQLite store: the embedded default, one file, no server to install."""

from service.store.sqlite.store import SCHEMA_VERSION, SqliteStore

__all__ = ["SCHEMA_VERSION", "SqliteStore"]
