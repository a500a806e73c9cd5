"""The trusted-host allow-list, Django-style."""

from __future__ import annotations

from typing import Any

import pytest

from flask_apiguard.layers.hosts import split_host

from .conftest import problem


@pytest.fixture
def hosts_app(make_app: Any) -> Any:
    return make_app(APIGUARD_TRUSTED_HOSTS=["api.example.com", ".example.org"])


@pytest.mark.parametrize("host", ["api.example.com", "API.example.com:8443", "example.org",
                                  "deep.sub.example.org", "api.example.com."])
def test_allowed_hosts(hosts_app: Any, host: str) -> None:
    response = hosts_app.test_client().get("/health", headers={"Host": host})
    assert response.status_code == 200, host


@pytest.mark.parametrize("host", ["evil.com", "api.example.com.evil.com", "xexample.org",
                                  "api.example.com:80:80", "api.example.com@evil.com",
                                  "[::1", "exa mple.org", ""])
def test_refused_hosts(hosts_app: Any, host: str) -> None:
    response = hosts_app.test_client().get("/health", headers={"Host": host})
    assert response.status_code == 400, host
    assert problem(response)["error"] == "invalid_host"


def test_host_check_applies_to_unknown_paths_before_routing(hosts_app: Any) -> None:
    response = hosts_app.test_client().get("/nope", headers={"Host": "evil.com"})
    assert problem(response)["error"] == "invalid_host"


def test_wildcard(make_app: Any) -> None:
    app = make_app(APIGUARD_TRUSTED_HOSTS=["*"])
    assert app.test_client().get("/health", headers={"Host": "anything.test"}).status_code == 200


def test_forwarded_host_checked_only_behind_trusted_proxies(make_app: Any) -> None:
    untrusted = make_app(APIGUARD_TRUSTED_HOSTS=["api.example.com"])
    response = untrusted.test_client().get(
        "/health", headers={"Host": "api.example.com", "X-Forwarded-Host": "evil.com"})
    assert response.status_code == 200  # the header is not believed
    proxied = make_app(APIGUARD_TRUSTED_HOSTS=["api.example.com"], APIGUARD_TRUSTED_PROXIES=1)
    client = proxied.test_client()
    bad = client.get("/health", headers={"Host": "internal:8000", "X-Forwarded-Host": "evil.com",
                                         "X-Forwarded-Proto": "https"})
    assert problem(bad)["error"] == "invalid_host"
    good = client.get("/health", headers={"Host": "internal:8000",
                                          "X-Forwarded-Host": "api.example.com",
                                          "X-Forwarded-Proto": "https"})
    assert good.status_code == 200


def test_split_host() -> None:
    assert split_host("Example.COM:443") == "example.com"
    assert split_host("[::1]:8080") == "[::1]"
    assert split_host("bad_host") is None
    assert split_host("host:port") is None
