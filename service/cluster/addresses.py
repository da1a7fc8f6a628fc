"""The address a replica advertises to routing clients (``--advertise-address``)."""

from __future__ import annotations

import socket

# Hosts that bind every address, and so name none to reach.
WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]", "*"})


def advertised_address(*, listen: str, port: int, advertise: str = "") -> str:
    """``advertise`` when set; otherwise the listen address with the port
    actually bound (``--listen host:0`` binds any free one). A wildcard
    listen host (0.0.0.0, [::]) is no address to reach, so this host's name
    stands in for it."""
    if advertise:
        return advertise
    host = listen.rpartition(":")[0]
    if host in WILDCARD_HOSTS:
        host = socket.gethostname()
    return f"{host}:{port}"


def with_port(address: str, port: int) -> str:
    """``address`` (host:port) with another port: a process of several
    advertises the host it was given with a port of its own."""
    return f"{address.rpartition(':')[0]}:{port}"
