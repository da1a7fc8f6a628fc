"""Read models' data keys stay in the store that made them.

A read model seals its documents under a data key of its own
(``encryption.projection_key_id``; a ``tenant_keyed`` one under a key of
each tenant, ``tenant_projection_key_id``; a reaction's documents are kept
as a read model's). Documents are not exported: a target rebuilds them from
the events, under keys it makes itself. Such a key opens nothing an export
carries, and a running target's read model may have made its own first (a
document read or written, a reaction's due documents looked for): imported,
the source's was then refused as another live key (DATA_KEY_CONFLICT), by
timing. So an export leaves them out, and an import passes over those an
export of an older Chronicle carries (counted in its summary).

Claims scopes' keys do travel: the claimed values an export carries are
keyed hashes under them, which no other key tests again. A target makes
one only to take or look up a claim (a command), so one that took claims in
the scope refuses the import (DATA_KEY_CONFLICT), as it must.
"""

from __future__ import annotations

from service.store.encryption import PROJECTION_KEY_PREFIX


def is_read_model_key(key_id: str) -> bool:
    """Whether ``key_id`` is a read model's key (or a tenant's key of one):
    not exported, not imported."""
    return key_id.startswith(PROJECTION_KEY_PREFIX)
