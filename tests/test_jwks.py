"""Keys that follow an identity provider (flask_apiguard/layers/jwt/remote.py): fetched at
start-up, cached for the TTL, refetched on an unknown kid once per cooldown, single-flight,
the last good keys kept, and fetched carefully. The provider is a real HTTP server on loopback
(tests/jwks_server.py); tests/test_oidc_provider.py runs the same against npm's oidc-provider."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from flask_apiguard import ApiGuardConfigError
from flask_apiguard.layers.jwt import remote
from flask_apiguard.state import guard_state

from .conftest import bearer, free_port, problem, provider_config
from .jwks_server import jwks_of, sign


def _source(app: Any) -> remote.KeySource:
    (source,) = guard_state(app).jwt.sources
    return source


@pytest.fixture
def provider(jwks_server: Any, rsa_key: Any) -> Any:
    jwks_server.publish(("k1", rsa_key))
    return jwks_server


def test_a_token_signed_by_a_published_key_is_accepted(make_app: Any, provider: Any,
                                                       rsa_key: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks"))
    assert provider.hits["/jwks"] == 1  # fetched at start-up
    response = app.test_client().get("/private", headers=bearer(sign(rsa_key, "k1")))
    assert response.status_code == 200, response.data
    assert response.json == {"subject": "client-1", "method": "jwt"}


def test_a_known_kid_costs_no_fetch(make_app: Any, provider: Any, rsa_key: Any,
                                    provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks"))
    client = app.test_client()
    for n in range(50):
        token = sign(rsa_key, "k1", sub=f"user-{n}")
        assert client.get("/private", headers=bearer(token)).status_code == 200
    assert provider.hits["/jwks"] == 1


def test_an_unknown_kid_refetches_once_per_cooldown(make_app: Any, provider: Any, rsa_key: Any,
                                                    other_rsa_key: Any, provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks"))
    client = app.test_client()
    provider.publish(("k1", rsa_key), ("k2", other_rsa_key))  # the provider adds a key
    new = sign(other_rsa_key, "k2")
    # within the cooldown after the start-up fetch: no fetch, refused
    assert client.get("/private", headers=bearer(new)).status_code == 401
    assert provider.hits["/jwks"] == 1
    provider_clock.advance(31)
    assert client.get("/private", headers=bearer(new)).status_code == 200
    assert provider.hits["/jwks"] == 2  # exactly one refetch


def test_an_unknown_kid_flood_fetches_at_most_once_per_cooldown(
        make_app: Any, provider: Any, rsa_key: Any, provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks", APIGUARD_AUTH_FAILURE_LIMIT=None,
                                     APIGUARD_RATELIMIT_DEFAULT=None))
    client = app.test_client()
    provider_clock.advance(31)
    valid = bearer(sign(rsa_key, "k1"))
    for n in range(1000):
        response = client.get("/private", headers=bearer(sign(rsa_key, f"made-up-{n}")))
        assert response.status_code == 401
        if n % 100 == 0:
            assert client.get("/private", headers=valid).status_code == 200
    assert provider.hits["/jwks"] == 2  # start-up, then one for the whole flood
    provider_clock.advance(31)
    client.get("/private", headers=bearer(sign(rsa_key, "made-up-again")))
    assert provider.hits["/jwks"] == 3


def test_concurrent_unknown_kids_make_one_fetch(make_app: Any, provider: Any, rsa_key: Any,
                                                other_rsa_key: Any, provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks", APIGUARD_AUTH_FAILURE_LIMIT=None,
                                     APIGUARD_RATELIMIT_DEFAULT=None))
    provider.publish(("k1", rsa_key), ("k2", other_rsa_key), delay=0.5)
    provider_clock.advance(31)
    token = bearer(sign(other_rsa_key, "k2"))
    statuses: list[int] = []

    def call() -> None:
        statuses.append(app.test_client().get("/private", headers=token).status_code)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 8  # the others waited for the one fetch
    assert provider.hits["/jwks"] == 2


def test_a_valid_request_never_waits_for_a_refresh(make_app: Any, provider: Any, rsa_key: Any,
                                                   provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks", APIGUARD_JWT_CACHE_SIZE=0))
    client = app.test_client()
    provider.publish(("k1", rsa_key), delay=1.5)  # a slow provider
    provider_clock.advance(601)  # past the TTL
    token = bearer(sign(rsa_key, "k1"))
    started = time.perf_counter()
    for _ in range(5):
        assert client.get("/private", headers=token).status_code == 200
    assert time.perf_counter() - started < 1.0
    deadline = time.monotonic() + 5
    while provider.hits["/jwks"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert provider.hits["/jwks"] == 2  # one background refresh, not five


def test_a_failed_refresh_keeps_the_last_good_keys(make_app: Any, provider: Any, rsa_key: Any,
                                                   provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks", APIGUARD_JWT_CACHE_SIZE=0))
    client = app.test_client()
    provider.answer("/jwks", {"error": "down"}, status=500)
    provider_clock.advance(601)
    token = bearer(sign(rsa_key, "k1"))
    assert client.get("/private", headers=token).status_code == 200
    source = _source(app)
    _wait_for(lambda: source.last_error is not None)
    assert "HTTP 500" in (source.last_error or "")
    assert client.get("/private", headers=token).status_code == 200
    assert source.keys.keys() == {"k1"}


def test_a_removed_key_is_refused_once_the_cache_lets_it_go(
        make_app: Any, provider: Any, rsa_key: Any, other_rsa_key: Any,
        provider_clock: Any) -> None:
    app = make_app(**provider_config(provider.url + "/jwks"))
    client = app.test_client()
    old = bearer(sign(rsa_key, "k1"))
    assert client.get("/private", headers=old).status_code == 200  # now in the token cache too
    provider.publish(("k2", other_rsa_key))  # the provider retired k1
    assert client.get("/private", headers=old).status_code == 200  # cached keys, within the TTL
    provider_clock.advance(601)
    client.get("/private", headers=old)  # starts the background refresh
    _wait_for(lambda: "k2" in _source(app).keys)
    response = client.get("/private", headers=old)
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_token"
    assert client.get("/private", headers=bearer(sign(other_rsa_key, "k2"))).status_code == 200


@pytest.mark.parametrize(("cache_control", "ttl"), [
    ("public, max-age=120", 120.0),  # a shorter max-age wins
    ("max-age=5", 30.0),  # but never below 30 seconds
    ("max-age=86400", 600.0),  # and never above the configured TTL
    ("no-cache", 30.0),
    (None, 600.0),
])
def test_the_providers_max_age_shortens_the_ttl_within_bounds(
        make_app: Any, jwks_server: Any, rsa_key: Any, provider_clock: Any,
        cache_control: str | None, ttl: float) -> None:
    headers = {"Content-Type": "application/json"}
    if cache_control:
        headers["Cache-Control"] = cache_control
    jwks_server.publish(("k1", rsa_key), headers=headers)
    source = _source(make_app(**provider_config(jwks_server.url + "/jwks")))
    assert source.expires_at - provider_clock.now == ttl


def test_no_keys_ever_answers_503_and_recovers(make_app: Any, jwks_server: Any, rsa_key: Any,
                                               provider_clock: Any) -> None:
    jwks_server.answer("/jwks", {}, status=503)  # the provider is down at start-up
    app = make_app(**provider_config(jwks_server.url + "/jwks", APIGUARD_AUTH_FAILURE_LIMIT="2 per minute"))
    client = app.test_client()
    token = bearer(sign(rsa_key, "k1"))
    for _ in range(4):  # not counted as failed authentications: the client did nothing wrong
        response = client.get("/private", headers=token)
        assert response.status_code == 503
        assert problem(response)["error"] == "service_unavailable"
    assert client.get("/health").status_code == 200
    assert problem(client.get("/private"))["error"] == "unauthorized"
    assert jwks_server.hits["/jwks"] == 1  # the cooldown holds while it is down
    jwks_server.publish(("k1", rsa_key))  # the provider is back
    provider_clock.advance(31)
    assert client.get("/private", headers=token).status_code == 200


def test_a_provider_unreachable_at_start_up_is_reported(make_app: Any) -> None:
    app = make_app(**provider_config(f"http://127.0.0.1:{free_port()}/jwks"))
    result = app.test_cli_runner().invoke(args=["apiguard", "check", "--json"])
    assert result.exit_code == 1
    (finding,) = [f for f in json.loads(result.output) if f["id"] == "jwks-unavailable"]
    assert finding["severity"] == "high" and finding["key"] == "APIGUARD_JWT_JWKS_URL"
    assert "could not be reached" in finding["message"]


def test_a_discovery_document_naming_another_issuer_is_refused(
        make_app: Any, jwks_server: Any, rsa_key: Any, caplog: Any) -> None:
    issuer = jwks_server.url
    jwks_server.publish(("k1", rsa_key))
    jwks_server.answer("/.well-known/openid-configuration",
                       {"issuer": "https://evil.example", "jwks_uri": issuer + "/jwks"})
    with caplog.at_level("WARNING"):
        app = make_app(**provider_config(None, APIGUARD_JWT_OIDC_DISCOVERY=True,
                                         APIGUARD_JWT_ISSUER=issuer))
    assert jwks_server.hits["/jwks"] == 0
    assert "names the issuer 'https://evil.example'" in caplog.text
    response = app.test_client().get("/private", headers=bearer(sign(rsa_key, "k1", iss=issuer)))
    assert response.status_code == 503


def test_discovery_finds_the_jwks(make_app: Any, jwks_server: Any, rsa_key: Any) -> None:
    issuer = jwks_server.url
    jwks_server.publish(("k1", rsa_key), path="/keys")
    jwks_server.answer("/.well-known/openid-configuration",
                       {"issuer": issuer, "jwks_uri": issuer + "/keys"})
    app = make_app(**provider_config(None, APIGUARD_JWT_OIDC_DISCOVERY=True,
                                     APIGUARD_JWT_ISSUER=issuer))
    client = app.test_client()
    assert client.get("/private", headers=bearer(sign(rsa_key, "k1", iss=issuer))).status_code == 200
    assert client.get("/private", headers=bearer(sign(rsa_key, "k1", iss="other"))).status_code == 401


# -- fetching safely ------------------------------------------------------------------------------

def _fetch_error(jwks_server: Any, path: str = "/jwks") -> str:
    source = remote.KeySource(remote.SourceSettings(jwks_server.url + path, None, None,
                                                    ("RS256",), 600.0, 30.0))
    assert source.refresh() is False
    assert source.last_error is not None
    return source.last_error


def test_a_redirect_to_another_host_is_not_followed(jwks_server: Any, rsa_key: Any) -> None:
    jwks_server.publish(("k1", rsa_key))
    elsewhere = f"http://localhost:{jwks_server.port}/jwks"  # another host name
    jwks_server.answer("/moved", {}, status=302,
                       headers={"Location": elsewhere, "Content-Type": "application/json"})
    assert "another host" in _fetch_error(jwks_server, "/moved")
    assert jwks_server.hits["/jwks"] == 0


def test_a_redirect_on_the_same_host_is_followed(jwks_server: Any, rsa_key: Any) -> None:
    jwks_server.publish(("k1", rsa_key))
    jwks_server.answer("/moved", {}, status=301, headers={"Location": "/jwks"})
    source = remote.KeySource(remote.SourceSettings(jwks_server.url + "/moved", None, None,
                                                    ("RS256",), 600.0, 30.0))
    assert source.refresh() is True


def test_only_json_is_read(jwks_server: Any, rsa_key: Any) -> None:
    jwks_server.publish(("k1", rsa_key), headers={"Content-Type": "text/html"})
    assert "not JSON" in _fetch_error(jwks_server)


def test_a_document_over_the_size_cap_is_refused(jwks_server: Any) -> None:
    jwks_server.answer("/jwks", raw=b'{"keys": [], "pad": "' + b"x" * remote.MAX_DOCUMENT + b'"}')
    assert "more than" in _fetch_error(jwks_server)


def test_a_slow_provider_times_out(jwks_server: Any, rsa_key: Any) -> None:
    jwks_server.publish(("k1", rsa_key), delay=remote.TIMEOUT + 1)
    started = time.monotonic()
    assert "could not be reached" in _fetch_error(jwks_server)
    assert time.monotonic() - started < remote.TIMEOUT + 0.9


def test_keys_that_do_not_fit_the_algorithms_are_dropped(jwks_server: Any, rsa_key: Any,
                                                         ec_key: Any) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    document = jwks_of(("rsa", rsa_key), ("ec", ec_key), ("weak", weak))
    document["keys"] += [
        {"kty": "oct", "kid": "secret", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA"},
        {**document["keys"][0], "kid": "enc", "use": "enc"},
        {**document["keys"][0], "kid": "private", "d": "AQAB"},
        {k: v for k, v in document["keys"][0].items() if k != "kid"},
    ]
    jwks_server.answer("/jwks", document)
    source = remote.KeySource(remote.SourceSettings(jwks_server.url + "/jwks", None, None,
                                                    ("RS256",), 600.0, 30.0))
    assert source.refresh()
    assert set(source.keys) == {"rsa"}


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
def test_no_key_or_url_is_ever_taken_from_a_token(make_app: Any, provider: Any,
                                                  other_rsa_key: Any, header: str) -> None:
    import jwt

    from .jwks_server import public_jwk

    provider.publish(("k1", other_rsa_key), path="/evil")
    app = make_app(**provider_config(provider.url + "/jwks"))
    values = {"jku": provider.url + "/evil", "x5u": provider.url + "/evil",
              "jwk": public_jwk("k1", other_rsa_key), "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOC"]}
    token = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, other_rsa_key,
                       algorithm="RS256", headers={"kid": "k1", header: values[header]})
    assert app.test_client().get("/private", headers=bearer(token)).status_code == 401
    assert provider.hits["/evil"] == 0


@pytest.mark.parametrize(("config", "message"), [
    (provider_config("http://idp.example/jwks"), "https:// only"),
    (provider_config("file:///etc/passwd"), "https:// only"),
    (provider_config("https://idp.example/jwks", APIGUARD_JWT_ALGORITHMS=["HS256"]),
     "public keys"),
    (provider_config("https://idp.example/jwks", APIGUARD_JWT_OIDC_DISCOVERY=True),
     "not both"),
    (provider_config(None, APIGUARD_JWT_OIDC_DISCOVERY=True), "needs APIGUARD_JWT_ISSUER"),
    (provider_config("https://idp.example/jwks", APIGUARD_JWT_JWKS_CACHE_TTL=0),
     "at least 1"),
    (provider_config("https://idp.example/jwks", APIGUARD_JWT_JWKS_REFETCH_COOLDOWN="x"),
     "whole number"),
    ({"APIGUARD_JWKS_ROUTE": "jwks.json"}, "such as '/.well-known/jwks.json'"),
])
def test_bad_provider_settings_fail_at_start_up(make_app: Any, config: dict[str, Any],
                                                message: str) -> None:
    with pytest.raises(ApiGuardConfigError, match=message):
        make_app(**config)


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_provider_without_issuer_or_audience_is_reported(make_app: Any, provider: Any) -> None:
    from flask_apiguard.audit import findings

    app = make_app(**provider_config(provider.url + "/jwks"))
    ids = {f.id: f for f in findings(app, guard_state(app))}
    assert ids["provider-audience-unset"].severity == "medium"
    checked = make_app(**provider_config(provider.url + "/jwks", APIGUARD_JWT_ISSUER="i",
                                         APIGUARD_JWT_AUDIENCE="a"))
    assert "provider-audience-unset" not in {f.id for f in findings(checked, guard_state(checked))}


def test_a_provider_trickling_its_document_is_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    # The 2 s timeout was per read: a provider sending a byte every 0.25 s held the fetch (and
    # init_app, and the issuer's lock) for as long as it liked.
    import socket
    import threading
    import time as _time

    from flask_apiguard.layers.jwt import remote

    body = b'{"keys": []}' + b" " * 400
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)

    def serve() -> None:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        with conn:
            conn.recv(4096)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(body))
            for index in range(len(body)):
                try:
                    conn.sendall(body[index:index + 1])
                except OSError:
                    return
                _time.sleep(0.02)

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setattr(remote, "TIMEOUT", 0.3)  # whole body in 0.3 s (it needs 8 s)
    try:
        with pytest.raises(remote.FetchError, match="took more than"):
            remote.fetch_json(f"http://127.0.0.1:{server.getsockname()[1]}/jwks")
    finally:
        server.close()
