"""An exact CORS origin never becomes a regex; a wildcard in one is refused at start-up."""

from __future__ import annotations

from typing import Any

import pytest

from flask_apiguard import ApiGuardConfigError


def test_brackets_in_an_exact_origin_match_only_themselves(make_app: Any) -> None:
    app = make_app(APIGUARD_CORS_ORIGINS=["http://[::1]:3000"], APIGUARD_CORS_CREDENTIALS=True)
    client = app.test_client()
    ok = client.get("/health", headers={"Origin": "http://[::1]:3000"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://[::1]:3000"
    bad = client.get("/health", headers={"Origin": "http://1:3000.attacker.net"})
    assert "Access-Control-Allow-Origin" not in bad.headers


def test_a_wildcard_in_an_exact_origin_is_refused(make_app: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="wildcard needs a pattern"):
        make_app(APIGUARD_CORS_ORIGINS=["https://*.example.com"])
