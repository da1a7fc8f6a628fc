"""Which listen addresses are beyond loopback, and what serving there needs."""

from __future__ import annotations

import pytest

from service.errors import ConfigurationError
from service.security.exposure import check_exposure, check_metrics_exposure, is_loopback


@pytest.mark.parametrize("listen", ["127.0.0.1:50051", "127.8.9.10:1", "[::1]:50051", "localhost:50051"])
def test_loopback_addresses(listen: str) -> None:
    assert is_loopback(listen)


@pytest.mark.parametrize(
    "listen",
    ["0.0.0.0:50051", "[::]:50051", "10.0.0.5:50051", "[fe80::1]:1", "chronicle.internal:50051", "localhost.:1"],
)
def test_addresses_beyond_loopback(listen: str) -> None:
    assert not is_loopback(listen)


def test_loopback_needs_nothing() -> None:
    assert check_exposure(listen="127.0.0.1:50051", auth=False, tls=False, insecure=False) == []


def test_beyond_loopback_authentication_off_is_refused() -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_exposure(listen="0.0.0.0:50051", auth=False, tls=False, insecure=False)
    assert refused.value.reason == "INSECURE_LISTEN"
    assert refused.value.metadata == {"listen": "0.0.0.0:50051"}


def test_insecure_is_allowed_with_a_warning() -> None:
    (warning,) = check_exposure(listen="0.0.0.0:50051", auth=False, tls=False, insecure=True)
    assert warning.startswith("--insecure: authentication is off")


def test_authentication_over_plaintext_beyond_loopback_is_allowed_with_a_warning() -> None:
    (warning,) = check_exposure(listen="0.0.0.0:50051", auth=True, tls=False, insecure=False)
    assert warning.startswith("authentication is on but 0.0.0.0:50051 serves plaintext beyond loopback")


def test_authentication_over_tls_beyond_loopback_needs_no_warning() -> None:
    assert check_exposure(listen="0.0.0.0:50051", auth=True, tls=True, insecure=False) == []


def test_authentication_over_plaintext_on_loopback_needs_no_warning() -> None:
    assert check_exposure(listen="127.0.0.1:50051", auth=True, tls=False, insecure=False) == []


@pytest.mark.parametrize("insecure", [False, True])
def test_anonymous_administrators_beyond_loopback_are_refused_even_with_insecure(insecure: bool) -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_exposure(listen="[::]:50051", auth=False, tls=False, insecure=insecure, anonymous_admin=True)
    assert refused.value.reason == "ANONYMOUS_ADMIN_EXPOSED"
    assert "forget" in refused.value.message


def test_anonymous_administrators_on_loopback_are_the_developers_choice() -> None:
    assert check_exposure(listen="localhost:50051", auth=False, tls=False, insecure=False, anonymous_admin=True) == []


@pytest.mark.parametrize("listen", ["127.0.0.1:9464", "[::1]:9464", "localhost:9464"])
def test_metrics_on_loopback_need_no_warning(listen: str) -> None:
    assert check_metrics_exposure(listen) == []


@pytest.mark.parametrize("listen", ["0.0.0.0:9464", "[::]:9464", "10.0.0.5:9464", "metrics.internal:9464"])
def test_metrics_beyond_loopback_are_served_with_a_warning(listen: str) -> None:
    [warning] = check_metrics_exposure(listen)
    assert listen in warning and "no credentials" in warning
