"""JWT verification and issuing: algorithms, keys and rotation, claim checks, identity,
``issue_token``, revocation (in memory and shared through Redis) and the verified-token cache."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from flask import Flask
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from flask_apiguard import ApiGuard, ApiGuardConfigError, current_identity, require_jwt, roles

from .conftest import SECRET, bearer, private_pem, problem, public_pem, token_for

OTHER_SECRET = "Zq8Wm3Xr5Tn1Ys7Uv2Ko9Lp4Jh6Gf0Dd3Sa8Qe5Rw1Ty7Ui"


# -- keys ---------------------------------------------------------------------------------------



# -- apps and tokens ----------------------------------------------------------------------------

def identity_json() -> dict[str, Any]:
    return {
        "authenticated": current_identity.is_authenticated,
        "subject": current_identity.subject,
        "roles": sorted(current_identity.roles),
        "roles_is_frozenset": isinstance(current_identity.roles, frozenset),
        "scopes": sorted(current_identity.scopes),
        "scopes_is_frozenset": isinstance(current_identity.scopes, frozenset),
        "claims": dict(current_identity.claims),
        "method": current_identity.method,
        "key_id": current_identity.key_id,
    }


def jwt_app(make_app: Callable[..., Flask], **config: Any) -> Flask:
    """``make_app`` plus ``/me`` (``@require_jwt``), ``/maybe`` (optional) and ``/admin``."""
    app = make_app(init=False, **config)

    @app.get("/me")
    @require_jwt
    def me() -> Any:
        return identity_json()

    @app.get("/maybe")
    @require_jwt(optional=True)
    def maybe() -> Any:
        return identity_json()

    @app.get("/admin")
    @roles("admin")
    def admin() -> Any:
        return {"ok": True}

    ApiGuard(app)
    return app


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for a hand-made token; ``name=None`` drops a claim."""
    now = int(time.time())
    payload: dict[str, Any] = {"sub": "alice", "iat": now, "exp": now + 600,
                               "jti": uuid.uuid4().hex}
    payload.update(overrides)
    return {k: v for k, v in payload.items() if v is not None}


def sign(payload: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256",
         headers: dict[str, Any] | None = None) -> str:
    return jwt.encode(payload, key, algorithm=algorithm, headers=headers)


def refused(response: Any, error: str) -> dict[str, Any]:
    """A 401 problem with ``error`` and the matching ``WWW-Authenticate`` challenge."""
    assert response.status_code == 401, response.data[:300]
    body = problem(response)
    assert body["error"] == error
    challenge = response.headers["WWW-Authenticate"]
    if error == "unauthorized":
        assert challenge == "Bearer"
    else:
        assert challenge.startswith('Bearer error="invalid_token"')
    return body


def whoami(app: Flask, token: str, path: str = "/me") -> Any:
    return app.test_client().get(path, headers=bearer(token))


def revoke(app: Flask, token_or_jti: str) -> None:
    with app.app_context():
        ApiGuard().revoke_token(token_or_jti)


def unverified(token: str) -> dict[str, Any]:
    payload: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return payload


# -- algorithms ---------------------------------------------------------------------------------

def test_hs256_is_the_default(make_app: Any) -> None:
    app = jwt_app(make_app)
    token = token_for(app, "alice")
    assert jwt.get_unverified_header(token)["alg"] == "HS256"
    jwt.decode(token, SECRET, algorithms=["HS256"])  # really signed with the configured secret
    response = whoami(app, token)
    assert response.status_code == 200
    assert response.get_json()["subject"] == "alice"


