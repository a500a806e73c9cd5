"""Every ``APIGUARD_*`` key: defaults, parsing and validation into a frozen :class:`GuardConfig`.

The configuration is read once, in :meth:`ApiGuard.init_app`. A bad value raises
:class:`ApiGuardConfigError` naming the key, what is wrong and how to fix it. Nothing in
the package reads ``app.config`` during a request.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ApiGuardConfigError

PREFIX = "APIGUARD_"

#: Every key with its default. The order is the order of ``docs/config.rst``.
DEFAULTS: dict[str, Any] = {
    "DEFAULT_DENY": True,
    "PUBLIC_ENDPOINTS": ["static"],
    "STORAGE_URI": "memory://",
    "STORAGE_OPTIONS": {},
    "MEMORY_STORAGE_MAX_KEYS": 100_000,
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
    "API_KEY_HEADER": "X-API-Key",
    "API_KEY_STORE": "sqlite:///apiguard.sqlite3",
    "API_KEY_PREFIX": "agk",
    "AUTH_FAILURE_LIMIT": "20 per 15 minutes",
    "RATELIMIT_DEFAULT": "100 per 15 minutes",
    "RATELIMIT_STRATEGY": "sliding-window-counter",
    "RATELIMIT_HEADERS": True,
    "RATELIMIT_ON_STORAGE_ERROR": "fallback",
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
    "MAX_CONTENT_LENGTH": 10240,
    "MAX_JSON_DEPTH": 32,
    "JSON_ONLY": True,
    "REJECT_OPERATOR_KEYS": True,
    "DUPLICATE_PARAMS": "reject",
    "TRUSTED_HOSTS": None,
    "TRUSTED_PROXIES": 0,
    "ALLOWED_METHODS": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
    "REQUEST_ID_HEADER": "X-Request-ID",
    "TRUST_REQUEST_ID": False,
    "SANITIZER": "bleach",
    "SECURITY_LOG": True,
    "ERROR_TYPE_BASE": None,
}

STORAGE_SCHEMES = ("memory", "redis", "rediss", "redis+unix", "redis+cluster", "redis+sentinel")
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
     "ES256K", "EdDSA", "Ed25519"}
)
_TOKEN_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP field name (RFC 9110 token)
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
_HOST_RE = re.compile(rf"^(\*|\.?{_LABEL}(\.{_LABEL})*|\[[0-9a-f:.]+\])$")
_ORIGIN = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+)(:\d{1,5})?")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class GuardConfig:
    """The parsed configuration of one app. Built by :func:`load_config`; never mutated."""

    default_deny: bool
    public_endpoints: frozenset[str]
    storage_uri: str
    storage_options: Mapping[str, Any]
    memory_storage_max_keys: int
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
    api_key_header: str
    api_key_store: str
    api_key_prefix: str
    auth_failure_limit: str | None
    ratelimit_default: str | None
    ratelimit_strategy: str
    ratelimit_headers: bool
    ratelimit_on_storage_error: str
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
    max_content_length: int | None
    max_json_depth: int
    json_only: bool
    reject_operator_keys: bool
    duplicate_params: str
    trusted_hosts: tuple[str, ...] | None
    trusted_proxies: int
    allowed_methods: frozenset[str]
    request_id_header: str
    trust_request_id: bool
    sanitizer: str
    security_log: bool
    error_type_base: str | None
    #: The raw values as given, for ``flask apiguard check`` and debugging.
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def uses_hmac(self) -> bool:
        return bool(set(self.jwt_algorithms) & HMAC_ALGORITHMS)


def _fail(key: str, problem: str) -> ApiGuardConfigError:
    return ApiGuardConfigError(f"{PREFIX}{key}: {problem}")


# -- small typed readers -----------------------------------------------------------------

def _bool(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _fail(key, f"expected True or False, got {value!r}.")


def _int(key: str, value: Any, *, minimum: int = 0, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " or None" if optional else ""
        raise _fail(key, f"expected a whole number{hint}, got {value!r}.")
    if value < minimum:
        raise _fail(key, f"must be at least {minimum}, got {value}.")
    return value


def _str(key: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        hint = " or None" if optional else ""
        raise _fail(key, f"expected a non-empty string{hint}, got {value!r}.")
    return value


def _list(key: str, value: Any, *, optional: bool = False) -> tuple[str, ...] | None:
    """A list of strings; a comma-separated string (as from an environment variable) works."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple | set | frozenset):
        raise _fail(key, f"expected a list of strings, got {type(value).__name__}.")
    items = list(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise _fail(key, f"every entry must be a non-empty string, got {item!r}.")
    return tuple(items)


def _choice(key: str, value: Any, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        raise _fail(key, f"must be one of {', '.join(repr(c) for c in options)}, got {value!r}.")
    return str(value)


def _mapping(key: str, value: Any, *, optional: bool = True) -> dict[str, Any] | None:
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _fail(key, "expected a dict (or a JSON object string).") from None
    if not isinstance(value, Mapping):
        raise _fail(key, f"expected a dict, got {type(value).__name__}.")
    return dict(value)


def _bytes_key(key: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise _fail(key, f"expected a string or bytes, got {type(value).__name__}.")


def _limit(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise _fail(key, f'expected a limit such as "100 per 15 minutes", or None; got {value!r}.')
    if value.strip().lower() in ("none", "off"):
        return None
    check_limit_string(value, f"{PREFIX}{key}")
    return value


def check_limit_string(value: str, where: str) -> None:
    """Raise :class:`ApiGuardConfigError` unless ``value`` parses as one or more limits."""
    from limits import parse_many

    try:
        items = parse_many(value)
    except ValueError:
        items = []
    if not items:
        raise ApiGuardConfigError(
            f'{where}: {value!r} is not a rate limit. Write it as "10/minute", '
            '"5 per 15 minutes" or several separated by ";".'
        )


# -- the parsers of individual keys --------------------------------------------------------

def _storage_uri(key: str, value: Any) -> str:
    uri = _str(key, value)
    assert uri is not None
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in STORAGE_SCHEMES:
        raise _fail(
            key,
            f"unsupported storage {uri.split('://', 1)[0]!r}. Use memory:// for one process, "
            "or redis://, rediss://, redis+cluster:// or redis+sentinel:// to share state "
            "between processes.",
        )
    return uri


def _api_key_store(key: str, value: Any) -> str:
    uri = _str(key, value)
    assert uri is not None
    if uri == "memory://" or uri.startswith(("redis://", "rediss://", "redis+unix://")):
        return uri
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        return uri
    raise _fail(
        key,
        f"unsupported store {uri!r}. Use sqlite:///relative/path (inside the app's instance "
        "folder), sqlite:////absolute/path, memory:// or redis://host:port/db.",
    )


def _algorithms(key: str, value: Any) -> tuple[str, ...]:
    algorithms = _list(key, value)
    assert algorithms is not None
    if not algorithms:
        raise _fail(key, 'at least one algorithm is needed, for example ["HS256"].')
    known = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
    for alg in algorithms:
        if alg.lower() == "none":
            raise _fail(key, '"none" is never accepted: unsigned tokens would let anyone in.')
        if alg not in known:
            raise _fail(key, f"unknown algorithm {alg!r}. Choose from {sorted(known)}.")
    hmac_used = set(algorithms) & HMAC_ALGORITHMS
    if hmac_used and set(algorithms) - HMAC_ALGORITHMS:
        raise _fail(
            key,
            "mixing HMAC (HS*) and public-key algorithms is refused: a public key could then "
            "be used as an HMAC secret (algorithm confusion). Use one family.",
        )
    return algorithms


def _trusted_hosts(key: str, value: Any) -> tuple[str, ...] | None:
    hosts = _list(key, value, optional=True)
    if hosts is None:
        return None
    if not hosts:
        raise _fail(key, "an empty list would refuse every request. Use None to switch the check off.")
    normalised = []
    for host in hosts:
        lowered = host.strip().lower()
        if not _HOST_RE.match(lowered):
            raise _fail(
                key,
                f"{host!r} is not a host name. Write names like 'api.example.com', "
                "'.example.com' (the domain and every subdomain) or '*' (any host).",
            )
        normalised.append(lowered)
    return tuple(normalised)


def _methods(key: str, value: Any) -> tuple[str, ...]:
    methods = _list(key, value)
    assert methods is not None
    upper = tuple(m.upper() for m in methods)
    for method in upper:
        if not _TOKEN_RE.match(method):
            raise _fail(key, f"{method!r} is not an HTTP method name.")
    return upper


def _header_name(key: str, value: Any) -> str:
    name = _str(key, value)
    assert name is not None
    if not _TOKEN_RE.match(name):
        raise _fail(key, f"{name!r} is not a valid HTTP header name.")
    return name


def _header_names(key: str, value: Any) -> tuple[str, ...]:
    names = _list(key, value)
    assert names is not None
    for name in names:
        if not _TOKEN_RE.match(name):
            raise _fail(key, f"{name!r} is not a valid HTTP header name.")
    return names


def _header_value(key: str, name: str, value: str) -> str:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise _fail(key, f"the value of {name!r} contains a control character.")
    return value


def _cors_origins(key: str, value: Any) -> tuple[str, ...]:
    origins = _list(key, value)
    assert origins is not None
    for origin in origins:
        if origin.startswith("re:"):
            try:
                re.compile(origin[3:])
            except re.error as exc:
                raise _fail(key, f"{origin!r} is not a valid regular expression ({exc}).") from None
        elif origin not in ("*", "null") and not _ORIGIN.fullmatch(origin):
            hint = (" A wildcard needs a pattern, e.g. 're:https://[a-z0-9-]+\\.example\\.com'."
                    if "*" in origin else "")
            raise _fail(
                key,
                f"{origin!r} is not an origin. Write scheme://host[:port] with no path or "
                "trailing slash (for example 'https://app.example.com'), or 're:<regex>'." + hint,
            )
    return origins


def _extra_headers(key: str, value: Any) -> dict[str, str]:
    given = _mapping(key, value, optional=True)
    merged = dict(DEFAULTS["EXTRA_HEADERS"])
    for name, header_value in (given or {}).items():
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise _fail(key, f"{name!r} is not a valid HTTP header name.")
        if header_value is None:
            for existing in [n for n in merged if n.lower() == name.lower()]:
                del merged[existing]
            continue
        if not isinstance(header_value, str):
            raise _fail(key, f"the value of {name!r} must be a string or None to remove it.")
        for existing in [n for n in merged if n.lower() == name.lower()]:
            del merged[existing]
        merged[name] = _header_value(key, name, header_value)
    return merged


def _hsts(key: str, value: Any) -> dict[str, Any] | None:
    hsts = _mapping(key, value)
    if hsts is None:
        return None
    unknown = set(hsts) - {"max_age", "include_subdomains", "preload"}
    if unknown:
        raise _fail(key, f"unknown option(s) {sorted(unknown)}; use max_age, include_subdomains, preload.")
    merged = {**DEFAULTS["HSTS"], **hsts}
    merged["max_age"] = _int(f"{key}['max_age']", merged["max_age"])
    merged["include_subdomains"] = _bool(f"{key}['include_subdomains']", merged["include_subdomains"])
    merged["preload"] = _bool(f"{key}['preload']", merged["preload"])
    if merged["preload"] and (merged["max_age"] < 31536000 or not merged["include_subdomains"]):
        raise _fail(key, "preload needs max_age of at least 31536000 and include_subdomains=True.")
    return merged


def _policy(key: str, value: Any) -> dict[str, str] | str | None:
    if value is None or isinstance(value, str):
        if isinstance(value, str):
            _header_value(key, key, value)
        return value
    policy = _mapping(key, value)
    assert policy is not None
    for directive, content in policy.items():
        if not isinstance(directive, str) or not isinstance(content, str | list | tuple):
            raise _fail(key, f"directive {directive!r} needs a string value.")
        text = content if isinstance(content, str) else " ".join(content)
        _header_value(key, directive, text)
        policy[directive] = text
    return policy


def _frame_options(key: str, value: Any) -> str | None:
    if value is None:
        return None
    return _choice(key, str(value).upper(), ("DENY", "SAMEORIGIN"))


def _sanitizer(key: str, value: Any) -> str:
    backend = _choice(key, value, ("bleach", "nh3"))
    if backend == "nh3":
        try:
            import nh3  # noqa: F401
        except ImportError:
            raise _fail(key, 'nh3 is not installed. Run pip install "flask-apiguard[nh3]".') from None
    return backend


def _error_type_base(key: str, value: Any) -> str | None:
    base = _str(key, value, optional=True)
    if base is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", base):
        raise _fail(key, f"{base!r} is not an absolute URI, e.g. 'https://errors.example.com/'.")
    return base


def _jwt_keys(key: str, value: Any, instance_path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_absolute():
            path = Path(instance_path) / path
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise _fail(key, f"cannot read the JWKS file {str(path)!r} ({exc.strerror}).") from None
        except ValueError:
            raise _fail(key, f"the JWKS file {str(path)!r} is not valid JSON.") from None
    if not isinstance(value, Mapping) or not value:
        raise _fail(key, "expected {kid: key}, a JWKS dict {'keys': [...]}, or a JWKS file path.")
    return dict(value)


def _signing_key_id(key: str, value: Any, keys: Mapping[str, Any] | None) -> str | None:
    kid = _str(key, value, optional=True)
    if kid is not None and keys is None:
        raise _fail(key, "is set but APIGUARD_JWT_KEYS is not; name a kid of APIGUARD_JWT_KEYS.")
    return kid


# -- the entry point --------------------------------------------------------------------------

_SIMPLE: dict[str, Callable[[str, Any], Any]] = {
    "DEFAULT_DENY": _bool,
    "PUBLIC_ENDPOINTS": lambda k, v: frozenset(_list(k, v) or ()),
    "STORAGE_URI": _storage_uri,
    "STORAGE_OPTIONS": lambda k, v: _mapping(k, v, optional=False),
    "MEMORY_STORAGE_MAX_KEYS": lambda k, v: _int(k, v, minimum=1),
    "JWT_SECRET": _bytes_key,
    "JWT_PRIVATE_KEY": _bytes_key,
    "JWT_PUBLIC_KEY": _bytes_key,
    "JWT_MAX_LENGTH": lambda k, v: _int(k, v, minimum=64),
    "JWT_MAX_AGE": lambda k, v: _int(k, v, minimum=1, optional=True),
    "JWT_ALGORITHMS": _algorithms,
    "JWT_ISSUER": lambda k, v: _str(k, v, optional=True),
    "JWT_AUDIENCE": lambda k, v: _list(k, [v] if isinstance(v, str) else v, optional=True),
    "JWT_REQUIRED_CLAIMS": lambda k, v: _list(k, v),
    "JWT_EXPIRES_IN": lambda k, v: _int(k, v, minimum=1),
    "JWT_ROLES_CLAIM": _str,
    "JWT_REVOCATION": _bool,
    "JWT_CACHE_SIZE": lambda k, v: _int(k, v, minimum=0),
    "API_KEY_HEADER": _header_name,
    "API_KEY_STORE": _api_key_store,
    "AUTH_FAILURE_LIMIT": _limit,
    "RATELIMIT_DEFAULT": _limit,
    "RATELIMIT_HEADERS": _bool,
    "RATELIMIT_ON_STORAGE_ERROR": lambda k, v: _choice(k, v, ("fallback", "open", "closed")),
    "CORS_ORIGINS": _cors_origins,
    "CORS_METHODS": _methods,
    "CORS_HEADERS": _header_names,
    "CORS_EXPOSE_HEADERS": _header_names,
    "CORS_CREDENTIALS": _bool,
    "CORS_MAX_AGE": lambda k, v: _int(k, v, optional=True),
    "FORCE_HTTPS": _bool,
    "HSTS": _hsts,
    "CSP": _policy,
    "FRAME_OPTIONS": _frame_options,
    "REFERRER_POLICY": lambda k, v: _str(k, v, optional=True),
    "PERMISSIONS_POLICY": _policy,
    "EXTRA_HEADERS": _extra_headers,
    "CACHE_CONTROL": lambda k, v: _str(k, v, optional=True),
    "MAX_CONTENT_LENGTH": lambda k, v: _int(k, v, minimum=1, optional=True),
    "MAX_JSON_DEPTH": lambda k, v: _int(k, v, minimum=1),
    "JSON_ONLY": _bool,
    "REJECT_OPERATOR_KEYS": _bool,
    "DUPLICATE_PARAMS": lambda k, v: _choice(k, v, ("reject", "first", "last", "allow")),
    "TRUSTED_HOSTS": _trusted_hosts,
    "TRUSTED_PROXIES": lambda k, v: _int(k, v, minimum=0),
    "ALLOWED_METHODS": lambda k, v: frozenset(_methods(k, v)),
    "REQUEST_ID_HEADER": _header_name,
    "TRUST_REQUEST_ID": _bool,
    "SANITIZER": _sanitizer,
    "SECURITY_LOG": _bool,
    "ERROR_TYPE_BASE": _error_type_base,
}


def load_config(config: Mapping[str, Any], instance_path: str = ".") -> GuardConfig:
    """Parse and validate every ``APIGUARD_*`` key of ``config`` (an app's ``config``).

    :raises ApiGuardConfigError: for an unknown key or a bad value, naming the key.
    """
    given = {k[len(PREFIX):]: v for k, v in config.items() if k.startswith(PREFIX)}
    for name in given:
        if name not in DEFAULTS:
            close = difflib.get_close_matches(name, DEFAULTS, n=1)
            hint = f" Did you mean {PREFIX}{close[0]}?" if close else ""
            raise ApiGuardConfigError(f"{PREFIX}{name}: unknown setting.{hint}")
    raw = {**DEFAULTS, **given}
    parsed: dict[str, Any] = {}
    for name, parse in _SIMPLE.items():
        parsed[name] = parse(name, raw[name])

    parsed["JWT_KEYS"] = _jwt_keys("JWT_KEYS", raw["JWT_KEYS"], instance_path)
    parsed["JWT_SIGNING_KEY_ID"] = _signing_key_id(
        "JWT_SIGNING_KEY_ID", raw["JWT_SIGNING_KEY_ID"], parsed["JWT_KEYS"]
    )
    leeway = raw["JWT_LEEWAY"]
    if isinstance(leeway, bool) or not isinstance(leeway, int | float) or leeway < 0:
        if isinstance(leeway, str) and leeway.strip().replace(".", "", 1).isdigit():
            leeway = float(leeway)
        else:
            raise _fail("JWT_LEEWAY", f"expected a number of seconds >= 0, got {leeway!r}.")
    parsed["JWT_LEEWAY"] = float(leeway)

    from limits.strategies import STRATEGIES

    parsed["RATELIMIT_STRATEGY"] = _choice(
        "RATELIMIT_STRATEGY", raw["RATELIMIT_STRATEGY"], tuple(STRATEGIES)
    )
    prefix = _str("API_KEY_PREFIX", raw["API_KEY_PREFIX"])
    assert prefix is not None
    if not re.fullmatch(r"[a-z0-9]{2,16}", prefix):
        raise _fail("API_KEY_PREFIX", f"{prefix!r} must be 2 to 16 lowercase letters or digits.")
    parsed["API_KEY_PREFIX"] = prefix

    secret = parsed["JWT_SECRET"]
    if secret is not None and len(secret) < 32:
        raise _fail(
            "JWT_SECRET",
            f"is {len(secret)} bytes; at least 32 are required for HMAC (RFC 7518 section 3.2). "
            'Generate one with: python -c "import secrets; print(secrets.token_urlsafe(48))"',
        )
    if "exp" not in parsed["JWT_REQUIRED_CLAIMS"] and parsed["JWT_MAX_AGE"] is None:
        raise _fail(
            "JWT_REQUIRED_CLAIMS",
            "'exp' must stay required: a token without it would never expire. Keep 'exp', or "
            "set APIGUARD_JWT_MAX_AGE to bound tokens by their 'iat' instead.",
        )
    if parsed["JWT_REVOCATION"] and "jti" not in parsed["JWT_REQUIRED_CLAIMS"]:
        parsed["JWT_REQUIRED_CLAIMS"] = (*parsed["JWT_REQUIRED_CLAIMS"], "jti")
    if parsed["JWT_MAX_AGE"] is not None and "iat" not in parsed["JWT_REQUIRED_CLAIMS"]:
        parsed["JWT_REQUIRED_CLAIMS"] = (*parsed["JWT_REQUIRED_CLAIMS"], "iat")

    if parsed["CORS_CREDENTIALS"]:
        for origin in parsed["CORS_ORIGINS"]:
            if origin in ("*", "null"):
                raise _fail(
                    "CORS_CREDENTIALS",
                    f"True with the origin {origin!r} in APIGUARD_CORS_ORIGINS is refused: any site "
                    "could then make credentialed requests. List the exact origins instead.",
                )
            if origin.startswith("re:") and _matches_anything(origin[3:]):
                raise _fail(
                    "CORS_CREDENTIALS",
                    f"True with the pattern {origin!r} is refused: it matches arbitrary origins. "
                    "Anchor it to your own domain, e.g. 're:https://[a-z0-9-]+\\.example\\.com'.",
                )

    return GuardConfig(**{name.lower(): parsed[name] for name in DEFAULTS}, raw=raw)


def _matches_anything(pattern: str) -> bool:
    """True when a CORS origin pattern admits origins no one would mean to trust."""
    compiled = re.compile(pattern, re.IGNORECASE)
    probes = ("null", "https://attacker.invalid", "http://evil.test", "https://x.evil.invalid")
    return any(compiled.fullmatch(probe) for probe in probes)
