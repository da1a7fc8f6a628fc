"""Opaque page tokens for listings: what a page ended at, bound to the
listing it came from.

A token is base64url of a small JSON object: the listing's fingerprint (a
hash of the projection, the key prefix and the order, so a token cannot
continue another listing) and where the page ended. Clients treat it as
opaque; the server checks it as input like any other: a token that does not
decode is INVALID_PAGE_TOKEN, one from another listing PAGE_TOKEN_MISMATCH.
Tokens carry nothing secret (keys the caller has read already).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from service.errors import InvalidInput
from service.values import MAX_ID_LENGTH

# A listing's page when the request names no size, and the most a page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Tokens hold a document key, which a plugin chooses: generous, but bounded.
MAX_TOKEN_LENGTH = 64 * 1024


def fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def make_token(listing: str, **after: Any) -> str:
    body = json.dumps({"l": listing, **after}, separators=(",", ":"), ensure_ascii=False)
    return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")


def read_token(token: str, listing: str, *, bound_to: str, field: str = "page_token") -> dict[str, Any]:
    """The token's fields (``make_token``'s keywords); raises InvalidInput.
    ``bound_to``: the request's fields the listing's fingerprint is made of,
    in words ("the prefix and aggregate type"), for the caller told that a
    token continues another listing."""
    if len(token) > MAX_TOKEN_LENGTH:
        raise InvalidInput.for_field(field, f"at most {MAX_TOKEN_LENGTH} characters", reason="INVALID_PAGE_TOKEN")
    try:
        decoded = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode())
        # JSON escapes can spell a lone surrogate (an escaped \ud800), which no
        # store can encode: no token this server made holds one.
        json.dumps(decoded, ensure_ascii=False).encode()
    except (binascii.Error, UnicodeDecodeError, UnicodeEncodeError, ValueError):
        decoded = None
    if not isinstance(decoded, dict) or not isinstance(decoded.get("l"), str):
        raise InvalidInput.for_field(
            field, "is not a page token this server made (pass next_page_token as it came)", reason="INVALID_PAGE_TOKEN"
        )
    if decoded["l"] != listing:
        raise InvalidInput.for_field(
            field,
            f"continues another listing: pass it with {bound_to} of the request it came from",
            reason="PAGE_TOKEN_MISMATCH",
        )
    return decoded


def checked_key_prefix(prefix: str) -> str:
    """A listing's ``key_prefix``, refused INVALID_KEY_PREFIX when no key could start with it."""
    if len(prefix) > MAX_ID_LENGTH:
        raise InvalidInput.for_field(
            "key_prefix", f"must be at most {MAX_ID_LENGTH} characters", reason="INVALID_KEY_PREFIX"
        )
    if not prefix.isprintable():
        raise InvalidInput.for_field("key_prefix", "must not contain control characters", reason="INVALID_KEY_PREFIX")
    return prefix


def checked_page_size(asked: int) -> int:
    """A listing's ``page_size`` (0: the default), refused PAGE_SIZE_TOO_LARGE above the most."""
    if asked > MAX_PAGE_SIZE:
        raise InvalidInput.for_field("page_size", f"must be at most {MAX_PAGE_SIZE}", reason="PAGE_SIZE_TOO_LARGE")
    return asked or DEFAULT_PAGE_SIZE
