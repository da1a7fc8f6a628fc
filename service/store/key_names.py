"""Data keys named for people. The keys of claims scopes and read models
are kept beside aggregates' under ids no aggregate can have (a control
character, then what they are for: ``encryption.CLAIMS_KEY_PREFIX``,
``PROJECTION_KEY_PREFIX``); a message that names one by its id shows
``'\\x1fclaims:users.email'``. These say whose key it is instead."""

from __future__ import annotations

import re

from service.store.encryption import CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX
from service.store.master_keys import TENANT_OWNED_MARK

# A tenant's key of a read model (or of a claims scope unique per tenant)
# as repr() writes it: '\x1fprojection:bank.balances\x1eacme'.
_QUOTED_TENANTS = re.compile(r"""(['"])\\x1f(claims|projection):([^'"\\]*?)\\x1e(.*?)\1""")
# An internal key id as repr() writes it in a message: '\x1fclaims:users.email'.
_QUOTED = re.compile(r"""(['"])\\x1f(claims|projection):(.*?)\1""")
# One written as it is (str(), an f-string without !r): up to the next
# space, punctuation that ends a clause left out.
_RAW = re.compile(r"\x1f(claims|projection):(\S+?)(?=[,.;:)]*(?:\s|$))")
# A tenant's key of a read model or claims scope written as it is.
_RAW_TENANTS = re.compile(r"\x1f(claims|projection):([^\s\x1e]+)\x1e(\S+?)(?=[,.;:)]*(?:\s|$))")
_OWNERS = {"claims": "the uniqueness claims of scope", "projection": "the read model"}


def key_owner(key_id: str) -> str:
    """Whose data key ``key_id`` is: "aggregate 'acc-1'", "the uniqueness
    claims of scope 'users.email'", "the read model 'bank.balances'"."""
    if key_id.startswith(CLAIMS_KEY_PREFIX):
        scope, mark, tenant = key_id.removeprefix(CLAIMS_KEY_PREFIX).partition(TENANT_OWNED_MARK)
        if mark:
            return _tenants("claims", scope, tenant)
        return f"{_OWNERS['claims']} {scope!r}"
    if key_id.startswith(PROJECTION_KEY_PREFIX):
        projection, mark, tenant = key_id.removeprefix(PROJECTION_KEY_PREFIX).partition(TENANT_OWNED_MARK)
        if mark:
            return _tenants("projection", projection, tenant)
        return f"{_OWNERS['projection']} {projection!r}"
    return f"aggregate {key_id!r}"


def humanized(text: str) -> str:
    """``text`` with every internal key id in it (quoted, as repr() writes
    it, or raw) said as whose key it is."""
    tenants = _QUOTED_TENANTS.sub(lambda found: _tenants(*found.group(2, 3, 4)), text)
    text = _RAW_TENANTS.sub(lambda found: _tenants(*found.group(1, 2, 3)), tenants)
    text = _QUOTED.sub(lambda found: f"{_OWNERS[found.group(2)]} '{found.group(3)}'", text)
    return _RAW.sub(lambda found: f"{_OWNERS[found.group(1)]} '{found.group(2)}'", text)


def _tenants(kind: str, name: str, tenant: str) -> str:
    if kind == "claims":
        return f"the uniqueness claims of tenant '{tenant}' in scope '{name}'"
    return f"the documents of tenant '{tenant}' of {_OWNERS['projection']} '{name}'"
