"""IP networks: the compiled sets (:mod:`flask_apiguard.networks`), ``APIGUARD_IP_DENYLIST``
(refused before anything else) and ``@allow_networks`` (refused right after routing)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.views import MethodView

from flask_apiguard import ApiGuard, ApiGuardConfigError, allow_networks, public, signals
from flask_apiguard.networks import NetworkSet, intersection, parse_networks

from .conftest import bearer, problem, token_for

VPN = "10.8.0.0/16"


def networks(*cidrs: str) -> NetworkSet:
    return NetworkSet(parse_networks(list(cidrs), "test"))


# -- the sets -----------------------------------------------------------------------------------

@pytest.mark.parametrize("address, inside", [
    ("10.8.3.4", True),
    ("10.9.0.1", False),
    ("10.8.3.4:51234", True),          # a port some proxies append
    ("::ffff:10.8.0.9", True),         # IPv4-mapped IPv6
    ("2001:db8::1", True),
    ("[2001:db8::1]:443", True),
    ("2001:db9::1", False),
    ("192.0.2.7", True),               # a single address
    ("192.0.2.8", False),
    ("not-an-ip", False),
    ("", False),
    (None, False),
])
def test_network_set_lookup(address: Any, inside: bool) -> None:
    found = networks(VPN, "2001:db8::/32", "192.0.2.7")
    assert (address in found) is inside


def test_a_long_list_is_one_bisection_and_still_exact() -> None:
    many = networks(*(f"10.{a}.{b}.0/24" for a in range(0, 64, 2) for b in range(256)))
    assert "10.2.255.9" in many
    assert "10.3.0.1" not in many
    assert "10.62.7.7" in many


def test_overlapping_networks_merge() -> None:
    found = networks("10.0.0.0/8", "10.1.0.0/16", "11.0.0.0/8")
    assert "10.255.255.255" in found and "11.0.0.0" in found and "12.0.0.0" not in found


def test_ipv4_mapped_networks_match_ipv4_clients() -> None:
    assert "10.8.1.1" in networks("::ffff:10.8.0.0/112")


def test_intersection_of_levels_is_exact() -> None:
    both = intersection([networks("10.0.0.0/8", "192.168.0.0/16"),
                         networks("10.8.0.0/16", "172.16.0.0/12")])
    assert both is not None
    assert both.texts() == ["10.8.0.0/16"]
    assert intersection([]) is None


@pytest.mark.parametrize("value", [["10.0.0.0/33"], ["10.0.0.1/8"], ["bogus"], [42], 7])
def test_bad_networks_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="test"):
        parse_networks(value, "test")


# -- APIGUARD_IP_DENYLIST ----------------------------------------------------------------------

def denylist_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    return make_app(APIGUARD_IP_DENYLIST=["203.0.113.0/24", "2001:db8:bad::/48"], **config)


@pytest.mark.parametrize("path", ["/health", "/private", "/nope"])
def test_denylisted_clients_get_403_everywhere(make_app: Any, path: str) -> None:
    app = denylist_app(make_app)
    response = app.test_client().get(path, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert response.status_code == 403
    assert problem(response)["error"] == "forbidden"
    assert response.headers["X-Request-ID"]


def test_the_denylist_refuses_before_any_credential_is_read(make_app: Any) -> None:
    app = denylist_app(make_app)
    client = app.test_client()
    failures: list[Any] = []
    signals.auth_failed.connect(lambda sender, **kw: failures.append(kw), app, weak=False)
    for _ in range(3):
        response = client.get("/private", headers=bearer("bad.token.here"),
                              environ_base={"REMOTE_ADDR": "2001:db8:bad::5"})
        assert response.status_code == 403
    assert failures == []
    # a valid token changes nothing either, and over plain HTTP there is no redirect first
    good = bearer(token_for(app))
    assert client.get("/private", headers=good, base_url="http://localhost",
                      environ_base={"REMOTE_ADDR": "203.0.113.1"}).status_code == 403


def test_the_denylist_uses_the_trusted_client_address(make_app: Any) -> None:
    app = denylist_app(make_app, APIGUARD_TRUSTED_PROXIES=1)
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "192.0.2.1"}
    assert client.get("/health", environ_base=proxy,
                      headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 403
    # a client that writes a denylisted address before its own is judged by its own
    assert client.get("/health", environ_base=proxy,
                      headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.4"}).status_code == 200


def test_others_pass_the_denylist(make_app: Any) -> None:
    app = denylist_app(make_app)
    assert app.test_client().get("/health", environ_base={"REMOTE_ADDR": "198.51.100.4"}
                                 ).status_code == 200


@pytest.mark.parametrize("key", ["APIGUARD_IP_DENYLIST", "APIGUARD_RATELIMIT_EXEMPT_NETWORKS"])
@pytest.mark.parametrize("value", [["10.0.0.0/33"], ["10.0.0.1/8"], "nonsense", [None], 3])
def test_a_bad_network_is_refused_at_start_up(make_app: Any, key: str, value: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match=key):
        make_app(**{key: value})


def test_networks_accept_a_comma_separated_string(make_app: Any) -> None:
    app = make_app(APIGUARD_IP_DENYLIST="203.0.113.0/24, 198.51.100.0/24")
    assert app.test_client().get("/health", environ_base={"REMOTE_ADDR": "198.51.100.1"}
                                 ).status_code == 403


# -- @allow_networks ---------------------------------------------------------------------------

def admin_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    app = make_app(init=False, **config)

    @app.get("/admin")
    @allow_networks(VPN, "fd00::/8")
    def admin() -> Any:
        return {"ok": True}

    @app.get("/status")
    @public
    @allow_networks("127.0.0.1")
    def status() -> Any:
        return {"ok": True}

    @allow_networks("10.0.0.0/8")
    class Reports(MethodView):
        @public
        def get(self) -> Any:
            return {"ok": True}

        @public
        @allow_networks("10.8.1.0/24")
        def post(self) -> Any:
            return {"ok": True}

    app.add_url_rule("/reports", view_func=Reports.as_view("reports"))
    ApiGuard(app)
    return app


def test_allow_networks_admits_its_networks_only(make_app: Any) -> None:
    app = admin_app(make_app)
    client = app.test_client()
    token = bearer(token_for(app))
    assert client.get("/admin", headers=token,
                      environ_base={"REMOTE_ADDR": "10.8.0.5"}).status_code == 200
    assert client.get("/admin", headers=token,
                      environ_base={"REMOTE_ADDR": "fd12::1"}).status_code == 200
    refused = client.get("/admin", headers=token, environ_base={"REMOTE_ADDR": "10.9.0.5"})
    assert refused.status_code == 403
    assert problem(refused)["error"] == "forbidden"
    assert client.get("/status").status_code == 200  # the test client is 127.0.0.1


def test_allow_networks_refuses_before_authentication(make_app: Any) -> None:
    # outsiders learn nothing about the credentials the view wants, and are not counted
    app = admin_app(make_app, APIGUARD_AUTH_FAILURE_LIMIT="1/minute")
    client = app.test_client()
    outside = {"REMOTE_ADDR": "198.51.100.4"}
    for _ in range(3):
        response = client.get("/admin", environ_base=outside, headers=bearer("bad.to.ken"))
        assert response.status_code == 403
        assert "WWW-Authenticate" not in response.headers
    # the 403 was not a credential failure: the same client's good token still works elsewhere
    assert client.get("/private", environ_base=outside,
                      headers=bearer(token_for(app))).status_code == 200


def test_allow_networks_on_a_class_and_its_method_both_apply(make_app: Any) -> None:
    app = admin_app(make_app)
    client = app.test_client()
    assert client.get("/reports", environ_base={"REMOTE_ADDR": "10.200.0.1"}).status_code == 200
    assert client.get("/reports", environ_base={"REMOTE_ADDR": "11.0.0.1"}).status_code == 403
    assert client.post("/reports", environ_base={"REMOTE_ADDR": "10.8.1.7"}).status_code == 200
    assert client.post("/reports", environ_base={"REMOTE_ADDR": "10.200.0.1"}).status_code == 403


def test_allow_networks_ignores_a_forged_forwarded_for(make_app: Any) -> None:
    app = admin_app(make_app)
    response = app.test_client().get("/status", environ_base={"REMOTE_ADDR": "198.51.100.4"},
                                     headers={"X-Forwarded-For": "127.0.0.1"})
    assert response.status_code == 403


def test_unknown_paths_stay_404_for_outsiders(make_app: Any) -> None:
    app = admin_app(make_app)
    assert app.test_client().get("/nope", environ_base={"REMOTE_ADDR": "198.51.100.4"}
                                 ).status_code == 404


@pytest.mark.parametrize("cidrs", [(), ("10.0.0.0/33",), ("10.0.0.1/8",), ("vpn",), (10,)])
def test_bad_allow_networks_fail_at_import(cidrs: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError):
        allow_networks(*cidrs)


def test_allow_networks_twice_on_one_view_fails_at_import() -> None:
    def view() -> None: ...

    with pytest.raises(TypeError, match="declared twice"):
        allow_networks("10.0.0.0/8")(allow_networks("192.168.0.0/16")(view))
