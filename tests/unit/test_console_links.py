"""Which consoles a page links to (service/console/consoles.py): a link
only to a console an operator's browser on another machine can open; a
loopback or wildcard address, or anything but an http(s) URL, as text."""

from __future__ import annotations

import pytest

from service.console import views
from service.console.consoles import console_of, console_url, reachable_from_elsewhere


@pytest.mark.parametrize(
    ("bound", "https", "api", "expected"),
    [
        ("10.0.0.5:8080", False, "10.0.0.5:50051", "http://10.0.0.5:8080"),
        ("0.0.0.0:8443", True, "chronicle-2.internal:50051", "https://chronicle-2.internal:8443"),
        ("[::]:8080", False, "[fd00::2]:50051", "http://[fd00::2]:8080"),
        ("127.0.0.1:8080", False, "chronicle-2.internal:50051", "http://127.0.0.1:8080"),  # as bound
    ],
)
def test_a_console_is_advertised_at_its_bound_host_or_for_a_wildcard_at_the_replicas_host(
    bound: str, https: bool, api: str, expected: str
) -> None:
    assert console_url(bound=bound, https=https, api_address=api) == expected


@pytest.mark.parametrize(
    ("url", "link"),
    [
        ("http://10.0.0.5:8080", True),
        ("https://chronicle-2.internal:8443", True),
        ("http://[fd00::2]:8080", True),
        ("http://127.0.0.1:8080", False),
        ("http://127.3.4.5:8080", False),
        ("http://[::1]:8080", False),
        ("http://localhost:8080", False),
        ("http://0.0.0.0:8080", False),
        ("http://[::]:8080", False),
        ("javascript:alert(1)", False),
        ("http://10.0.0.5:port", False),
        ("", False),
    ],
)
def test_a_page_links_only_to_a_console_a_browser_elsewhere_can_open(url: str, link: bool) -> None:
    assert reachable_from_elsewhere(url) is link
    shown = str(console_of(url))
    assert ("<a " in shown) is link
    if url and not link:
        assert shown == f'<span class="console-local">console on {url} (from that machine only)</span>'


@pytest.mark.parametrize(("left", "shown"), [(1.25, "1.2 s"), (0.0, "lapsed"), (-3.0, "lapsed"), (None, "—")])
def test_a_lease_past_its_expiry_shows_as_lapsed_not_as_a_negative_time(left: float | None, shown: str) -> None:
    """The Cluster page counts the store's expiries down from this replica's
    last heartbeat: one that could not reach the store since shows them lapsed."""
    assert views._lapse(left) == shown