def test_hs256_token_signed_with_another_secret_is_refused(make_app: Any) -> None:
    app = jwt_app(make_app)
    body = refused(whoami(app, sign(claims(), OTHER_SECRET)), "invalid_token")
    assert "signature" in body["detail"].lower()


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
def test_public_key_algorithms_issue_and_verify(
    make_app: Any, algorithm: str, rsa_key: Any, other_rsa_key: Any, ec_key: Any, ed_key: Any
) -> None:
    key = {"RS256": rsa_key, "PS256": rsa_key, "ES256": ec_key, "EdDSA": ed_key}[algorithm]
    stranger = {"RS256": other_rsa_key, "PS256": other_rsa_key,
                "ES256": ec.generate_private_key(ec.SECP256R1()),
                "EdDSA": ed25519.Ed25519PrivateKey.generate()}[algorithm]
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=[algorithm],
                  APIGUARD_JWT_PRIVATE_KEY=private_pem(key), APIGUARD_JWT_PUBLIC_KEY=public_pem(key))
    token = token_for(app, "alice")
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    jwt.decode(token, key.public_key(), algorithms=[algorithm])
    assert whoami(app, token).get_json()["subject"] == "alice"
    # a token made elsewhere with the same private key is accepted too
    assert whoami(app, sign(claims(sub="bob"), key, algorithm)).get_json()["subject"] == "bob"
    # one signed by a key of the same type that is not configured is not
    refused(whoami(app, sign(claims(), stranger, algorithm)), "invalid_token")
    # nor is an HS256 token, whatever its secret
    refused(whoami(app, sign(claims(), SECRET)), "invalid_token")


def test_public_key_only_config_verifies_tokens_signed_elsewhere(make_app: Any, rsa_key: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                  APIGUARD_JWT_PUBLIC_KEY=public_pem(rsa_key))
    response = whoami(app, sign(claims(sub="svc"), rsa_key, "RS256"))
    assert response.status_code == 200
    assert response.get_json()["subject"] == "svc"
    with app.app_context(), pytest.raises(RuntimeError, match="signing key"):
        ApiGuard().issue_token("alice")


def test_private_key_alone_signs_and_verifies(make_app: Any, ec_key: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["ES256"],
                  APIGUARD_JWT_PRIVATE_KEY=private_pem(ec_key))
    assert whoami(app, token_for(app, "carol")).get_json()["subject"] == "carol"


def test_pem_key_with_hmac_algorithms_is_refused_at_start_up(make_app: Any, rsa_key: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_JWT_PUBLIC_KEY"):
        make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_PUBLIC_KEY=public_pem(rsa_key))


# -- key rotation -------------------------------------------------------------------------------

def test_rotation_with_a_kid_map_signs_with_the_signing_key(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None,
                  APIGUARD_JWT_KEYS={"2024": OTHER_SECRET, "2025": SECRET},
                  APIGUARD_JWT_SIGNING_KEY_ID="2025")
    token = token_for(app, "alice")
    assert jwt.get_unverified_header(token)["kid"] == "2025"
    jwt.decode(token, SECRET, algorithms=["HS256"])
    assert whoami(app, token).status_code == 200
    # a token still signed with the retired key is accepted while that key is configured
    old = sign(claims(sub="old"), OTHER_SECRET, headers={"kid": "2024"})
    assert whoami(app, old).get_json()["subject"] == "old"
    # the kid must name the key that signed it
    refused(whoami(app, sign(claims(), SECRET, headers={"kid": "2024"})), "invalid_token")
    refused(whoami(app, sign(claims(), SECRET, headers={"kid": "2023"})), "invalid_token")
    refused(whoami(app, sign(claims(), SECRET)), "invalid_token")


def test_signing_key_id_defaults_to_the_first_kid(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None,
                  APIGUARD_JWT_KEYS={"first": SECRET, "second": OTHER_SECRET})
    token = token_for(app)
    assert jwt.get_unverified_header(token)["kid"] == "first"
    assert whoami(app, token).status_code == 200


def test_signing_key_id_must_name_a_configured_kid(make_app: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_JWT_SIGNING_KEY_ID"):
        make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_KEYS={"a": SECRET},
                 APIGUARD_JWT_SIGNING_KEY_ID="b")


def test_rotation_with_rsa_pems(make_app: Any, rsa_key: Any, other_rsa_key: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                  APIGUARD_JWT_KEYS={"new": private_pem(rsa_key),
                                     "old": public_pem(other_rsa_key)})
    token = token_for(app)
    assert jwt.get_unverified_header(token)["kid"] == "new"
    assert whoami(app, token).status_code == 200
    old = sign(claims(sub="legacy"), other_rsa_key, "RS256", headers={"kid": "old"})
    assert whoami(app, old).get_json()["subject"] == "legacy"
    swapped = sign(claims(), other_rsa_key, "RS256", headers={"kid": "new"})
    refused(whoami(app, swapped), "invalid_token")


