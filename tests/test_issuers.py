"""Several issuers kept apart, and claims as providers write them
(flask_apiguard/layers/jwt/issuers.py)."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_apiguard import ApiGuard, ApiGuardConfigError, current_identity, roles, scopes

from .conftest import SECRET, bearer, problem
from .jwks_server import sign

A, B = "https://a.example", "https://b.example"


@pytest.fixture
def two_issuers(jwks_server: Any, rsa_key: Any, other_rsa_key: Any) -> Any:
    jwks_server.publish(("a1", rsa_key), path="/a/jwks")
    jwks_server.publish(("b1", other_rsa_key), path="/b/jwks")
    return jwks_server


def _issuers(server: Any, **extra: Any) -> list[dict[str, Any]]:
    return [
        {"issuer": A, "audience": "api", "jwks_url": server.url + "/a/jwks",
         "algorithms": ["RS256"], **extra},
        {"issuer": B, "audience": "api-b", "jwks_url": server.url + "/b/jwks",
         "algorithms": ["RS256"]},
    ]


def test_each_issuer_is_checked_with_its_own_keys_and_audience(
        make_app: Any, two_issuers: Any, rsa_key: Any, other_rsa_key: Any) -> None:
    app = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ISSUERS=_issuers(two_issuers))
    client = app.test_client()
    ok_a = sign(rsa_key, "a1", iss=A, aud="api")
    ok_b = sign(other_rsa_key, "b1", iss=B, aud="api-b")
    assert client.get("/private", headers=bearer(ok_a)).status_code == 200
    assert client.get("/private", headers=bearer(ok_b)).status_code == 200
    # A's audience on a B token, and the other way round
    assert client.get("/private", headers=bearer(
        sign(other_rsa_key, "b1", iss=B, aud="api"))).status_code == 401
    assert client.get("/private", headers=bearer(
        sign(rsa_key, "a1", iss=A, aud="api-b"))).status_code == 401


def test_a_token_signed_by_issuer_a_but_claiming_b_is_refused(
        make_app: Any, two_issuers: Any, rsa_key: Any) -> None:
    app = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ISSUERS=_issuers(two_issuers))
    for kid in ("a1", "b1"):  # A's key, naming A's kid or B's kid
        token = sign(rsa_key, kid, iss=B, aud="api-b")
        response = app.test_client().get("/private", headers=bearer(token))
        assert response.status_code == 401
        assert problem(response)["error"] == "invalid_token"


def test_an_unknown_issuer_is_refused_without_any_fetch(
        make_app: Any, two_issuers: Any, rsa_key: Any) -> None:
    app = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ISSUERS=_issuers(two_issuers),
                   APIGUARD_JWT_JWKS_REFETCH_COOLDOWN=1)
    hits = dict(two_issuers.hits)
    client = app.test_client()
    for claims in ({"iss": "https://c.example"}, {}):
        token = sign(rsa_key, "unknown-kid", aud="api", **claims)
        assert client.get("/private", headers=bearer(token)).status_code == 401
    assert dict(two_issuers.hits) == hits


def test_each_issuer_has_its_own_algorithms(make_app: Any, jwks_server: Any, rsa_key: Any,
                                            ec_key: Any) -> None:
    jwks_server.publish(("a1", rsa_key), ("e1", ec_key), path="/a/jwks")
    config = [{"issuer": A, "audience": "api", "jwks_url": jwks_server.url + "/a/jwks",
               "algorithms": ["ES256"]}]
    app = make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ISSUERS=config)
    client = app.test_client()
    assert client.get("/private", headers=bearer(
        sign(ec_key, "e1", alg="ES256", iss=A, aud="api"))).status_code == 200
    assert client.get("/private", headers=bearer(
        sign(rsa_key, "a1", iss=A, aud="api"))).status_code == 401


def test_the_apps_own_tokens_stay_trusted_beside_the_providers(
        make_app: Any, two_issuers: Any, rsa_key: Any) -> None:
    app = make_app(APIGUARD_JWT_ISSUER="https://self.example",
                   APIGUARD_JWT_ISSUERS=_issuers(two_issuers))
    client = app.test_client()
    with app.app_context():
        own = ApiGuard().issue_token("alice")
    assert client.get("/private", headers=bearer(own)).status_code == 200
    assert client.get("/private", headers=bearer(
        sign(rsa_key, "a1", iss=A, aud="api"))).status_code == 200


@pytest.mark.parametrize(("config", "message"), [
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "algorithms": ["RS256"]}]}, "either 'jwks_url'"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True, "jwks_url": "https://a/j",
                                "algorithms": ["RS256"]}]}, "not both"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True}]}, "expected a list"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True, "algorithms": ["HS256"]}]},
     "never HS"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True, "algorithms": ["RS256"],
                                "audiences": "x"}]}, "unknown field"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True, "algorithms": ["RS256"]}] * 2},
     "listed twice"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "jwks_url": "http://a.example/jwks",
                                "algorithms": ["RS256"]}]}, "https:// only"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True, "algorithms": ["RS256"]}],
      "APIGUARD_JWT_JWKS_URL": "https://a.example/jwks", "APIGUARD_JWT_ALGORITHMS": ["RS256"]},
     "put each provider"),
    ({"APIGUARD_JWT_ISSUERS": [{"issuer": A, "discovery": True, "algorithms": ["RS256"]}],
      "APIGUARD_JWT_SECRET": SECRET}, "APIGUARD_JWT_ISSUER: with APIGUARD_JWT_ISSUERS"),
])
def test_bad_issuer_lists_fail_at_start_up(make_app: Any, config: dict[str, Any],
                                           message: str) -> None:
    config.setdefault("APIGUARD_JWT_SECRET", None)
    with pytest.raises(ApiGuardConfigError, match=message):
        make_app(**config)


# -- claims as providers write them ---------------------------------------------------------------

def _claims_app(make_app: Any, url: str, **config: Any) -> Flask:
    app = make_app(init=False, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                   APIGUARD_JWT_JWKS_URL=url, APIGUARD_JWT_AUDIENCE="my-api", **config)

    @app.get("/admin")
    @roles("admin")
    def admin() -> Any:
        return {"roles": sorted(current_identity.roles), "scopes": sorted(current_identity.scopes)}

    @app.get("/notes")
    @scopes("read:notes")
    def notes() -> Any:
        return {"scopes": sorted(current_identity.scopes)}

    ApiGuard(app)
    return app


@pytest.mark.parametrize(("provider", "config", "claims", "want_roles", "want_scopes"), [
    ("keycloak-realm", {"APIGUARD_JWT_ROLES_CLAIM": "realm_access.roles"},
     {"realm_access": {"roles": ["admin", "offline_access"]}, "scope": "read:notes profile"},
     ["admin", "offline_access"], ["profile", "read:notes"]),
    ("keycloak-client", {"APIGUARD_JWT_ROLES_CLAIM": "resource_access.my-api.roles"},
     {"resource_access": {"my-api": {"roles": ["admin"]}, "account": {"roles": ["x"]}},
      "scope": "read:notes"}, ["admin"], ["read:notes"]),
    ("auth0", {"APIGUARD_JWT_ROLES_CLAIM": "https://example.com/roles",
               "APIGUARD_JWT_SCOPES_CLAIM": "permissions"},
     {"https://example.com/roles": ["admin"], "permissions": ["read:notes", "write:notes"],
      "scope": "openid"}, ["admin"], ["read:notes", "write:notes"]),
    ("entra-id", {"APIGUARD_JWT_SCOPES_CLAIM": "scp"},
     {"roles": ["admin"], "scp": "read:notes User.Read"}, ["admin"], ["User.Read", "read:notes"]),
    ("cognito", {"APIGUARD_JWT_ROLES_CLAIM": "cognito:groups"},
     {"cognito:groups": ["admin"], "scope": "read:notes"}, ["admin"], ["read:notes"]),
])
def test_provider_token_shapes(make_app: Any, jwks_server: Any, rsa_key: Any, provider: str,
                               config: dict[str, Any], claims: dict[str, Any],
                               want_roles: list[str], want_scopes: list[str]) -> None:
    jwks_server.publish(("k1", rsa_key))
    app = _claims_app(make_app, jwks_server.url + "/jwks", **config)
    client = app.test_client()
    token = bearer(sign(rsa_key, "k1", aud="my-api", **claims))
    response = client.get("/admin", headers=token)
    assert response.status_code == 200, (provider, response.data)
    assert response.json == {"roles": want_roles, "scopes": want_scopes}
    assert client.get("/notes", headers=token).status_code == 200


def test_a_role_string_is_one_role_and_a_missing_path_is_no_role(
        make_app: Any, jwks_server: Any, rsa_key: Any) -> None:
    jwks_server.publish(("k1", rsa_key))
    app = _claims_app(make_app, jwks_server.url + "/jwks",
                      APIGUARD_JWT_ROLES_CLAIM="realm_access.roles")
    client = app.test_client()
    one = sign(rsa_key, "k1", aud="my-api", realm_access={"roles": "admin"})
    assert client.get("/admin", headers=bearer(one)).json["roles"] == ["admin"]
    for claims in ({}, {"realm_access": "admin"}, {"realm_access": {"other": ["admin"]}}):
        token = sign(rsa_key, "k1", aud="my-api", **claims)
        assert client.get("/admin", headers=bearer(token)).status_code == 403
    bad = sign(rsa_key, "k1", aud="my-api", realm_access={"roles": {"admin": True}})
    assert client.get("/admin", headers=bearer(bad)).status_code == 401


def test_a_claim_path_whose_part_holds_a_dot(make_app: Any, jwks_server: Any,
                                             rsa_key: Any) -> None:
    jwks_server.publish(("k1", rsa_key))
    app = _claims_app(make_app, jwks_server.url + "/jwks",
                      APIGUARD_JWT_ROLES_CLAIM="resource_access.my.api.roles")
    token = sign(rsa_key, "k1", aud="my-api",
                 resource_access={"my.api": {"roles": ["admin"]}})
    assert app.test_client().get("/admin", headers=bearer(token)).status_code == 200


def test_per_issuer_claim_names(make_app: Any, two_issuers: Any, rsa_key: Any,
                                other_rsa_key: Any) -> None:
    issuers = _issuers(two_issuers, roles_claim="cognito:groups", scopes_claim="permissions")
    app = make_app(init=False, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ISSUERS=issuers)

    @app.get("/who")
    def who() -> Any:
        return {"roles": sorted(current_identity.roles), "scopes": sorted(current_identity.scopes)}

    ApiGuard(app)
    client = app.test_client()
    a = sign(rsa_key, "a1", iss=A, aud="api", permissions=["p"], **{"cognito:groups": ["g"]})
    b = sign(other_rsa_key, "b1", iss=B, aud="api-b", roles=["r"], scope="s t")
    assert client.get("/who", headers=bearer(a)).json == {"roles": ["g"], "scopes": ["p"]}
    assert client.get("/who", headers=bearer(b)).json == {"roles": ["r"], "scopes": ["s", "t"]}
