"""The console's small parts on their own: escaping, the SVG charts, the
load's percentiles and rates from histogram buckets, sessions that go idle."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.console.charts import Series, line_chart, nice_maximum
from service.console.html import Html, escape, page, table, tag
from service.console.http import HttpServer, Request, Response
from service.console.load import LoadSampler, quantile
from service.console.server import check_console_exposure
from service.console.sessions import Sessions
from service.errors import ConfigurationError, Unauthenticated
from service.security.credentials import ApiKeyEntry, ApiKeys, Authenticator, hash_api_key
from tests.support.http import request

HOSTILE = "<script>alert(1)</script>\"'&"


def test_text_is_escaped_everywhere_it_can_go() -> None:
    built = tag("td", HOSTILE, title=HOSTILE)
    assert "<script>" not in built
    assert built == (
        '<td title="&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;">'
        "&lt;script&gt;alert(1)&lt;/script&gt;&quot;&#x27;&amp;</td>"
    )
    assert escape(Html("<b>kept</b>")) == "<b>kept</b>"  # markup built by the module stays markup
    assert "<script>" not in table([HOSTILE], [[HOSTILE]])
    whole = page(HOSTILE, HOSTILE, principal=HOSTILE, csrf_token=HOSTILE)
    assert whole.count("<script") == 0


def test_a_chart_draws_each_series_and_leaves_gaps_where_samples_are_missing() -> None:
    chart = line_chart(
        "Commands <b>",
        [Series("ok", [None, 1.0, 2.0, None, 3.0, 4.0]), Series("refused", [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])],
        unit="per second",
        span_label="-1 min",
    )
    assert chart.count("<polyline") == 3  # two runs of the first series, one of the second
    assert "Commands &lt;b&gt;" in chart and "<b>" not in chart
    assert re.search(r'<text[^>]*text-anchor="end">5</text>', chart)  # the axis tops at a round 5


@pytest.mark.parametrize(("peak", "top"), [(0, 1), (0.7, 1), (3, 5), (12, 20), (240, 250), (1000, 1000)])
def test_axis_maxima_are_round(peak: float, top: float) -> None:
    assert nice_maximum(peak) == top


def test_quantiles_interpolate_within_their_bucket() -> None:
    buckets = [(0.01, 50.0), (0.1, 90.0), (1.0, 100.0), (float("inf"), 100.0)]
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.7, buckets) == pytest.approx(0.01 + 0.09 * 0.5)
    assert quantile(0.95, buckets) == pytest.approx(0.1 + 0.9 * 0.5)
    assert quantile(0.5, [(0.01, 0.0), (float("inf"), 0.0)]) is None
    assert quantile(0.99, [(0.01, 0.0), (float("inf"), 4.0)]) == 0.01  # beyond the last bound: its edge


def test_the_sampler_reports_what_changed_between_readings() -> None:
    registry = CollectorRegistry()
    commands = Counter("chronicle_commands", "", ["command_type", "outcome"], registry=registry)
    refusals = Counter("chronicle_command_refusals", "", ["reason"], registry=registry)
    durations = Histogram(
        "chronicle_command_duration_seconds", "", ["command_type"], buckets=(0.01, 0.1), registry=registry
    )
    now = [0.0]
    commands.labels("a", "ok").inc(100)  # before the sampler: not counted
    sampler = LoadSampler(registry, interval=2.0, window=10.0, clock=lambda: now[0])
    now[0] = 2.0
    commands.labels("a", "ok").inc(6)
    commands.labels("b", "failed_precondition").inc(2)
    refusals.labels("INSUFFICIENT_FUNDS").inc(2)
    for value in (0.005, 0.005, 0.05, 0.05):
        durations.labels("a").observe(value)
    sample = sampler.sample()
    assert sample.commands_per_second == 4.0
    assert sample.refusals == {"INSUFFICIENT_FUNDS": 2.0} and sample.refusals_per_second == 1.0
    assert sample.p50 == pytest.approx(0.01) and sample.p99 == pytest.approx(0.01 + 0.09 * 0.98)
    now[0] = 4.0
    quiet = sampler.sample()
    assert (quiet.commands_per_second, quiet.p50, quiet.refusals) == (0.0, None, {})
    for _ in range(10):
        sampler.sample()
    assert len(sampler.samples) == 5  # the window's worth


def _authenticator(key: str) -> Authenticator:
    return Authenticator(api_keys=ApiKeys({hash_api_key(key): ApiKeyEntry("ann", frozenset())}))


def test_sessions_hold_opaque_ids_and_end_when_idle() -> None:
    now = [0.0]
    sessions = Sessions(_authenticator("k" * 20), idle_seconds=60, clock=lambda: now[0])
    session_id, principal = sessions.log_in("k" * 20)
    assert principal.name == "ann" and "k" * 20 not in session_id and len(session_id) >= 43
    now[0] = 59
    found = sessions.find(session_id)
    assert found is not None and found.principal == principal and found.csrf_token
    now[0] = 59 + 61
    assert sessions.find(session_id) is None
    assert sessions.find("made-up") is None
    with pytest.raises(Unauthenticated):
        sessions.log_in("wrong")


def test_the_oldest_session_goes_when_there_are_too_many() -> None:
    now = [0.0]
    sessions = Sessions(_authenticator("k" * 20), max_sessions=2, clock=lambda: now[0])
    first, _ = sessions.log_in("k" * 20)
    now[0] = 1
    second, _ = sessions.log_in("k" * 20)
    now[0] = 2
    third, _ = sessions.log_in("k" * 20)
    assert sessions.find(first) is None
    assert sessions.find(second) is not None and sessions.find(third) is not None


def test_the_console_beyond_loopback_needs_auth_and_warns_without_tls() -> None:
    assert check_console_exposure(listen="127.0.0.1:8080", auth=False, tls=False) == []
    with pytest.raises(ConfigurationError) as refused:
        check_console_exposure(listen="0.0.0.0:8080", auth=False, tls=False)
    assert refused.value.reason == "INSECURE_LISTEN"
    (warning,) = check_console_exposure(listen="0.0.0.0:8080", auth=True, tls=False)
    assert "plaintext" in warning
    assert check_console_exposure(listen="0.0.0.0:8080", auth=True, tls=True) == []


def test_an_anonymous_console_at_a_path_prefix_or_a_public_origin_is_warned_about() -> None:
    """A path prefix or a public origin means a reverse proxy, which may
    forward the console's loopback address as the Host and so get past the
    loopback-only answer."""
    (warning,) = check_console_exposure(listen="127.0.0.1:8080", auth=False, tls=False, path_prefix="/chronicle")
    assert "at /chronicle" in warning and "--auth" in warning
    origin = "https://ops.example.com"
    (warning,) = check_console_exposure(listen="127.0.0.1:8080", auth=False, tls=False, public_origin=origin)
    assert f"as {origin}" in warning and "--auth" in warning
    assert check_console_exposure(listen="127.0.0.1:8080", auth=True, tls=False, public_origin=origin) == []
    assert check_console_exposure(listen="127.0.0.1:8080", auth=True, tls=False, path_prefix="/chronicle") == []
    assert check_console_exposure(listen="127.0.0.1:8080", auth=False, tls=False) == []


async def test_connections_beyond_the_limit_are_refused_until_one_ends() -> None:
    held = asyncio.Event()

    async def handler(request: Request) -> Response:
        async def stream() -> AsyncIterator[bytes]:
            yield b"open"
            await held.wait()

        return Response(200, stream=stream())

    server = HttpServer(handler, max_connections=1)
    await server.start("127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await reader.readuntil(b"open")).startswith(b"HTTP/1.1 200 OK")
        refused = await request(f"127.0.0.1:{server.port}", "GET", "/")
        assert refused.status == 503 and refused.header("retry-after") == "5"
        held.set()
        await reader.read()
        writer.close()
        answered = await request(f"127.0.0.1:{server.port}", "GET", "/")
        assert answered.status == 200
    finally:
        held.set()
        await server.stop()