def jwks(rsa_key: Any, other_rsa_key: Any, ec_key: Any) -> dict[str, Any]:
    """A public JWKS: RSA keys "current" and "previous", and an encryption key "enc"."""
    current = RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
    previous = RSAAlgorithm.to_jwk(other_rsa_key.public_key(), as_dict=True)
    encryption = ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    return {"keys": [{**current, "kid": "current", "use": "sig", "alg": "RS256"},
                     {**previous, "kid": "previous"},
                     {**encryption, "kid": "enc", "use": "enc"}]}


def check_jwks_app(app: Flask, rsa_key: Any, other_rsa_key: Any, ec_key: Any) -> None:
    for kid, key in (("current", rsa_key), ("previous", other_rsa_key)):
        token = sign(claims(sub=kid), key, "RS256", headers={"kid": kid})
        assert whoami(app, token).get_json()["subject"] == kid
    swapped = sign(claims(), other_rsa_key, "RS256", headers={"kid": "current"})
    refused(whoami(app, swapped), "invalid_token")
    # the "enc" key is not a signing key and is not loaded
    refused(whoami(app, sign(claims(), ec_key, "ES256", headers={"kid": "enc"})), "invalid_token")
    # a public JWKS verifies only: nothing to sign with
    with app.app_context(), pytest.raises(RuntimeError, match="signing key"):
        ApiGuard().issue_token("alice")


def test_rotation_with_a_jwks_dict(make_app: Any, rsa_key: Any, other_rsa_key: Any,
                                   ec_key: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256", "ES256"],
                  APIGUARD_JWT_KEYS=jwks(rsa_key, other_rsa_key, ec_key))
    check_jwks_app(app, rsa_key, other_rsa_key, ec_key)


def test_jwks_with_a_private_key_signs_and_verifies(make_app: Any, rsa_key: Any,
                                                   other_rsa_key: Any) -> None:
    private = RSAAlgorithm.to_jwk(rsa_key, as_dict=True)
    public = RSAAlgorithm.to_jwk(other_rsa_key.public_key(), as_dict=True)
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256"],
                  APIGUARD_JWT_KEYS={"keys": [{**public, "kid": "old"},
                                              {**private, "kid": "new"}]},
                  APIGUARD_JWT_SIGNING_KEY_ID="new")
    elsewhere = sign(claims(sub="elsewhere"), rsa_key, "RS256", headers={"kid": "new"})
    assert whoami(app, elsewhere).get_json()["subject"] == "elsewhere"
    token = token_for(app, "issued")
    assert jwt.get_unverified_header(token)["kid"] == "new"
    jwt.decode(token, rsa_key.public_key(), algorithms=["RS256"])
    assert whoami(app, token).get_json()["subject"] == "issued"


def test_jwks_file_relative_to_the_instance_folder(make_app: Any, tmp_path: Any, rsa_key: Any,
                                                   other_rsa_key: Any, ec_key: Any) -> None:
    instance = tmp_path / "instance"
    instance.mkdir(exist_ok=True)
    (instance / "jwks.json").write_text(json.dumps(jwks(rsa_key, other_rsa_key, ec_key)))
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256", "ES256"],
                  APIGUARD_JWT_KEYS="jwks.json")
    check_jwks_app(app, rsa_key, other_rsa_key, ec_key)


def test_jwks_file_by_absolute_path(make_app: Any, tmp_path: Any, rsa_key: Any,
                                    other_rsa_key: Any, ec_key: Any) -> None:
    path = tmp_path / "elsewhere" / "keys.jwks"
    path.parent.mkdir()
    path.write_text(json.dumps(jwks(rsa_key, other_rsa_key, ec_key)))
    app = jwt_app(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_ALGORITHMS=["RS256", "ES256"],
                  APIGUARD_JWT_KEYS=str(path))
    check_jwks_app(app, rsa_key, other_rsa_key, ec_key)


