"""HTTPS: plain GET/HEAD redirected with 301, other methods refused, HSTS only over HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import problem


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_plain_get_and_head_redirect(client: Any, method: str) -> None:
    response = client.open("/health?x=1", method=method, base_url="http://api.example.com")
    assert response.status_code == 301
    assert response.headers["Location"] == "https://api.example.com/health?x=1"
    assert "Strict-Transport-Security" not in response.headers
    assert response.headers["X-Request-ID"]


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_plain_other_methods_refused(client: Any, method: str) -> None:
    response = client.open("/echo", method=method, base_url="http://localhost")
    assert response.status_code == 403
    assert problem(response)["error"] == "https_required"


def test_unknown_paths_redirect_too(client: Any) -> None:
    assert client.get("/nope", base_url="http://localhost").status_code == 301


def test_raw_forwarded_proto_is_not_believed(client: Any) -> None:
    response = client.post("/echo", base_url="http://localhost",
                           headers={"X-Forwarded-Proto": "https"}, json={})
    assert problem(response)["error"] == "https_required"


def test_trusted_proxy_proto_is_believed(make_app: Any) -> None:
    app = make_app(APIGUARD_TRUSTED_PROXIES=1)
    response = app.test_client().get("/health", base_url="http://internal",
                                      headers={"X-Forwarded-Proto": "https"})
    assert response.status_code == 200
    assert response.headers["Strict-Transport-Security"].startswith("max-age=")


def test_force_https_off(make_app: Any) -> None:
    app = make_app(APIGUARD_FORCE_HTTPS=False)
    response = app.test_client().get("/health", base_url="http://localhost")
    assert response.status_code == 200
    assert "Strict-Transport-Security" not in response.headers
