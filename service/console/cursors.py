"""Page cursors the browser carries but cannot read: the Log page's *Next
page* goes on after the last aggregate its bounded scan read, and that one
may be of a type the reader may not read (its id is as secret as the
aggregate: ids can be personal data). The cursor is therefore sealed with
AES-GCM under a key of the console's own, made when it starts and never
written anywhere, and bound to what it was made for (the session and the
listing): it says nothing, cannot be made up or changed, and is refused
(``INVALID_CURSOR``, 400) from another session, another listing, or a
console that has restarted since.
"""

from __future__ import annotations

import base64
import binascii
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from service.errors import InvalidInput

_NONCE_BYTES = 12
# An aggregate id is at most 200 characters (800 bytes in UTF-8), sealed
# with its nonce and tag, in base64: anything longer was not made here.
MAX_CURSOR_LENGTH = 2048


class Cursors:
    def __init__(self, key: bytes | None = None) -> None:
        self._aead = AESGCM(key if key is not None else AESGCM.generate_key(bit_length=256))

    def seal(self, value: str, *, bound_to: str) -> str:
        """``value`` sealed, usable only with the same ``bound_to``."""
        nonce = os.urandom(_NONCE_BYTES)
        sealed = nonce + self._aead.encrypt(nonce, value.encode(), bound_to.encode())
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, cursor: str, *, bound_to: str, field: str) -> str:
        """The value ``cursor`` was sealed with, if it was sealed here for
        ``bound_to``; otherwise ``INVALID_CURSOR`` naming ``field``."""
        try:
            if len(cursor) > MAX_CURSOR_LENGTH:
                raise ValueError("too long")
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            if len(raw) <= _NONCE_BYTES:
                raise ValueError("too short")
            return self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], bound_to.encode()).decode()
        except (ValueError, binascii.Error, InvalidTag, UnicodeDecodeError):
            raise InvalidInput.for_field(
                field,
                "is not a cursor this console made for this session and listing (it was changed, is from"
                " another session or listing, or the console restarted since): start from the first page",
                reason="INVALID_CURSOR",
            ) from None
