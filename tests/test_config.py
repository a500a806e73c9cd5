"""Every key is parsed once; a mistake fails at start-up with the key's name and the fix."""

from __future__ import annotations

from typing import Any

import pytest

from flask_apiguard import ApiGuardConfigError
from flask_apiguard.config import DEFAULTS, load_config

from .conftest import SECRET


def load(**keys: Any) -> Any:
    return load_config({f"APIGUARD_{k}": v for k, v in keys.items()})


def test_defaults_match_the_contract() -> None:
    config = load()
    assert config.default_deny is True
    assert config.public_endpoints == frozenset({"static"})
    assert config.storage_uri == "memory://"
    assert config.jwt_max_length == 8192
    assert config.jwt_algorithms == ("HS256",)
    assert config.jwt_required_claims == ("exp", "sub")
    assert config.jwt_expires_in == 900
    assert config.jwt_roles_claim == "roles"
    assert config.api_key_header == "X-API-Key"
    assert config.api_key_store == "sqlite:///apiguard.sqlite3"
    assert config.api_key_prefix == "agk"
    assert config.auth_failure_limit == "20 per 15 minutes"
    assert config.ratelimit_default == "100 per 15 minutes"
    assert config.ratelimit_strategy == "sliding-window-counter"
    assert config.ratelimit_on_storage_error == "fallback"
    assert config.cors_origins == ()
    assert config.cors_methods == ("GET", "POST", "PUT", "PATCH", "DELETE")
    assert config.cors_headers == ("Content-Type", "Authorization")
    assert config.cors_max_age == 3600
    assert config.force_https is True
    assert config.hsts == {"max_age": 31536000, "include_subdomains": True, "preload": False}
    assert config.frame_options == "DENY"
    assert config.cache_control == "no-store"
    assert config.max_content_length == 10240
    assert config.max_json_depth == 32
    assert config.duplicate_params == "reject"
    assert config.trusted_proxies == 0
    assert config.allowed_methods == frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
    assert config.request_id_header == "X-Request-ID"
    assert config.sanitizer == "bleach"
    assert set(DEFAULTS) >= {"JWT_CACHE_SIZE", "STORAGE_OPTIONS"}


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ApiGuardConfigError, match=r"APIGUARD_RATELIMT_DEFAULT.*APIGUARD_RATELIMIT_DEFAULT"):
        load_config({"APIGUARD_RATELIMT_DEFAULT": "1/second"})


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("DEFAULT_DENY", "maybe", "True or False"),
        ("JWT_SECRET", "short", "at least 32"),
        ("JWT_ALGORITHMS", ["none"], "never accepted"),
        ("JWT_ALGORITHMS", ["NoNe"], "never accepted"),
        ("JWT_ALGORITHMS", ["HS256", "RS256"], "mixing"),
        ("JWT_ALGORITHMS", ["HS257"], "unknown algorithm"),
        ("JWT_ALGORITHMS", [], "at least one"),
        ("JWT_MAX_LENGTH", -1, "at least"),
        ("JWT_LEEWAY", -5, "seconds"),
        ("JWT_EXPIRES_IN", 0, "at least 1"),
        ("STORAGE_URI", "memcached://localhost", "unsupported storage"),
        ("API_KEY_STORE", "postgres://x", "unsupported store"),
        ("API_KEY_PREFIX", "Bad_Prefix", "lowercase"),
        ("API_KEY_HEADER", "X Api Key", "header name"),
        ("AUTH_FAILURE_LIMIT", "lots", "not a rate limit"),
        ("RATELIMIT_DEFAULT", "5 per fortnight", "not a rate limit"),
        ("RATELIMIT_STRATEGY", "leaky-bucket", "must be one of"),
        ("RATELIMIT_ON_STORAGE_ERROR", "ignore", "must be one of"),
        ("CORS_ORIGINS", ["https://a.example.com/"], "not an origin"),
        ("CORS_ORIGINS", ["re:(unclosed"], "regular expression"),
        ("TRUSTED_HOSTS", [], "empty list"),
        ("TRUSTED_HOSTS", ["bad host"], "not a host name"),
        ("TRUSTED_PROXIES", -1, "at least 0"),
        ("TRUSTED_PROXIES", "two", "whole number"),
        ("DUPLICATE_PARAMS", "merge", "must be one of"),
        ("FRAME_OPTIONS", "ALLOW-FROM x", "must be one of"),
        ("HSTS", {"max_age": 10, "preload": True}, "preload needs"),
        ("HSTS", {"maxage": 10}, "unknown option"),
        ("EXTRA_HEADERS", {"X-Bad": "a\r\nInjected: 1"}, "control character"),
        ("EXTRA_HEADERS", {"Bad Name": "x"}, "header name"),
        ("ERROR_TYPE_BASE", "errors.example.com", "absolute URI"),
        ("ALLOWED_METHODS", ["GET", "G ET"], "HTTP method"),
        ("MAX_CONTENT_LENGTH", 0, "at least 1"),
        ("JWT_SIGNING_KEY_ID", "k1", "APIGUARD_JWT_KEYS"),
        ("STORAGE_OPTIONS", ["x"], "dict"),
    ],
)
def test_bad_values_name_the_key(key: str, value: Any, message: str) -> None:
    with pytest.raises(ApiGuardConfigError, match=f"APIGUARD_{key}") as info:
        load(**{key: value})
    assert message in str(info.value)


