"""Master keys: the shared ones, and tenants' own, which can be destroyed.

A master-key file (or ``CHRONICLE_MASTER_KEYS``) holds entries separated by
commas or new lines, ``#`` starting a comment:

- ``ID:BASE64``: a shared key. The first one wraps the data keys of every
  aggregate of no tenant (or of a tenant without keys), of claims' scopes
  and of read models.
- ``TENANT:ID:BASE64``: a key of tenant ``TENANT`` (``acme`` owns the
  aggregates ``acme:…``), stored with the data keys it wraps as
  ``TENANT:ID``. A tenant's first live key wraps its new aggregates' keys.
- ``TENANT:ID:destroyed``: that key was destroyed on purpose: the data keys
  it wrapped, in the live store and in every backup, open no more, and the
  server answers for their aggregates as for forgotten ones. A tenant all
  of whose keys are destroyed is *shredded*: none of its aggregates reads,
  whatever key wraps them, and it gets no new ones.

Why the tenant first and ``:`` (not ``acme/2026-01:…``): a server that does
not know tenant keys takes what precedes the first ``:`` as a key id and
the rest as base64, so ``acme/2026-01:…`` would be read as a shared key
(the active one if first), while ``acme:2026-01:…`` and
``acme:2026-01:destroyed`` are not base64 (``:``): an older server refuses
the file (``BAD_MASTER_KEYS``) rather than misread it. ``:`` is also the
tenant separator of aggregate ids, so a stored ``acme:2026-01`` never
collides with a shared key's id (which cannot hold ``:``).

Why a destroyed entry in the same file, not a list elsewhere: the shred is
one edit, which removes the key's bytes and says that they were removed on
purpose, read again by every replica like any rotation. A key that is
merely absent stays an operator's mistake (``MASTER_KEY_MISSING``), never
mistaken for a shred.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap

from service.errors import AggregateForgotten, ConfigurationError, MasterKeysUnfit, TenantShredded
from service.principal import TENANT_SEPARATOR, tenant_problem
from service.store.records import DataKey

KEY_BYTES = 32
DESTROYED = "destroyed"


# A data key of a tenant's share of something that is no aggregate (a
# ``tenant_keyed`` read model's documents of one tenant, a tenant's claims
# in a scope declared per tenant: service.claim_scopes) is kept under an
# internal id (one starting with a control character, as every key that is
# no aggregate's) that ends with this mark and the tenant. Neither a read
# model's name, a claims scope nor a tenant id can hold it (names are
# letters, digits, '_' and '.'; scopes and tenant ids printable).
TENANT_OWNED_MARK = "\x1e"


def owner_tenant(owner: str) -> str:
    """The tenant whose master key wraps ``owner``'s data key ('' for none):
    an aggregate id's part before ``:``, or what follows
    ``TENANT_OWNED_MARK`` in an internal key id (a claims scope's or a read
    model's key otherwise belongs to no tenant)."""
    if owner.startswith("\x1f"):
        _, mark, tenant = owner.rpartition(TENANT_OWNED_MARK)
        return tenant if mark else ""
    tenant, separator, _ = owner.partition(TENANT_SEPARATOR)
    return tenant if separator else ""


def tenant_key_id(tenant: str, key_id: str) -> str:
    """The id a tenant's key is stored under beside the data keys it wraps."""
    return tenant + TENANT_SEPARATOR + key_id


def missing_tenant_keys_said(master_key_ids: Iterable[str]) -> str:
    """Whose the tenants' keys among ``master_key_ids`` (not given) are, and
    the two ways out ('' if none is a tenant's). Said in the error itself:
    a tenant's key absent is either a line lost (put it back) or a shred
    not written down (mark it destroyed), and only the operator knows
    which; the shared keys' advice alone (put it back, rewrap) would lead
    them to restore a key destroyed on purpose, or to look for it forever."""
    tenants = [key_id for key_id in master_key_ids if TENANT_SEPARATOR in key_id]
    if not tenants:
        return ""
    whose = ", ".join(f"{key_id!r} is a key of tenant {key_id.partition(TENANT_SEPARATOR)[0]!r}" for key_id in tenants)
    it = "it" if len(tenants) == 1 else "them"
    back = ", ".join(f"{key_id}:BASE64" for key_id in tenants)
    destroyed = ", ".join(f"{key_id}:{DESTROYED}" for key_id in tenants)
    return (
        f"{whose}: put {it} back in the master-key file ({back}, the bytes it had), or, if the tenant was"
        f" shredded on purpose, mark {it} destroyed there ({destroyed}), and its aggregates read as forgotten"
    )


def missing_tenants_metadata(master_key_ids: Iterable[str]) -> dict[str, str]:
    """``{"tenants": "acme,..."}`` when some of ``master_key_ids`` (not
    given) are tenants' keys, so that a script tells a tenant's key missing
    from a shared one; ``{}`` otherwise."""
    tenants = sorted({k.partition(TENANT_SEPARATOR)[0] for k in master_key_ids if TENANT_SEPARATOR in k})
    return {"tenants": ",".join(tenants)} if tenants else {}


@dataclass(frozen=True, slots=True)
class MasterKeys:
    """Master keys by stored id; ``active`` (shared) wraps new data keys
    unless their aggregate's tenant has a key of its own
    (``tenant_active``); all unwrap. ``destroyed``: tenants' key ids marked
    destroyed; ``shredded``: tenants whose every key is."""

    keys: Mapping[str, bytes]
    active: str
    tenant_active: Mapping[str, str] = field(default_factory=dict)
    destroyed: frozenset[str] = frozenset()
    shredded: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str, *, source: str) -> MasterKeys:
        """The entries of the module's docstring; each key is 32 random
        bytes (``chronicle masterkey [--tenant T] ID`` makes one)."""
        keys: dict[str, bytes] = {}
        shared: list[str] = []
        tenant_active: dict[str, str] = {}
        destroyed: dict[str, str] = {}  # stored id -> tenant
        for entry in (e.strip() for e in text.replace("\n", ",").split(",")):
            if not entry or entry.startswith("#"):
                continue
            *owner, encoded = entry.split(":")
            tenant, key_id = owner if len(owner) == 2 else ("", owner[0] if len(owner) == 1 else "")
            if len(owner) == 2 and tenant_problem(tenant):
                raise _bad(source, f"tenant {tenant!r} of a master key {tenant_problem(tenant)}")
            stored_id = tenant_key_id(tenant, key_id) if tenant else key_id
            key = _decoded(encoded) if encoded != DESTROYED or not tenant else b""
            if not key_id or (len(key) != KEY_BYTES and not (tenant and encoded == DESTROYED)):
                raise _bad(
                    source,
                    f"master keys are 'id:base64' (shared) or 'tenant:id:base64' entries of {KEY_BYTES} bytes,"
                    f" or 'tenant:id:{DESTROYED}'",
                )
            if stored_id in keys or stored_id in destroyed:
                raise _bad(source, f"master key {stored_id!r} is given twice")
            if not key:
                destroyed[stored_id] = tenant
                continue
            keys[stored_id] = key
            if not tenant:
                shared.append(stored_id)
            else:
                tenant_active.setdefault(tenant, stored_id)
        if not keys:
            raise ConfigurationError(f"{source}: no master key", reason="BAD_MASTER_KEYS")
        if not shared:
            raise _bad(source, "no shared master key ('id:base64'): it wraps the keys of claims and read models")
        shredded = frozenset(destroyed.values()) - tenant_active.keys()
        return cls(keys, shared[0], tenant_active, frozenset(destroyed), shredded)

    @classmethod
    def load(cls, path: str | Path) -> MasterKeys:
        try:
            return cls.parse(Path(path).read_text(), source=str(path))
        except OSError as error:
            raise ConfigurationError(f"cannot read master keys {path}: {error}", reason="BAD_MASTER_KEYS") from error

    def key_id_for(self, owner: str) -> str:
        """The id of the master key that wraps ``owner``'s data key: its
        tenant's active key, else the shared active key. One dict lookup;
        TenantShredded (an AggregateForgotten) for an aggregate of a shredded
        tenant."""
        if self.tenant_active or self.shredded:
            tenant = owner_tenant(owner)
            if tenant:
                found = self.tenant_active.get(tenant)
                if found is not None:
                    return found
                if tenant in self.shredded:
                    raise TenantShredded(owner, tenant)
        return self.active

    def shreds(self, key: DataKey) -> bool:
        """Whether ``key`` is shredded: wrapped by a destroyed tenant key, or
        of an aggregate of a shredded tenant (wrapped by the shared key
        because its tenant's keys came after it and were destroyed before
        ``rewrap-keys`` moved it: the server reads it no more either)."""
        if key.master_key_id in self.destroyed:
            return True
        if self.shredded:
            tenant = owner_tenant(key.aggregate_id)
            return bool(tenant) and tenant in self.shredded
        return False

    def wrap(self, data_key: bytes, owner: str = "") -> tuple[str, bytes]:
        """``data_key`` wrapped for ``owner`` (an aggregate id, or a claims
        scope's or read model's key id): the master key's id and the bytes."""
        master_key_id = self.key_id_for(owner)
        return master_key_id, aes_key_wrap(self.keys[master_key_id], data_key)

    def unwrap(self, key: DataKey) -> bytes:
        if key.master_key_id in self.destroyed:
            raise AggregateForgotten(key.aggregate_id)
        master = self.keys.get(key.master_key_id or "")
        if master is None or key.wrapped is None:
            master_key_id = key.master_key_id or ""
            tenant_said = missing_tenant_keys_said([master_key_id])
            raise MasterKeysUnfit(
                f"the data key of {key.aggregate_id!r} is wrapped by master key {master_key_id!r},"
                " which is not configured" + (f": {tenant_said}" if tenant_said else ""),
                reason="MASTER_KEY_MISSING",
                metadata={"master_key_id": master_key_id} | missing_tenants_metadata([master_key_id]),
            )
        try:
            return aes_key_unwrap(master, key.wrapped)
        except InvalidUnwrap as error:
            raise MasterKeysUnfit(
                f"master key {key.master_key_id!r} does not unwrap the data key of {key.aggregate_id!r}",
                reason="MASTER_KEY_MISMATCH",
            ) from error


def new_entry(key_id: str, tenant: str = "") -> str:
    """A new master key's line for the key file (``chronicle masterkey``):
    ``ID:BASE64``, or ``TENANT:ID:BASE64`` for a tenant's."""
    if not key_id or key_id.startswith("#") or any(c in ":," or c.isspace() for c in key_id):
        raise ConfigurationError(
            f"master key id {key_id!r} must be non-empty, without ':', ',' or spaces, not starting with '#'",
            reason="BAD_MASTER_KEYS",
        )
    if tenant and tenant_problem(tenant):
        raise ConfigurationError(f"tenant {tenant!r} {tenant_problem(tenant)}", reason="BAD_MASTER_KEYS")
    encoded = base64.b64encode(os.urandom(KEY_BYTES)).decode()
    return f"{tenant_key_id(tenant, key_id) if tenant else key_id}:{encoded}"


def _decoded(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        return b""


def _bad(source: str, problem: str) -> ConfigurationError:
    return ConfigurationError(f"{source}: {problem}", reason="BAD_MASTER_KEYS")
