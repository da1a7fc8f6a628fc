"""The SQLite store: the embedded default, one file, no server to install."""

from service.store.sqlite.store import SqliteStore

__all__ = ["SqliteStore"]