def test_credentials_with_wildcard_origin_are_refused() -> None:
    with pytest.raises(ApiGuardConfigError, match="APIGUARD_CORS_CREDENTIALS"):
        load(CORS_ORIGINS=["*"], CORS_CREDENTIALS=True)
    with pytest.raises(ApiGuardConfigError, match="arbitrary origins"):
        load(CORS_ORIGINS=["re:https://.*"], CORS_CREDENTIALS=True)
    with pytest.raises(ApiGuardConfigError, match="null"):
        load(CORS_ORIGINS=["null"], CORS_CREDENTIALS=True)
    config = load(CORS_ORIGINS=[r"re:https://[a-z]+\.example\.com"], CORS_CREDENTIALS=True)
    assert config.cors_credentials is True


def test_values_from_environment_strings() -> None:
    config = load(DEFAULT_DENY="false", TRUSTED_PROXIES="2", CORS_ORIGINS="https://a.test, https://b.test",
                  JSON_ONLY="on", RATELIMIT_DEFAULT="none")
    assert config.default_deny is False
    assert config.trusted_proxies == 2
    assert config.cors_origins == ("https://a.test", "https://b.test")
    assert config.json_only is True
    assert config.ratelimit_default is None


def test_extra_headers_merge_and_none_removes() -> None:
    config = load(EXTRA_HEADERS={"Cross-Origin-Resource-Policy": None, "X-Custom": "1"})
    assert "Cross-Origin-Resource-Policy" not in config.extra_headers
    assert config.extra_headers["Cross-Origin-Opener-Policy"] == "same-origin"
    assert config.extra_headers["X-Custom"] == "1"


def test_revocation_and_max_age_add_required_claims() -> None:
    config = load(JWT_REVOCATION=True, JWT_MAX_AGE=600)
    assert "jti" in config.jwt_required_claims
    assert "iat" in config.jwt_required_claims


@pytest.mark.parametrize("claims", [[], "", ["sub"]])
def test_required_claims_without_exp_are_refused(claims: object) -> None:
    # APIGUARD_JWT_REQUIRED_CLAIMS without 'exp' (and no MAX_AGE) let tokens live forever.
    with pytest.raises(ApiGuardConfigError, match=r"APIGUARD_JWT_REQUIRED_CLAIMS.*'exp'"):
        load_config({"APIGUARD_JWT_REQUIRED_CLAIMS": claims})


def test_max_age_may_stand_in_for_exp() -> None:
    # The 'exp' check must still let MAX_AGE (which needs 'iat') bound a token's life instead.
    config = load_config({"APIGUARD_JWT_REQUIRED_CLAIMS": ["sub"], "APIGUARD_JWT_MAX_AGE": 600})
    assert "iat" in config.jwt_required_claims and "exp" not in config.jwt_required_claims


def test_secret_must_fit_the_strongest_hmac(make_app: Any) -> None:
    with pytest.raises(ApiGuardConfigError, match="at least 64"):
        make_app(APIGUARD_JWT_ALGORITHMS=["HS512"], APIGUARD_JWT_SECRET=SECRET)


def test_sanitizer_nh3_needs_the_package() -> None:
    pytest.importorskip("nh3")
    assert load(SANITIZER="nh3").sanitizer == "nh3"


def test_jwks_file_path_is_read_once(tmp_path: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text('{"keys": [{"kty": "oct", "kid": "k1", "k": "%s"}]}' % ("A" * 43))
    config = load_config({"APIGUARD_JWT_KEYS": str(path)})
    assert config.jwt_keys == {"keys": [{"kty": "oct", "kid": "k1", "k": "A" * 43}]}
    with pytest.raises(ApiGuardConfigError, match="cannot read"):
        load_config({"APIGUARD_JWT_KEYS": str(tmp_path / "missing.json")})
