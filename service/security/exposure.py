"""Who can reach the server, and whether its settings are safe for them.

A server that listens only on loopback is reachable from its own machine;
any other address (``0.0.0.0``, ``[::]``, a host name, an interface's
address) may be reachable from the network. There, authentication off
means that anyone who can connect may submit, read and subscribe to
everything: the server refuses to start that way unless the operator says
``--insecure``. With authentication on but no TLS, credentials cross the
network in the clear: the server starts (a TLS-terminating proxy may be in
front) but warns. Anonymous callers may administer (forget, rewrap keys,
read the audit log) only with ``--anonymous-admin``, and only on loopback:
beyond it the server refuses that setting even with ``--insecure``, since
forgetting is irreversible and must take a principal the policy names.
The metrics port has no authentication at all: beyond loopback the server
warns (its figures name command types, refusal reasons and group names,
never a payload; a scraper on a private network is the usual setup).
Host names count as reachable even when they resolve to
loopback: what a name resolves to can change, and the safe answer must not.
"""

from __future__ import annotations

import ipaddress

from service.errors import ConfigurationError


def is_loopback(listen: str) -> bool:
    """Whether ``host:port`` binds loopback only (``127.0.0.0/8``, ``[::1]``,
    ``localhost``)."""
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(*, listen: str, auth: bool, tls: bool, insecure: bool, anonymous_admin: bool = False) -> list[str]:
    """Refuse (``INSECURE_LISTEN``) to serve beyond loopback with
    authentication off unless ``insecure``, and (``ANONYMOUS_ADMIN_EXPOSED``)
    with anonymous administrators at all; return the warnings the server
    should log about what it is about to do."""
    if is_loopback(listen):
        return []
    if anonymous_admin:
        raise ConfigurationError(
            f"refusing to listen on {listen} with --anonymous-admin: anyone who can reach it could forget"
            " aggregates irreversibly, rotate keys and read the audit log. --anonymous-admin is for a developer's"
            " own machine (listen on 127.0.0.1); elsewhere turn on --auth and grant admin in the policy",
            reason="ANONYMOUS_ADMIN_EXPOSED",
            metadata={"listen": listen},
        )
    if not auth and not insecure:
        raise ConfigurationError(
            f"refusing to listen on {listen} with authentication off: anyone who can reach it could submit,"
            " read and subscribe to everything. Turn on --auth (with --policy-file and a credential source,"
            " see docs/security.md), listen on 127.0.0.1, or pass --insecure (CHRONICLE_INSECURE=true)"
            " if the network itself keeps strangers out",
            reason="INSECURE_LISTEN",
            metadata={"listen": listen},
        )
    if not auth:
        return [
            f"--insecure: authentication is off and {listen} may be reachable from other machines:"
            " anyone there may submit, read and subscribe to everything"
        ]
    if not tls:
        return [
            f"authentication is on but {listen} serves plaintext beyond loopback: bearer tokens and API keys"
            " cross the network in the clear, where anyone on the path can read and replay them; serve TLS"
            " (--tls-cert-file, --tls-key-file) unless a TLS-terminating proxy in front is the only client"
        ]
    return []


def check_metrics_exposure(listen: str) -> list[str]:
    """The warning about Prometheus metrics served beyond loopback (none on
    loopback). They are read without credentials, wherever they listen."""
    if is_loopback(listen):
        return []
    return [
        f"metrics on {listen} may be reachable from other machines and need no credentials: anyone there reads"
        " the command types, refusal reasons, rates and subscription group names they count (never a payload);"
        " keep --metrics-listen on 127.0.0.1 or a network only your scraper reaches"
    ]
