"""Data keys named for people. The keys of claims scopes and read models
are kept beside aggregates' under ids no aggregate can have (a control
character, then what they are for: ``encryption.CLAIMS_KEY_PREFIX``,
``PROJECTION_KEY_PREFIX``); a message that names one by its id shows
``'\\x1fclaims:users.email'``. These say whose key it is instead."""

from __future__ import annotations

import re

from service.store.encryption import CLAIMS_KEY_PREFIX, PROJECTION_KEY_PREFIX

# An internal key id as repr() writes it in a message: '\x1fclaims:users.email'.
_QUOTED = re.compile(r"""(['"])\\x1f(claims|projection):(.*?)\1""")
# One written as it is (str(), an f-string without !r): up to the next
# space, punctuation that ends a clause left out.
_RAW = re.compile(r"\x1f(claims|projection):(\S+?)(?=[,.;:)]*(?:\s|$))")
_OWNERS = {"claims": "the uniqueness claims of scope", "projection": "the read model"}


def key_owner(key_id: str) -> str:
    """Whose data key ``key_id`` is: "aggregate 'acc-1'", "the uniqueness
    claims of scope 'users.email'", "the read model 'bank.balances'"."""
    if key_id.startswith(CLAIMS_KEY_PREFIX):
        return f"{_OWNERS['claims']} {key_id.removeprefix(CLAIMS_KEY_PREFIX)!r}"
    if key_id.startswith(PROJECTION_KEY_PREFIX):
        return f"{_OWNERS['projection']} {key_id.removeprefix(PROJECTION_KEY_PREFIX)!r}"
    return f"aggregate {key_id!r}"


def humanized(text: str) -> str:
    """``text`` with every internal key id in it (quoted, as repr() writes
    it, or raw) said as whose key it is."""
    text = _QUOTED.sub(lambda found: f"{_OWNERS[found.group(2)]} '{found.group(3)}'", text)
    return _RAW.sub(lambda found: f"{_OWNERS[found.group(1)]} '{found.group(2)}'", text)