def test_missing_jwks_file_fails_at_start_up(make_app: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_JWT_KEYS"):
        make_app(APIGUARD_JWT_SECRET=None, APIGUARD_JWT_KEYS="no-such-jwks.json")


# -- claim checks -------------------------------------------------------------------------------

def test_issuer_and_audience_are_checked(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_ISSUER="https://auth.example.com",
                  APIGUARD_JWT_AUDIENCE="orders-api")
    token = token_for(app)
    payload = unverified(token)
    assert payload["iss"] == "https://auth.example.com"
    assert payload["aud"] == "orders-api"
    assert whoami(app, token).status_code == 200
    good = {"iss": "https://auth.example.com", "aud": "orders-api"}
    assert whoami(app, sign(claims(**good))).status_code == 200
    assert whoami(app, sign(claims(**{**good, "aud": ["other", "orders-api"]}))).status_code == 200
    for bad in ({"iss": "https://evil.example.com"}, {"iss": None},
                {"aud": "billing-api"}, {"aud": None}, {"aud": ["billing-api"]}):
        refused(whoami(app, sign(claims(**{**good, **bad}))), "invalid_token")


def test_audience_list_accepts_any_of_them(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_AUDIENCE=["orders-api", "orders-admin"])
    assert whoami(app, sign(claims(aud="orders-admin"))).status_code == 200
    refused(whoami(app, sign(claims(aud="billing-api"))), "invalid_token")


def test_token_with_aud_is_refused_when_no_audience_is_configured(make_app: Any) -> None:
    app = jwt_app(make_app)
    assert whoami(app, sign(claims())).status_code == 200
    refused(whoami(app, sign(claims(aud="orders-api"))), "invalid_token")


@pytest.mark.parametrize("audience", ["", []])
def test_an_empty_aud_is_still_an_aud(client: Any, audience: Any) -> None:
    # An empty 'aud' ("" or []) passed as if the token named no audience.
    token = jwt.encode({"sub": "a", "exp": int(time.time()) + 60, "aud": audience}, SECRET,
                       algorithm="HS256")
    assert problem(client.get("/private", headers=bearer(token)))["error"] == "invalid_token"


def test_leeway_allows_clock_skew_and_no_more(make_app: Any) -> None:
    now = int(time.time())
    strict = jwt_app(make_app)
    refused(whoami(strict, sign(claims(exp=now - 10))), "token_expired")
    refused(whoami(strict, sign(claims(nbf=now + 10))), "invalid_token")
    refused(whoami(strict, sign(claims(iat=now + 10))), "invalid_token")
    lenient = jwt_app(make_app, APIGUARD_JWT_LEEWAY=30)
    for skewed in ({"exp": now - 10}, {"nbf": now + 10}, {"iat": now + 10}):
        assert whoami(lenient, sign(claims(**skewed))).status_code == 200, skewed
    refused(whoami(lenient, sign(claims(exp=now - 90))), "token_expired")
    refused(whoami(lenient, sign(claims(nbf=now + 90))), "invalid_token")
    refused(whoami(lenient, sign(claims(iat=now + 90))), "invalid_token")


def test_max_age_requires_iat_and_expires_old_tokens(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_MAX_AGE=60)
    now = int(time.time())
    assert whoami(app, token_for(app)).status_code == 200
    assert whoami(app, sign(claims(iat=now - 30))).status_code == 200
    body = refused(whoami(app, sign(claims(iat=now - 120, exp=now + 3600))), "token_expired")
    assert body["title"] == "Unauthorized"
    refused(whoami(app, sign(claims(iat=None))), "invalid_token")


def test_max_age_counts_the_leeway(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_MAX_AGE=60, APIGUARD_JWT_LEEWAY=30)
    now = int(time.time())
    assert whoami(app, sign(claims(iat=now - 80))).status_code == 200
    refused(whoami(app, sign(claims(iat=now - 100))), "token_expired")


def test_default_required_claims_are_exp_and_sub(make_app: Any) -> None:
    app = jwt_app(make_app)
    assert whoami(app, sign(claims(iat=None, jti=None))).status_code == 200
    body = refused(whoami(app, sign(claims(exp=None))), "invalid_token")
    assert "exp" in body["detail"]
    body = refused(whoami(app, sign(claims(sub=None))), "invalid_token")
    assert "sub" in body["detail"]


def test_configured_required_claims(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_REQUIRED_CLAIMS=["exp", "sub", "tenant"])
    assert whoami(app, sign(claims(tenant="acme"))).status_code == 200
    body = refused(whoami(app, sign(claims())), "invalid_token")
    assert "tenant" in body["detail"]


def test_max_length_refuses_longer_tokens(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_MAX_LENGTH=400)
    short = token_for(app)
    assert len(short) <= 400
    assert whoami(app, short).status_code == 200
    long = token_for(app, "alice", padding="x" * 400)
    assert len(long) > 400
    body = refused(whoami(app, long), "invalid_token")
    assert "long" in body["detail"]


def test_default_max_length_is_8192(make_app: Any) -> None:
    app = jwt_app(make_app)
    fits = sign(claims(pad="y" * 5000))
    assert len(fits) <= 8192
    assert whoami(app, fits).status_code == 200
    too_long = sign(claims(pad="y" * 7000))
    assert len(too_long) > 8192
    refused(whoami(app, too_long), "invalid_token")


# -- roles and scopes ---------------------------------------------------------------------------

def test_roles_claim_as_a_string_is_one_role(make_app: Any) -> None:
    app = jwt_app(make_app)
    response = whoami(app, sign(claims(roles="admin")))
    assert response.get_json()["roles"] == ["admin"]
    assert whoami(app, sign(claims(roles="admin")), "/admin").status_code == 200
    assert whoami(app, sign(claims(roles="admin editor")), "/me").get_json()["roles"] == \
        ["admin editor"]


def test_roles_claim_as_a_list(make_app: Any) -> None:
    app = jwt_app(make_app)
    token = token_for(app, roles=["editor", "admin"])
    assert unverified(token)["roles"] == ["editor", "admin"]
    body = whoami(app, token).get_json()
    assert body["roles"] == ["admin", "editor"]
    assert body["roles_is_frozenset"] is True
    assert whoami(app, token, "/admin").status_code == 200
    response = whoami(app, token_for(app, roles=["editor"]), "/admin")
    assert response.status_code == 403
    assert problem(response)["error"] == "forbidden"


def test_custom_roles_claim(make_app: Any) -> None:
    claim = "https://example.com/roles"
    app = jwt_app(make_app, APIGUARD_JWT_ROLES_CLAIM=claim)
    token = token_for(app, roles=["admin"])
    payload = unverified(token)
    assert payload[claim] == ["admin"]
    assert "roles" not in payload
    assert whoami(app, token, "/admin").status_code == 200
    # the default claim name means nothing now
    response = whoami(app, sign(claims(roles=["admin"])), "/admin")
    assert response.status_code == 403
    assert whoami(app, sign(claims(**{claim: "admin"})), "/admin").status_code == 200


def test_scope_claim_is_space_separated(make_app: Any) -> None:
    app = jwt_app(make_app)
    token = token_for(app, scopes=["orders:read", "orders:write"])
    assert unverified(token)["scope"] == "orders:read orders:write"
    body = whoami(app, token).get_json()
    assert body["scopes"] == ["orders:read", "orders:write"]
    assert body["scopes_is_frozenset"] is True
    assert whoami(app, sign(claims(scope="a  b c"))).get_json()["scopes"] == ["a", "b", "c"]


# -- optional authentication and the identity ---------------------------------------------------

def test_optional_jwt_without_token_is_anonymous(make_app: Any) -> None:
    app = jwt_app(make_app)
    response = app.test_client().get("/maybe")
    assert response.status_code == 200
    body = response.get_json()
    assert body["authenticated"] is False
    assert body["subject"] is None
    assert body["method"] is None
    assert body["roles"] == [] and body["scopes"] == [] and body["claims"] == {}


def test_optional_jwt_with_a_valid_token_has_an_identity(make_app: Any) -> None:
    app = jwt_app(make_app)
    body = whoami(app, token_for(app, "dave", roles=["reader"]), "/maybe").get_json()
    assert body["authenticated"] is True
    assert body["subject"] == "dave"
    assert body["roles"] == ["reader"]
    assert body["method"] == "jwt"


def test_optional_jwt_with_an_invalid_token_is_still_401(make_app: Any) -> None:
    app = jwt_app(make_app)
    refused(whoami(app, sign(claims(), OTHER_SECRET), "/maybe"), "invalid_token")
    refused(whoami(app, sign(claims(exp=int(time.time()) - 5)), "/maybe"), "token_expired")
    refused(whoami(app, "not.a.token", "/maybe"), "invalid_token")


def test_current_identity_fields_for_a_jwt(make_app: Any) -> None:
    app = jwt_app(make_app)
    token = token_for(app, "erin", roles=["admin", "ops"], scopes=["read"], tenant="acme")
    body = whoami(app, token).get_json()
    assert body["authenticated"] is True
    assert body["subject"] == "erin"
    assert body["roles"] == ["admin", "ops"]
    assert body["scopes"] == ["read"]
    assert body["method"] == "jwt"
    assert body["key_id"] is None
    assert body["claims"] == unverified(token)
    assert body["claims"]["tenant"] == "acme"


def test_current_identity_is_anonymous_outside_a_request() -> None:
    app = Flask("outside")
    with app.test_request_context("/"):
        assert current_identity.is_authenticated is False
        assert current_identity.subject is None
        assert current_identity.roles == frozenset()


# -- issue_token --------------------------------------------------------------------------------

def test_issue_token_adds_the_standard_claims(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_ISSUER="https://auth.example.com",
                  APIGUARD_JWT_AUDIENCE="orders-api", APIGUARD_JWT_EXPIRES_IN=120)
    before = int(time.time())
    token = token_for(app, "frank", roles=["admin"], scopes=["a", "b"], tenant="acme")
    payload = jwt.decode(token, SECRET, algorithms=["HS256"], audience="orders-api",
                         issuer="https://auth.example.com")
    after = int(time.time())
    assert payload["sub"] == "frank"
    assert before <= payload["iat"] <= after
    assert payload["exp"] - payload["iat"] == 120
    assert isinstance(payload["jti"], str) and len(payload["jti"]) >= 16
    assert payload["roles"] == ["admin"]
    assert payload["scope"] == "a b"
    assert payload["tenant"] == "acme"
    assert unverified(token_for(app, "frank"))["jti"] != payload["jti"]


def test_issue_token_lifetime(make_app: Any) -> None:
    app = jwt_app(make_app)
    default = unverified(token_for(app))
    assert default["exp"] - default["iat"] == 900
    seconds = unverified(token_for(app, expires_in=30))
    assert seconds["exp"] - seconds["iat"] == 30
    delta = unverified(token_for(app, expires_in=timedelta(hours=2)))
    assert delta["exp"] - delta["iat"] == 7200
    assert "iss" not in default and "aud" not in default


def test_issue_token_refuses_reserved_claims_and_bad_arguments(make_app: Any) -> None:
    app = jwt_app(make_app)
    with app.app_context():
        guard = ApiGuard()
        for reserved in ({"exp": 1}, {"iat": 1}, {"nbf": 1}, {"sub": "x"}, {"jti": "x"},
                         {"iss": "me"}, {"aud": "you"}, {"scope": "all"}):
            with pytest.raises(TypeError):
                guard.issue_token("alice", **reserved)
        with pytest.raises(TypeError):
            guard.issue_token("")
        with pytest.raises(ValueError):
            guard.issue_token("alice", scopes=["two words"])


# -- revocation ---------------------------------------------------------------------------------

def test_revoked_token_is_refused(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_REVOCATION=True)
    token, other = token_for(app), token_for(app)
    assert whoami(app, token).status_code == 200
    revoke(app, token)
    body = refused(whoami(app, token), "token_revoked")
    assert token not in json.dumps(body)
    assert whoami(app, other).status_code == 200


def test_revoke_by_jti(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_REVOCATION=True)
    token = token_for(app)
    revoke(app, unverified(token)["jti"])
    refused(whoami(app, token), "token_revoked")


def test_revocation_makes_jti_required(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_REVOCATION=True)
    body = refused(whoami(app, sign(claims(jti=None))), "invalid_token")
    assert "jti" in body["detail"]


def test_revoke_token_raises_when_revocation_is_off(make_app: Any) -> None:
    app = jwt_app(make_app)
    token = token_for(app)
    with pytest.raises(RuntimeError, match="APIGUARD_JWT_REVOCATION"):
        revoke(app, token)
    assert whoami(app, token).status_code == 200


def test_revoke_token_refuses_a_foreign_token(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_REVOCATION=True)
    with app.app_context(), pytest.raises(ValueError):
        ApiGuard().revoke_token(sign(claims(), OTHER_SECRET))


@pytest.mark.redis
def test_revocation_of_a_token_without_exp_lasts_max_age(make_app: Any) -> None:
    # A revoked token without 'exp' left the denylist while APIGUARD_JWT_MAX_AGE still let it in.
    app = make_app(APIGUARD_JWT_REQUIRED_CLAIMS=["sub"], APIGUARD_JWT_MAX_AGE=90 * 86400,
                   APIGUARD_JWT_REVOCATION=True)
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "jti": "j1"}, SECRET, algorithm="HS256")
    client = app.test_client()
    assert client.get("/private", headers=bearer(token)).status_code == 200
    with app.app_context():
        ApiGuard().revoke_token(token)
    assert client.get("/private", headers=bearer(token)).get_json()["error"] == "token_revoked"
    entries = app.extensions["apiguard"].shared.primary.revocations._entries
    assert entries["j1"] - time.time() > 89 * 86400


