"""The PostgreSQL store: production storage and the coordination point
between replicas."""

from service.store.postgres.store import PostgresStore

__all__ = ["PostgresStore"]
