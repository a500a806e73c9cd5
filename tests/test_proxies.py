"""One hop count decides the client IP, the scheme and the host for every layer."""

from __future__ import annotations

from typing import Any

from flask import request

from flask_apiguard import ApiGuard, public
from flask_apiguard.layers.proxies import client_key


def proxied_app(make_app: Any, hops: int) -> Any:
    app = make_app(init=False, APIGUARD_TRUSTED_PROXIES=hops, APIGUARD_RATELIMIT_DEFAULT="2/minute")

    @app.get("/whoami")
    @public
    def whoami() -> Any:
        return {"ip": request.remote_addr, "secure": request.is_secure, "host": request.host}

    ApiGuard(app)
    return app


def test_zero_hops_believes_nothing(make_app: Any) -> None:
    client = proxied_app(make_app, 0).test_client()
    forged = {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "https",
              "X-Forwarded-Host": "evil.test", "Forwarded": "for=198.51.100.1;proto=https",
              "X-Real-IP": "198.51.100.2"}
    body = client.get("/whoami", base_url="http://localhost", headers=forged)
    # over plain HTTP the forged proto does not make the request HTTPS: still redirected
    assert body.status_code == 301
    # over HTTPS (the server's own TLS) the forged headers change nothing either; a forwarded
    # scheme header without a TLS socket is left to test_https.py
    del forged["X-Forwarded-Proto"]
    body = client.get("/whoami", headers=forged).get_json()
    assert body == {"ip": "127.0.0.1", "secure": True, "host": "localhost"}


def test_one_hop_uses_the_right_most_entry(make_app: Any) -> None:
    client = proxied_app(make_app, 1).test_client()
    body = client.get("/whoami", base_url="http://internal", headers={
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9", "X-Forwarded-Proto": "http, https",
        "X-Forwarded-Host": "evil.test, api.example.com",
    }).get_json()
    assert body == {"ip": "203.0.113.9", "secure": True, "host": "api.example.com"}


def test_two_hops(make_app: Any) -> None:
    client = proxied_app(make_app, 2).test_client()
    body = client.get("/whoami", base_url="http://internal", headers={
        "X-Forwarded-For": "6.6.6.6, 203.0.113.9, 10.0.0.2", "X-Forwarded-Proto": "https, https",
    }).get_json()
    assert body["ip"] == "203.0.113.9" and body["secure"] is True


def test_forged_forwarded_for_does_not_move_the_rate_limit_bucket(make_app: Any) -> None:
    client = proxied_app(make_app, 0).test_client()
    codes = [client.get("/whoami", headers={"X-Forwarded-For": f"10.0.0.{i}"}).status_code
             for i in range(3)]
    assert codes == [200, 200, 429]


def test_behind_one_proxy_a_client_prefix_cannot_escape_its_bucket(make_app: Any) -> None:
    client = proxied_app(make_app, 1).test_client()
    codes = [client.get("/whoami", headers={"X-Forwarded-For": f"1.1.1.{i}, 203.0.113.9",
                                           "X-Forwarded-Proto": "https"}).status_code
             for i in range(3)]
    assert codes == [200, 200, 429]


def test_client_key_groups_ipv6_by_64() -> None:
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key(None) == "unknown"
    assert client_key("garbage") == client_key("more garbage") == "invalid"  # one shared bucket
    assert client_key("203.0.113.7:50001") == client_key("203.0.113.7") == "203.0.113.7"
    assert client_key("[2001:db8::1]:443") == "2001:db8::/64"


def test_ipv6_clients_share_a_bucket_per_64(make_app: Any) -> None:
    app = proxied_app(make_app, 1)
    client = app.test_client()
    codes = [client.get("/whoami", headers={"X-Forwarded-For": f"2001:db8:0:1::{i:x}",
                                           "X-Forwarded-Proto": "https"}).status_code
             for i in range(1, 4)]
    assert codes == [200, 200, 429]
