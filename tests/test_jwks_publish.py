"""Publishing the app's own keys: ``guard.jwks()``, ``APIGUARD_JWKS_ROUTE``, and the rotation
walk-through of docs/identity-providers.rst between two apps over real HTTP."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from flask import Flask
from werkzeug.serving import make_server

from flask_apiguard import ApiGuard
from flask_apiguard.state import guard_state

from .conftest import bearer, private_pem, public_pem

_PRIVATE_MEMBERS = {"d", "p", "q", "dp", "dq", "qi"}


def _jwks(app: Flask) -> dict[str, Any]:
    with app.app_context():
        return ApiGuard().jwks()


def test_jwks_publishes_the_public_half_of_every_key(make_app: Any, rsa_key: Any,
                                                     ec_key: Any) -> None:
    app = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                   APIGUARD_JWT_KEYS={"r1": private_pem(rsa_key), "r2": public_pem(rsa_key)})
    document = _jwks(app)
    assert [k["kid"] for k in document["keys"]] == ["r1", "r2"]
    for jwk in document["keys"]:
        assert jwk["kty"] == "RSA" and jwk["use"] == "sig" and jwk["alg"] == "RS256"
        assert not _PRIVATE_MEMBERS & jwk.keys()
        assert jwt.PyJWK(jwk).key.public_numbers() == rsa_key.public_key().public_numbers()
    es = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["ES256"],
                  APIGUARD_JWT_PRIVATE_KEY=private_pem(ec_key))
    (jwk,) = _jwks(es)["keys"]
    assert jwk["kty"] == "EC" and jwk["alg"] == "ES256" and "d" not in jwk
    assert len(jwk["kid"]) == 43  # its RFC 7638 thumbprint


def test_an_hmac_secret_is_never_published(app: Flask) -> None:
    assert _jwks(app) == {"keys": []}


def test_the_jwks_route_is_public(make_app: Any, rsa_key: Any) -> None:
    app = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                   APIGUARD_JWT_KEYS={"r1": private_pem(rsa_key)},
                   APIGUARD_JWKS_ROUTE="/.well-known/jwks.json")
    response = app.test_client().get("/.well-known/jwks.json")
    assert response.status_code == 200
    assert response.mimetype == "application/jwk-set+json"
    assert response.headers["Cache-Control"] == "public, max-age=300"
    assert response.json == _jwks(app)
    assert make_app().test_client().get("/.well-known/jwks.json").status_code == 404


class _Deployments:
    """A WSGI server on loopback whose app can be replaced (a deploy)."""

    def __init__(self) -> None:
        self.app: Flask | None = None
        self.server = make_server("127.0.0.1", 0, self)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        assert self.app is not None
        return self.app(environ, start_response)


@pytest.fixture
def deployments() -> Iterator[_Deployments]:
    served = _Deployments()
    yield served
    served.server.shutdown()
    served.server.server_close()


def test_a_key_rotation_fails_no_request(make_app: Any, rsa_key: Any, other_rsa_key: Any,
                                         deployments: _Deployments, provider_clock: Any) -> None:
    def issuer(keys: dict[str, Any], signing: str) -> Flask:
        return make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                        APIGUARD_JWT_ISSUER="https://auth.example", APIGUARD_FORCE_HTTPS=False,
                        APIGUARD_JWT_KEYS={k: private_pem(v) for k, v in keys.items()},
                        APIGUARD_JWT_SIGNING_KEY_ID=signing, APIGUARD_JWKS_ROUTE="/jwks.json")

    deployments.app = issuer({"old": rsa_key}, "old")
    verifier = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                        APIGUARD_JWT_ISSUER="https://auth.example",
                        APIGUARD_JWT_JWKS_URL=deployments.url + "/jwks.json",
                        APIGUARD_RATELIMIT_DEFAULT=None)
    source = guard_state(verifier).jwt.sources[0]
    client = verifier.test_client()
    tokens: list[str] = []

    def traffic() -> None:
        """Every token issued so far, and a new one, are accepted."""
        with deployments.app.app_context():  # type: ignore[union-attr]
            tokens.append(ApiGuard().issue_token("alice", expires_in=3600))
        assert [client.get("/private", headers=bearer(t)).status_code for t in tokens] \
            == [200] * len(tokens)

    traffic()
    # 1. add the new key, still signing with the old one; deploy
    deployments.app = issuer({"old": rsa_key, "new": other_rsa_key}, "old")
    traffic()
    # 2. publish and wait: the verifiers' cached sets pass their TTL and refresh
    provider_clock.advance(301)  # the route's max-age
    traffic()
    _wait_for(lambda: set(source.keys) == {"old", "new"})
    # 3. switch the signing key; deploy
    deployments.app = issuer({"old": rsa_key, "new": other_rsa_key}, "new")
    traffic()
    assert jwt.get_unverified_header(tokens[-1])["kid"] == "new"
    # 4. once the old key's last token has expired, retire it
    old_tokens = [t for t in tokens if jwt.get_unverified_header(t)["kid"] == "old"]
    tokens[:] = [t for t in tokens if t not in old_tokens]
    deployments.app = issuer({"new": other_rsa_key}, "new")
    provider_clock.advance(301)
    traffic()
    _wait_for(lambda: set(source.keys) == {"new"})
    traffic()
    # an old token (had it not expired) is no longer accepted
    assert client.get("/private", headers=bearer(old_tokens[0])).status_code == 401


def _wait_for(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
