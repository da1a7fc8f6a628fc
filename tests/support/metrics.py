"""Scraping a test server's Prometheus endpoint, and reading one sample."""

from __future__ import annotations

import asyncio
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from service.app import Application


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


async def scrape(app: Application) -> str:
    assert app.metrics_server is not None
    return await asyncio.to_thread(_get, f"http://{app.metrics_server.address}/metrics")


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample (0 when it has not appeared yet)."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0
