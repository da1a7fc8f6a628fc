"""The HTTP server behind ``--metrics-listen``: prometheus_client's WSGI
app on a thread per connection, as ``start_http_server`` serves it, but
with every connection bounded.

``start_http_server`` waits for a request without a timeout and starts a
thread for every connection it accepts: each socket opened and left
silent held a thread and a file descriptor for as long as its client
kept it, without a cap (300 such sockets, 300 threads). Here a
connection gets ``REQUEST_SECONDS`` for each read of its request and
``MAX_CONNECTIONS`` are served at once; one more is closed as soon as it
is accepted. A scrape is one short request per connection (HTTP/1.0,
no keep-alive), so Prometheus never comes near either bound.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

# A scraper sends its whole request at once: a connection whose next bytes
# take longer is closed (the console's deadline, docs/console.md).
REQUEST_SECONDS = 10.0
# Scrapers at once: Prometheus servers, a person with curl. Beyond this a
# connection is closed as soon as it is accepted.
MAX_CONNECTIONS = 32
# The name of each connection's thread.
CONNECTION_THREAD = "metrics-connection"


class _BoundedHandler(WSGIRequestHandler):
    """One request, each read of it within ``timeout`` (set per server);
    nothing logged (a scrape every few seconds would fill the log)."""

    def handle(self) -> None:
        # A client silent past the timeout, or gone: its connection is closed.
        with contextlib.suppress(TimeoutError, ConnectionError):
            super().handle()

    def log_message(self, format: str, *args: object) -> None:
        pass


class _BoundedServer(WSGIServer):
    """A thread per connection, at most ``max_connections`` of them (set per
    server)."""

    max_connections = MAX_CONNECTIONS
    # The listen backlog (socketserver's default is 5): connections come in
    # faster than one thread accepts them and closes those beyond the cap.
    request_queue_size = 128

    def server_activate(self) -> None:
        super().server_activate()
        self._places = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        if not self._places.acquire(blocking=False):
            self.shutdown_request(request)
            return
        serving = threading.Thread(
            target=self._serve, args=(request, client_address), name=CONNECTION_THREAD, daemon=True
        )
        serving.start()

    def _serve(self, request: socket.socket, client_address: object) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:  # socketserver's own way: report it, keep serving
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self._places.release()


def start_scrape_server(
    host: str,
    port: int,
    registry: CollectorRegistry,
    *,
    request_seconds: float = REQUEST_SECONDS,
    max_connections: int = MAX_CONNECTIONS,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` at ``host:port`` on a thread of its own; raises
    OSError if it cannot bind."""
    # As start_http_server binds: the first address the host resolves to.
    family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    server_class = type(
        "ScrapeServer", (_BoundedServer,), {"address_family": family, "max_connections": max_connections}
    )
    handler_class = type("ScrapeHandler", (_BoundedHandler,), {"timeout": request_seconds})
    server: WSGIServer = make_server(
        str(address[0]), port, make_wsgi_app(registry), server_class, handler_class=handler_class
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    return server, thread