def test_revocation_is_shared_between_apps_through_redis(make_app: Any, redis_config: Any) -> None:
    config = redis_config(APIGUARD_JWT_REVOCATION=True)
    app_a, app_b = jwt_app(make_app, **config), jwt_app(make_app, **config)
    token = token_for(app_a)
    assert whoami(app_b, token).status_code == 200
    revoke(app_a, token)
    refused(whoami(app_b, token), "token_revoked")
    refused(whoami(app_a, token), "token_revoked")
    assert whoami(app_b, token_for(app_b)).status_code == 200


# -- the verified-token cache -------------------------------------------------------------------

def test_cached_token_that_expires_is_refused(make_app: Any) -> None:
    app = jwt_app(make_app)
    exp = int(time.time()) + 2
    token = sign(claims(exp=exp))
    assert whoami(app, token).status_code == 200
    assert whoami(app, token).status_code == 200  # served from the cache
    time.sleep(max(0.0, exp - time.time()) + 0.1)
    refused(whoami(app, token), "token_expired")


def test_tampered_variant_of_a_cached_token_is_refused(make_app: Any) -> None:
    app = jwt_app(make_app)
    token = token_for(app, "alice", roles=["user"])
    assert whoami(app, token).status_code == 200
    header, payload, signature = token.split(".")
    forged = jwt.utils.base64url_encode(
        json.dumps({**unverified(token), "roles": ["admin"]}).encode()
    ).decode()
    refused(whoami(app, f"{header}.{forged}.{signature}", "/admin"), "invalid_token")
    middle = len(signature) // 2
    flipped = signature[:middle] + ("A" if signature[middle] != "A" else "B") + signature[middle + 1:]
    refused(whoami(app, f"{header}.{payload}.{flipped}"), "invalid_token")
    assert whoami(app, token).status_code == 200


