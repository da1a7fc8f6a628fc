"""How a command uses a store's schema, and whether the schema it finds
lets it: the one judgment both SQL stores make when they open a database.

A server migrates an older schema (``MIGRATE``), or, run with
``--migrate=never`` under a role that may not change the schema, takes it
only as it is (``AS_IS``). A backup only reads (``READ_ONLY``): it opens its
source read only, so it works on a hot standby, a read-only role or a
read-only file, and never changes what it backs up, not even the schema's
version (a newer CLI would otherwise upgrade production's schema in place).
A newer schema is taken as it is when its compatibility floor allows
(``needs_migrating``).
"""

from __future__ import annotations

import enum

from service.errors import ConfigurationError

# The reason of a schema whose compatibility floor is above the newest
# migration this code knows: refused at start, and NOT_SERVING when a
# serving replica finds it (health.py keeps the store "up" meanwhile: it is
# reachable, and chronicle_schema_compatible says what is wrong).
SCHEMA_TOO_NEW = "SCHEMA_TOO_NEW"


class SchemaUse(enum.Enum):
    MIGRATE = "migrate"  # bring an older schema up to date first
    AS_IS = "as_is"  # refuse an older schema: someone else migrates (chronicle migrate)
    READ_ONLY = "read_only"  # write nothing, ever; the schema must be exactly this code's


def needs_migrating(found: int, newest: int, use: SchemaUse, where: str, *, compatible_from: int | None = None) -> bool:
    """Whether the schema at version ``found`` (0: none yet) must be migrated
    to ``newest``, this code's; raise ``ConfigurationError`` when ``use``
    cannot go on with it. ``where`` names the database in messages.

    A newer schema is served when its compatibility floor
    (``compatible_from``, sql_common.Migration; None: unknown, taken as
    ``found``) is at most ``newest``: a rolling upgrade's old replicas run
    on the new replicas' additive migrations, and a rollback is a restart
    of the old version (docs/deployment.md). Not for a backup: an older
    CLI would leave out what the newer schema holds."""
    if found > newest:
        floor = found if compatible_from is None else compatible_from
        if floor <= newest and use is not SchemaUse.READ_ONLY:
            return False
        raise ConfigurationError(
            f"{where} has schema version {found}, newer than this Chronicle knows ({newest}): "
            + (
                "export it with the Chronicle that wrote it (or a newer one)"
                if use is SchemaUse.READ_ONLY
                else f"only the code of schema version {floor} or later runs on it (its compatibility floor);"
                " upgrade Chronicle before pointing it at this database"
            ),
            reason=SCHEMA_TOO_NEW,
        )
    if found == newest or use is SchemaUse.MIGRATE:
        return found < newest
    if use is SchemaUse.READ_ONLY and found == 0:
        raise ConfigurationError(f"{where} holds no Chronicle store: nothing to read", reason="SCHEMA_MISSING")
    what = (
        "export it with the Chronicle that wrote it, or migrate it first (chronicle migrate --database-url …)"
        if use is SchemaUse.READ_ONLY
        else "migrate it first (chronicle migrate --database-url …, as a role that may change the schema),"
        " or start with --migrate=auto"
    )
    raise ConfigurationError(
        f"{where} has schema version {found}, older than this Chronicle's ({newest}): {what}",
        reason="SCHEMA_TOO_OLD",
    )
