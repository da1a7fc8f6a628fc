"""The console's URL a replica advertises with its lease membership (and
ClusterService's ``Member.console_address``), and how another replica's
console shows it: a link only where an operator's browser elsewhere can
follow it.

A console bound to a wildcard host (``0.0.0.0``, ``[::]``) is advertised
with the host of the replica's API address (``--advertise-address``, or
the machine's name), as the API itself is. One bound to loopback
(``127.0.0.1``, ``[::1]``, ``localhost``) is advertised as it is, but
shown as text, not as a link: from the operator's browser that address is
the operator's own machine, not the replica's (an SSH tunnel to that
replica is the way in)."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from service.cluster.addresses import WILDCARD_HOSTS
from service.console.html import Content, link, tag


def console_url(*, bound: str, https: bool, api_address: str) -> str:
    """The URL of a console bound to ``bound`` (host:port, its port the one
    bound), served over HTTPS or not, of a replica whose API clients reach
    at ``api_address``."""
    host, _, port = bound.rpartition(":")
    if host in WILDCARD_HOSTS:
        host = api_address.rpartition(":")[0]
    return f"{'https' if https else 'http'}://{host}:{port}"


def reachable_from_elsewhere(url: str) -> bool:
    """Whether ``url`` is a console another machine's browser can open: an
    http(s) URL whose host is neither loopback nor a wildcard."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 (a port that is no number raises)
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not host or host == "localhost" or host in WILDCARD_HOSTS:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return True  # a name: the operator's resolver decides
    return not (address.is_loopback or address.is_unspecified)


def console_of(url: str) -> Content:
    """Another replica's console on a page: a link when a browser elsewhere
    can follow it, else its address as text (saying why), nothing when it
    serves none."""
    if not url:
        return ""
    if reachable_from_elsewhere(url):
        return link(url, "its console", class_="console-link", rel="noopener noreferrer")
    return tag("span", f"console on {url} (from that machine only)", class_="console-local")
