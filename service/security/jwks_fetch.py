"""One GET of a JSON Web Key Set, bounded in size and in time.

PyJWT's ``PyJWKClient.fetch_data`` reads the provider's answer whole and
bounds each socket operation, not the fetch: a provider (or whoever answers
in its name) that sends a gigabyte, or a byte a second, holds a thread and
its memory for as long as it likes. Here the answer is read in chunks, at
most ``max_bytes`` of it (a ``Content-Length`` above that is refused before
the body is read), and the whole fetch ends by ``timeout_seconds``: each
socket operation is bounded by it, and the deadline is checked between
chunks. Redirects are not followed (as PyJWT does not): a key set is served
where it is said to be.

Errors: ``JwksTooLarge`` (the answer is bigger than the cap), ``TimeoutError``
(the deadline passed), ``OSError`` (the network, TLS, an HTTP status other
than 200), ``ValueError`` (not JSON, or JSON that is not an object).
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.request
from http.client import HTTPException
from typing import Any
from urllib.error import HTTPError, URLError

# Identity providers publish a few kilobytes (a handful of keys); a megabyte
# is far beyond any real set and still harmless to hold.
MAX_JWKS_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024


class JwksTooLarge(ValueError):
    """The provider's answer is bigger than the cap."""


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError


def fetch_jwks_document(
    url: str,
    *,
    ssl_context: ssl.SSLContext,
    timeout_seconds: float,
    max_bytes: int = MAX_JWKS_BYTES,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON object at ``url`` (blocking: run it in a thread)."""
    deadline = time.monotonic() + timeout_seconds
    opener = urllib.request.build_opener(_NoRedirect(), urllib.request.HTTPSHandler(context=ssl_context))
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=timeout_seconds) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise JwksTooLarge(
                    f"the answer is too large: {int(declared)} bytes, more than the {max_bytes} accepted"
                )
            body = _read_bounded(response, deadline=deadline, max_bytes=max_bytes, timeout_seconds=timeout_seconds)
    except HTTPError as error:
        error.close()
        raise OSError(f"HTTP {error.code} {error.reason}") from None
    except URLError as error:
        if isinstance(error.reason, TimeoutError):
            raise TimeoutError(f"no answer within {timeout_seconds:g} s") from None
        raise OSError(str(error.reason)) from None
    except HTTPException as error:
        raise OSError(f"{type(error).__name__}: {error}") from None
    document = json.loads(body)
    if not isinstance(document, dict):
        raise ValueError(f"the answer is a JSON {type(document).__name__}, not an object")
    return document


def _read_bounded(response: Any, *, deadline: float, max_bytes: int, timeout_seconds: float) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := response.read1(CHUNK_BYTES):
        size += len(chunk)
        if size > max_bytes:
            raise JwksTooLarge(f"the answer is too large: more than the {max_bytes} bytes accepted")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the answer took longer than {timeout_seconds:g} s ({size} bytes read)")
        chunks.append(chunk)
    return b"".join(chunks)