def test_token_revoked_while_cached_is_refused(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_REVOCATION=True)
    token = token_for(app)
    for _ in range(3):
        assert whoami(app, token).status_code == 200
    revoke(app, token)
    refused(whoami(app, token), "token_revoked")


def test_cache_size_zero_verifies_every_time(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_CACHE_SIZE=0)
    token = token_for(app)
    for _ in range(3):
        assert whoami(app, token).get_json()["subject"] == "alice"
    header, payload, signature = token.split(".")
    refused(whoami(app, f"{header}.{payload}.{signature[::-1]}"), "invalid_token")
    assert len(app.extensions["apiguard"].jwt._cache) == 0


def test_cache_is_bounded(make_app: Any) -> None:
    app = jwt_app(make_app, APIGUARD_JWT_CACHE_SIZE=3)
    tokens = [token_for(app, f"user{n}") for n in range(10)]
    for n, token in enumerate(tokens):
        assert whoami(app, token).get_json()["subject"] == f"user{n}"
    # the cache is internal; its size is the only way to see that it stays bounded
    assert len(app.extensions["apiguard"].jwt._cache) <= 3
    assert whoami(app, tokens[0]).get_json()["subject"] == "user0"  # evicted, verified again


def test_negative_cache_size_is_refused(make_app: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_JWT_CACHE_SIZE"):
        make_app(APIGUARD_JWT_CACHE_SIZE=-1)



# A signed token whose jti (or sub) held a lone surrogate ("\ud800", valid JSON) reached the
# Redis client, which cannot encode it: 500 instead of 401.
@pytest.mark.parametrize("claim", ["jti", "sub"])
def test_a_claim_no_storage_key_can_hold_is_an_invalid_token(make_app: Any, redis_config: Any,
                                                             claim: str) -> None:
    app = make_app(**redis_config(APIGUARD_JWT_REVOCATION=True))
    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 600, "jti": "j1", claim: "\ud800x"}
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    response = app.test_client().get("/private", headers=bearer(token))
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_token"
