"""Every ``APIGUARD_*`` key: defaults, parsing and validation into a frozen :class:`GuardConfig`.

The configuration is read once, in :meth:`ApiGuard.init_app`. A bad value raises
:class:`ApiGuardConfigError` naming the key, what is wrong and how to fix it. Nothing in
the package reads ``app.config`` during a request. The readers of single values are in
:mod:`flask_apiguard.readers`.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import readers as read
from .errors import ApiGuardConfigError
from .networks import NetworkSet
from .readers import HMAC_ALGORITHMS, PREFIX

#: Every key with its default. The order is the order of ``docs/config.rst``.
DEFAULTS: dict[str, Any] = {
    "DEFAULT_DENY": True,
    "PUBLIC_ENDPOINTS": ["static"],
    "STORAGE_URI": "memory://",
    "STORAGE_OPTIONS": {},
    "MEMORY_STORAGE_MAX_KEYS": 100_000,
    "STORAGE_MODE": "exact",
    "JWT_SECRET": None,
    "JWT_PRIVATE_KEY": None,
    "JWT_PUBLIC_KEY": None,
    "JWT_KEYS": None,
    "JWT_SIGNING_KEY_ID": None,
    "JWT_MAX_LENGTH": 8192,
    "JWT_MAX_AGE": None,
    "JWT_ALGORITHMS": ["HS256"],
    "JWT_ISSUER": None,
    "JWT_AUDIENCE": None,
    "JWT_LEEWAY": 0,
    "JWT_REQUIRED_CLAIMS": ["exp", "sub"],
    "JWT_EXPIRES_IN": 900,
    "JWT_ROLES_CLAIM": "roles",
    "JWT_REVOCATION": False,
    "JWT_CACHE_SIZE": 1024,
    "JWT_SCOPES_CLAIM": "scope",
    "JWT_JWKS_URL": None,
    "JWT_OIDC_DISCOVERY": False,
    "JWT_JWKS_CACHE_TTL": 600,
    "JWT_JWKS_REFETCH_COOLDOWN": 30,
    "JWT_ISSUERS": None,
    "JWKS_ROUTE": None,
    "API_KEY_HEADER": "X-API-Key",
    "API_KEY_STORE": "sqlite:///apiguard.sqlite3",
    "API_KEY_PREFIX": "agk",
    "AUTH_FAILURE_LIMIT": "20 per 15 minutes",
    "RATELIMIT_DEFAULT": "100 per 15 minutes",
    "RATELIMIT_STRATEGY": "sliding-window-counter",
    "RATELIMIT_HEADERS": True,
    "RATELIMIT_ON_STORAGE_ERROR": "fallback",
    "RATELIMIT_EXEMPT_NETWORKS": [],
    "CORS_ORIGINS": [],
    "CORS_METHODS": ["GET", "POST", "PUT", "PATCH", "DELETE"],
    "CORS_HEADERS": ["Content-Type", "Authorization"],
    "CORS_EXPOSE_HEADERS": [
        "X-Request-ID",
        "RateLimit-Limit",
        "RateLimit-Remaining",
        "RateLimit-Reset",
        "Retry-After",
    ],
    "CORS_CREDENTIALS": False,
    "CORS_MAX_AGE": 3600,
    "FORCE_HTTPS": True,
    "HSTS": {"max_age": 31536000, "include_subdomains": True, "preload": False},
    "CSP": {"default-src": "'none'", "frame-ancestors": "'none'"},
    "FRAME_OPTIONS": "DENY",
    "REFERRER_POLICY": "strict-origin-when-cross-origin",
    "PERMISSIONS_POLICY": {"geolocation": "()", "microphone": "()", "camera": "()"},
    "EXTRA_HEADERS": {
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
        "X-Permitted-Cross-Domain-Policies": "none",
    },
    "CACHE_CONTROL": "no-store",
    "CACHE_CONTROL_ALWAYS": True,
    "MAX_CONTENT_LENGTH": 10240,
    "MAX_JSON_DEPTH": 32,
    "JSON_ONLY": True,
    "REJECT_OPERATOR_KEYS": True,
    "DUPLICATE_PARAMS": "reject",
    "TRUSTED_HOSTS": None,
    "TRUSTED_PROXIES": 0,
    "IP_DENYLIST": [],
    "ALLOWED_METHODS": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    "REQUEST_ID_HEADER": "X-Request-ID",
    "TRUST_REQUEST_ID": False,
    "SANITIZER": "bleach",
    "SECURITY_LOG": True,
    "ERROR_TYPE_BASE": None,
    "SUNSET_ENFORCE": True,
    "OPENAPI_ROUTE": None,
    "OPENAPI_INFO": {},
}



@dataclass(frozen=True, slots=True)
class GuardConfig:
    """The parsed configuration of one app. Built by :func:`load_config`; never mutated."""

    default_deny: bool
    public_endpoints: frozenset[str]
    storage_uri: str
    storage_options: Mapping[str, Any]
    memory_storage_max_keys: int
    #: ``"exact"`` (one round trip per request) or ``"leased"`` (see ``ratelimit.leased``).
    storage_mode: str
    jwt_secret: bytes | None
    jwt_private_key: bytes | None
    jwt_public_key: bytes | None
    jwt_keys: Mapping[str, Any] | None
    jwt_signing_key_id: str | None
    jwt_max_length: int
    jwt_max_age: int | None
    jwt_algorithms: tuple[str, ...]
    jwt_issuer: str | None
    jwt_audience: tuple[str, ...] | None
    jwt_leeway: float
    jwt_required_claims: tuple[str, ...]
    jwt_expires_in: int
    jwt_roles_claim: str
    jwt_revocation: bool
    jwt_cache_size: int
    jwt_scopes_claim: str
    jwt_jwks_url: str | None
    jwt_oidc_discovery: bool
    jwt_jwks_cache_ttl: int
    jwt_jwks_refetch_cooldown: int
    #: ``APIGUARD_JWT_ISSUERS``, each entry normalised (see :func:`_issuers`).
    jwt_issuers: tuple[Mapping[str, Any], ...] | None
    jwks_route: str | None
    api_key_header: str
    api_key_store: str
    api_key_prefix: str
    auth_failure_limit: str | None
    ratelimit_default: str | None
    ratelimit_strategy: str
    ratelimit_headers: bool
    ratelimit_on_storage_error: str
    #: ``None`` when empty (one attribute check on the hot path).
    ratelimit_exempt_networks: NetworkSet | None
    cors_origins: tuple[str, ...]
    cors_methods: tuple[str, ...]
    cors_headers: tuple[str, ...]
    cors_expose_headers: tuple[str, ...]
    cors_credentials: bool
    cors_max_age: int | None
    force_https: bool
    hsts: Mapping[str, Any] | None
    csp: Mapping[str, str] | str | None
    frame_options: str | None
    referrer_policy: str | None
    permissions_policy: Mapping[str, str] | str | None
    extra_headers: Mapping[str, str]
    cache_control: str | None
    cache_control_always: bool
    max_content_length: int | None
    max_json_depth: int
    json_only: bool
    reject_operator_keys: bool
    duplicate_params: str
    trusted_hosts: tuple[str, ...] | None
    trusted_proxies: int
    #: ``None`` when empty (one attribute check on the hot path).
    ip_denylist: NetworkSet | None
    allowed_methods: frozenset[str]
    request_id_header: str
    trust_request_id: bool
    sanitizer: str
    security_log: bool
    error_type_base: str | None
    sunset_enforce: bool
    openapi_route: str | None
    openapi_info: Mapping[str, Any]
    #: The raw values as given, for ``flask apiguard check`` and debugging.
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def uses_hmac(self) -> bool:
        return bool(set(self.jwt_algorithms) & HMAC_ALGORITHMS)


_SIMPLE: dict[str, Callable[[str, Any], Any]] = {
    "DEFAULT_DENY": read.boolean,
    "PUBLIC_ENDPOINTS": lambda k, v: frozenset(read.string_list(k, v) or ()),
    "STORAGE_URI": read.storage_uri,
    "STORAGE_OPTIONS": lambda k, v: read.mapping(k, v, optional=False),
    "MEMORY_STORAGE_MAX_KEYS": lambda k, v: read.integer(k, v, minimum=1),
    "STORAGE_MODE": lambda k, v: read.choice(k, v, ("exact", "leased")),
    "JWT_SECRET": read.bytes_key,
    "JWT_PRIVATE_KEY": read.bytes_key,
    "JWT_PUBLIC_KEY": read.bytes_key,
    "JWT_MAX_LENGTH": lambda k, v: read.integer(k, v, minimum=64),
    "JWT_MAX_AGE": lambda k, v: read.integer(k, v, minimum=1, optional=True),
    "JWT_ALGORITHMS": read.algorithms,
    "JWT_ISSUER": lambda k, v: read.string(k, v, optional=True),
    "JWT_AUDIENCE": lambda k, v: read.string_list(k, [v] if isinstance(v, str) else v, optional=True),
    "JWT_REQUIRED_CLAIMS": lambda k, v: read.string_list(k, v),
    "JWT_EXPIRES_IN": lambda k, v: read.integer(k, v, minimum=1),
    "JWT_ROLES_CLAIM": read.string,
    "JWT_REVOCATION": read.boolean,
    "JWT_CACHE_SIZE": lambda k, v: read.integer(k, v, minimum=0),
    "JWT_SCOPES_CLAIM": read.string,
    "JWT_JWKS_URL": read.fetch_url,
    "JWT_OIDC_DISCOVERY": read.boolean,
    "JWT_JWKS_CACHE_TTL": lambda k, v: read.integer(k, v, minimum=1),
    "JWT_JWKS_REFETCH_COOLDOWN": lambda k, v: read.integer(k, v, minimum=1),
    "JWKS_ROUTE": lambda k, v: read.openapi_route(k, v, "/.well-known/jwks.json"),
    "API_KEY_HEADER": read.header_name,
    "API_KEY_STORE": read.api_key_store,
    "AUTH_FAILURE_LIMIT": read.limit,
    "RATELIMIT_DEFAULT": read.limit,
    "RATELIMIT_HEADERS": read.boolean,
    "RATELIMIT_ON_STORAGE_ERROR": lambda k, v: read.choice(k, v, ("fallback", "open", "closed")),
    "RATELIMIT_EXEMPT_NETWORKS": read.networks,
    "CORS_ORIGINS": read.cors_origins,
    "CORS_METHODS": read.methods,
    "CORS_HEADERS": read.header_names,
    "CORS_EXPOSE_HEADERS": read.header_names,
    "CORS_CREDENTIALS": read.boolean,
    "CORS_MAX_AGE": lambda k, v: read.integer(k, v, optional=True),
    "FORCE_HTTPS": read.boolean,
    "HSTS": lambda k, v: read.hsts(k, v, DEFAULTS["HSTS"]),
    "CSP": read.header_policy,
    "FRAME_OPTIONS": read.frame_options,
    "REFERRER_POLICY": lambda k, v: read.string(k, v, optional=True),
    "PERMISSIONS_POLICY": read.header_policy,
    "EXTRA_HEADERS": lambda k, v: read.extra_headers(k, v, DEFAULTS["EXTRA_HEADERS"]),
    "CACHE_CONTROL": lambda k, v: read.string(k, v, optional=True),
    "CACHE_CONTROL_ALWAYS": read.boolean,
    "MAX_CONTENT_LENGTH": lambda k, v: read.integer(k, v, minimum=1, optional=True),
    "MAX_JSON_DEPTH": lambda k, v: read.integer(k, v, minimum=1),
    "JSON_ONLY": read.boolean,
    "REJECT_OPERATOR_KEYS": read.boolean,
    "DUPLICATE_PARAMS": lambda k, v: read.choice(k, v, ("reject", "first", "last", "allow")),
    "TRUSTED_HOSTS": read.trusted_hosts,
    "TRUSTED_PROXIES": lambda k, v: read.integer(k, v, minimum=0),
    "IP_DENYLIST": read.networks,
    "ALLOWED_METHODS": lambda k, v: frozenset(read.methods(k, v)),
    "REQUEST_ID_HEADER": read.header_name,
    "TRUST_REQUEST_ID": read.boolean,
    "SANITIZER": read.sanitizer,
    "SECURITY_LOG": read.boolean,
    "ERROR_TYPE_BASE": read.error_type_base,
    "SUNSET_ENFORCE": read.boolean,
    "OPENAPI_ROUTE": read.openapi_route,
    "OPENAPI_INFO": read.openapi_info,
}


def _check_leased(uri: str, strategy: str) -> None:
    """``APIGUARD_STORAGE_MODE = "leased"`` needs one Redis server (leases and invalidations
    come from the server that counts) and a strategy whose window a lease can be bound to."""
    scheme = uri.split("://", 1)[0].lower()
    if scheme not in ("redis", "rediss", "redis+unix"):
        raise read.fail(
            "STORAGE_MODE",
            f"'leased' needs APIGUARD_STORAGE_URI on one Redis server (redis://, rediss:// or "
            f"redis+unix://), not {scheme}://. Use 'exact' with memory://, Cluster or Sentinel.",
        )
    if strategy == "moving-window":
        raise read.fail(
            "STORAGE_MODE",
            "'leased' cannot be used with APIGUARD_RATELIMIT_STRATEGY = 'moving-window': a unit "
            "leased now and spent later would leave the moving window before the request it "
            "admitted. Use 'sliding-window-counter' (the default) or 'fixed-window', or 'exact'.",
        )


def load_config(config: Mapping[str, Any], instance_path: str = ".",
                inherited: Mapping[str, Any] | None = None) -> GuardConfig:
    """Parse and validate every ``APIGUARD_*`` key of ``config`` (an app's ``config``).

    :param inherited: values (names without ``APIGUARD_``) for keys that are not set, from
        flask-limiter's ``RATELIMIT_*`` keys and an adopted limiter
        (:func:`flask_apiguard.limiter_keys.inherited`).

    :raises ApiGuardConfigError: for an unknown key or a bad value, naming the key.
    """
    given = {k[len(PREFIX):]: v for k, v in config.items() if k.startswith(PREFIX)}
    for name in given:
        if name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f" Did you mean {PREFIX}{close[0]}?" if close else ""
            raise ApiGuardConfigError(f"{PREFIX}{name}: unknown setting.{hint}")
    raw = {**DEFAULTS, **(inherited or {}), **given}
    parsed: dict[str, Any] = {}
    for name, parse in _SIMPLE.items():
        parsed[name] = parse(name, raw[name])

    parsed["JWT_KEYS"] = read.jwt_keys("JWT_KEYS", raw["JWT_KEYS"], instance_path)
    parsed["JWT_SIGNING_KEY_ID"] = read.signing_key_id(
        "JWT_SIGNING_KEY_ID", raw["JWT_SIGNING_KEY_ID"], parsed["JWT_KEYS"]
    )
    leeway = raw["JWT_LEEWAY"]
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or leeway < 0:
        if isinstance(leeway, str) and leeway.strip().replace(".", "", 1).isdigit():
            leeway = float(leeway)
        else:
            raise read.fail("JWT_LEEWAY", f"expected a number of seconds >= 0, got {leeway!r}.")
    parsed["JWT_LEEWAY"] = float(leeway)

    from limits.strategies import STRATEGIES

    parsed["RATELIMIT_STRATEGY"] = read.choice(
        "RATELIMIT_STRATEGY", raw["RATELIMIT_STRATEGY"], tuple(STRATEGIES)
    )
    if parsed["STORAGE_MODE"] == "leased":
        _check_leased(parsed["STORAGE_URI"], parsed["RATELIMIT_STRATEGY"])
    prefix = read.string("API_KEY_PREFIX", raw["API_KEY_PREFIX"])
    assert prefix is not None
    if not re.fullmatch(r"[a-z0-9]{2,16}", prefix):
        raise read.fail("API_KEY_PREFIX", f"{prefix!r} must be 2 to 16 lowercase letters or digits.")
    parsed["API_KEY_PREFIX"] = prefix

    secret = parsed["JWT_SECRET"]
    if secret is not None and len(secret) < 32:
        raise read.fail(
            "JWT_SECRET",
            f"is {len(secret)} bytes; at least 32 are required for HMAC (RFC 7518 section 3.2). "
            'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"',
        )
    if "exp" not in parsed["JWT_REQUIRED_CLAIMS"] and parsed["JWT_MAX_AGE"] is None:
        raise read.fail(
            "JWT_REQUIRED_CLAIMS",
            "'exp' must stay required: a token without it would never expire. Keep 'exp', or "
            "set APIGUARD_JWT_MAX_AGE to bound tokens by their 'iat' instead.",
        )
    if parsed["JWT_REVOCATION"] and "jti" not in parsed["JWT_REQUIRED_CLAIMS"]:
        parsed["JWT_REQUIRED_CLAIMS"] = (*parsed["JWT_REQUIRED_CLAIMS"], "jti")
    if parsed["JWT_MAX_AGE"] is not None and "iat" not in parsed["JWT_REQUIRED_CLAIMS"]:
        parsed["JWT_REQUIRED_CLAIMS"] = (*parsed["JWT_REQUIRED_CLAIMS"], "iat")

    parsed["JWT_ISSUERS"] = _issuers("JWT_ISSUERS", raw["JWT_ISSUERS"])
    _check_providers(parsed)

    if parsed["CORS_CREDENTIALS"]:
        for origin in parsed["CORS_ORIGINS"]:
            if origin in ("*", "null"):
                raise read.fail(
                    "CORS_CREDENTIALS",
                    f"True with the origin {origin!r} in APIGUARD_CORS_ORIGINS is refused: any site "
                    "could then make credentialed requests. List the exact origins instead.",
                )
            if origin.startswith("re:") and read.matches_anything(origin[3:]):
                raise read.fail(
                    "CORS_CREDENTIALS",
                    f"True with the pattern {origin!r} is refused: it matches arbitrary origins. "
                    "Anchor it to your own domain, e.g. 're:https://[a-z0-9-]+\\.example\\.com'.",
                )

    return GuardConfig(**{name.lower(): parsed[name] for name in DEFAULTS}, raw=raw)


def _check_providers(parsed: dict[str, Any]) -> None:
    """The identity-provider keys agree with each other and with the algorithms."""
    remote = parsed["JWT_JWKS_URL"] is not None or parsed["JWT_OIDC_DISCOVERY"]
    if parsed["JWT_JWKS_URL"] is not None and parsed["JWT_OIDC_DISCOVERY"]:
        raise read.fail("JWT_OIDC_DISCOVERY", "set either APIGUARD_JWT_JWKS_URL or "
                        "APIGUARD_JWT_OIDC_DISCOVERY (the keys' URL is then found through the "
                        "issuer's discovery document), not both.")
    if parsed["JWT_OIDC_DISCOVERY"]:
        issuer = parsed["JWT_ISSUER"]
        if issuer is None:
            raise read.fail("JWT_OIDC_DISCOVERY", "needs APIGUARD_JWT_ISSUER: the discovery "
                            "document is found at <issuer>/.well-known/openid-configuration.")
        read.fetch_url("JWT_ISSUER", issuer)
    if remote and set(parsed["JWT_ALGORITHMS"]) & HMAC_ALGORITHMS:
        raise read.fail("JWT_ALGORITHMS", f"is {list(parsed['JWT_ALGORITHMS'])}, but an identity "
                        "provider signs with public keys: set it to the provider's, e.g. "
                        '["RS256"].')
    if parsed["JWT_ISSUERS"] is not None:
        if remote:
            raise read.fail("JWT_ISSUERS", "is set together with APIGUARD_JWT_JWKS_URL or "
                            "APIGUARD_JWT_OIDC_DISCOVERY: with several issuers, put each "
                            "provider in APIGUARD_JWT_ISSUERS.")
        own = parsed["JWT_ISSUER"]
        if own is not None and any(entry["issuer"] == own for entry in parsed["JWT_ISSUERS"]):
            raise read.fail("JWT_ISSUERS", f"lists {own!r}, which is APIGUARD_JWT_ISSUER (this "
                            "app's own tokens); give the provider's issuer instead.")


_ISSUER_FIELDS = frozenset({"issuer", "audience", "jwks_url", "discovery", "algorithms",
                            "roles_claim", "scopes_claim"})


def _issuers(key: str, value: Any) -> tuple[dict[str, Any], ...] | None:
    """``APIGUARD_JWT_ISSUERS``: a list of dicts, each normalised to every field of
    :data:`_ISSUER_FIELDS` (``discovery`` becomes the document's URL or ``None``; the
    claims ``None`` when not given)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise read.fail(key, "expected a list of dicts (or a JSON array string).") from None
    if not isinstance(value, list | tuple) or not value:
        raise read.fail(key, "expected a non-empty list of dicts, one per issuer.")
    found: list[dict[str, Any]] = []
    for position, entry in enumerate(value):
        where = f"JWT_ISSUERS[{position}]"
        if not isinstance(entry, Mapping):
            raise read.fail(where, f"expected a dict, got {type(entry).__name__}.")
        unknown = set(entry) - _ISSUER_FIELDS
        if unknown:
            raise read.fail(where, f"unknown field(s) {sorted(unknown)}; use {sorted(_ISSUER_FIELDS)}.")
        issuer = read.string(where + "['issuer']", entry.get("issuer"))
        assert issuer is not None
        if any(issuer == other["issuer"] for other in found):
            raise read.fail(where, f"the issuer {issuer!r} is listed twice.")
        discovery = entry.get("discovery", False)
        if discovery is True:
            discovery = read.discovery_url(issuer)
        elif discovery is False or discovery is None:
            discovery = None
        else:
            discovery = read.fetch_url(where + "['discovery']", discovery)
        jwks_url = read.fetch_url(where + "['jwks_url']", entry.get("jwks_url"))
        if (jwks_url is None) == (discovery is None):
            raise read.fail(where, "set either 'jwks_url' or 'discovery' (True, or the URL of the "
                              "OpenID discovery document), not both and not neither.")
        algs = read.algorithms(where + "['algorithms']", entry.get("algorithms"))
        if set(algs) & HMAC_ALGORITHMS:
            raise read.fail(where + "['algorithms']", "an identity provider's keys are public keys: "
                                                 "use RS256, ES256 or EdDSA, never HS*.")
        audience = entry.get("audience")
        found.append({
            "issuer": issuer,
            "audience": read.string_list(where + "['audience']",
                                    [audience] if isinstance(audience, str) else audience,
                                    optional=True),
            "jwks_url": jwks_url,
            "discovery": discovery,
            "algorithms": algs,
            "roles_claim": read.string(where + "['roles_claim']", entry.get("roles_claim"),
                                  optional=True),
            "scopes_claim": read.string(where + "['scopes_claim']", entry.get("scopes_claim"),
                                   optional=True),
        })
    return tuple(found)
