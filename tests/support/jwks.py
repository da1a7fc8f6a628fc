"""An identity provider for the tests: signing keys with key ids, the JSON
Web Key Set that publishes them, and an HTTPS server that serves it (a
certificate of a test CA), counting its requests, that can be taken down."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from tests.support.security import ISSUER, Authority, server_tls_files

SigningKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


class KeyRing:
    """Signing keys by kid, ES256 (P-256) unless made RSA."""

    def __init__(self, issuer: str = ISSUER) -> None:
        self.issuer = issuer
        self._keys: dict[str, SigningKey] = {}

    def add(self, kid: str, *, kind: str = "EC") -> None:
        self._keys[kid] = (
            ec.generate_private_key(ec.SECP256R1())
            if kind == "EC"
            else rsa.generate_private_key(public_exponent=65537, key_size=2048)
        )

    def remove(self, kid: str) -> None:
        del self._keys[kid]

    def public_key(self, kid: str) -> ec.EllipticCurvePublicKey | rsa.RSAPublicKey:
        return self._keys[kid].public_key()

    def jwk(self, kid: str, **members: Any) -> dict[str, Any]:
        """The public JWK of ``kid``, with ``members`` added."""
        key = self._keys[kid]
        public = (
            ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
            if isinstance(key, ec.EllipticCurvePrivateKey)
            else RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        )
        return {**public, "kid": kid, "use": "sig", **members}

    def jwks(self) -> dict[str, Any]:
        """The set of every key's public half."""
        return {"keys": [self.jwk(kid) for kid in self._keys]}

    def token(self, subject: str, *, kid: str | None, signed_by: str | None = None, **claims: Any) -> str:
        """A token for ``subject`` whose header names ``kid`` (None: no kid),
        signed by ``signed_by``'s key (by default ``kid``'s)."""
        key = self._keys[signed_by or kid or ""]
        now = int(time.time())
        headers = {"kid": kid} if kid is not None else None
        algorithm = "ES256" if isinstance(key, ec.EllipticCurvePrivateKey) else "RS256"
        payload = {"sub": subject, "iss": self.issuer, "iat": now, "exp": now + 300, **claims}
        return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


class JwksServer:
    """Serves ``document`` at ``url`` over HTTPS; ``down`` answers 503;
    ``lengthless`` sends no Content-Length (the body ends when the
    connection closes); ``trickling`` sends the body a byte at a time, a
    byte per 50 ms, until ``stop_trickling`` is set."""

    def __init__(self, folder: Path) -> None:
        self.ca = Authority("Test IdP CA")
        self.ca_file = str(folder / "idp-ca.pem")
        Path(self.ca_file).write_bytes(self.ca.certificate)
        cert_file, key_file = server_tls_files(folder, self.ca)
        self.document: dict[str, Any] = {"keys": []}
        self.down = False
        self.garbage = False  # answer 200 with a body that is not JSON
        self.lengthless = False
        self.trickling = False
        self.stop_trickling = threading.Event()
        self.requests = 0
        self._lock = threading.Lock()
        served = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with served._lock:
                    served.requests += 1
                    body = b"<html>maintenance</html>" if served.garbage else json.dumps(served.document).encode()
                    down, lengthless, trickling = served.down, served.lengthless, served.trickling
                self.send_response(503 if down else 200)
                self.send_header("Content-Type", "application/json")
                if not (lengthless or trickling):
                    self.send_header("Content-Length", "0" if down else str(len(body)))
                self.end_headers()
                if down:
                    return
                if not trickling:
                    self.wfile.write(body)
                    return
                try:
                    for byte in body:
                        if served.stop_trickling.wait(0.05):
                            return
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                except OSError:
                    pass  # the client gave up

            def log_message(self, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        self._server.socket = context.wrap_socket(self._server.socket, server_side=True)
        self.url = f"https://localhost:{self._server.server_address[1]}/.well-known/jwks.json"

    def publish(self, document: dict[str, Any]) -> None:
        with self._lock:
            self.document = document

    @contextmanager
    def running(self) -> Iterator[JwksServer]:
        thread = threading.Thread(target=self._server.serve_forever, name="test-idp", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self.stop_trickling.set()
            self._server.shutdown()
            self._server.server_close()
            thread.join()
