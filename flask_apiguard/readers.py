"""Readers of ``APIGUARD_*`` values: each takes the key (without the prefix) and the raw value,
and returns the parsed value or raises :class:`ApiGuardConfigError` naming the key, what is
wrong and how to fix it. :mod:`flask_apiguard.config` maps every key to one of them."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ApiGuardConfigError
from .networks import NetworkSet, parse_networks

PREFIX = "APIGUARD_"

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


def fail(key: str, problem: str) -> ApiGuardConfigError:
    return ApiGuardConfigError(f"{PREFIX}{key}: {problem}")


# -- small typed readers -----------------------------------------------------------------

def boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise fail(key, f"expected True or False, got {value!r}.")


def integer(key: str, value: Any, *, minimum: int = 0, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int):
        hint = " or None" if optional else ""
        raise fail(key, f"expected a whole number{hint}, got {value!r}.")
    if value < minimum:
        raise fail(key, f"must be at least {minimum}, got {value}.")
    return value


def string(key: str, value: Any, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip():
        hint = " or None" if optional else ""
        raise fail(key, f"expected a non-empty string{hint}, got {value!r}.")
    return value


def string_list(key: str, value: Any, *, optional: bool = False) -> tuple[str, ...] | None:
    """A list of strings; a comma-separated string (as from an environment variable) works."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple | set | frozenset):
        raise fail(key, f"expected a list of strings, got {type(value).__name__}.")
    items = list(value)
    for item in items:
        if not isinstance(item, str) or not item:
            raise fail(key, f"every entry must be a non-empty string, got {item!r}.")
    return tuple(items)


def choice(key: str, value: Any, choices: Iterable[str]) -> str:
    options = tuple(choices)
    if value not in options:
        raise fail(key, f"must be one of {', '.join(repr(c) for c in options)}, got {value!r}.")
    return str(value)


def mapping(key: str, value: Any, *, optional: bool = True) -> dict[str, Any] | None:
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise fail(key, "expected a dict (or a JSON object string).") from None
    if not isinstance(value, Mapping):
        raise fail(key, f"expected a dict, got {type(value).__name__}.")
    return dict(value)


def bytes_key(key: str, value: Any) -> bytes | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    raise fail(key, f"expected a string or bytes, got {type(value).__name__}.")


def limit(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise fail(key, f'expected a limit such as "100 per 15 minutes", or None; got {value!r}.')
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

def networks(key: str, value: Any) -> NetworkSet | None:
    """A list of CIDRs (or addresses), compiled for lookups; ``None`` when empty."""
    if value is None:
        return None
    try:
        found = parse_networks(value, f"{PREFIX}{key}")
    except ValueError as exc:
        raise ApiGuardConfigError(str(exc)) from None
    return NetworkSet(found) if found else None


def storage_uri(key: str, value: Any) -> str:
    uri = string(key, value)
    assert uri is not None
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme not in STORAGE_SCHEMES:
        raise fail(
            key,
            f"unsupported storage {uri.split('://', 1)[0]!r}. Use memory:// for one process, "
            "or redis://, rediss://, redis+cluster:// or redis+sentinel:// to share state "
            "between processes.",
        )
    return uri


#: ``dialect://…`` or ``dialect+driver://…``: a SQLAlchemy database URL.
_SQL_URL = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\+[A-Za-z0-9_]+)?://.+")


def api_key_store(key: str, value: Any) -> str:
    uri = string(key, value)
    assert uri is not None
    if uri == "memory://" or uri.startswith(("redis://", "rediss://", "redis+unix://")):
        return uri
    if uri.startswith("sqlite:///") and len(uri) > len("sqlite:///"):
        return uri
    if _SQL_URL.fullmatch(uri) and not uri.lower().startswith(("sqlite://", "postgres://")):
        return uri  # a SQLAlchemy URL: the store checks its dialect and driver when it opens
    scheme, _, rest = uri.partition("://")
    shown = f"{scheme}://{rest.rpartition('@')[2].split('?', 1)[0]}" if rest else uri
    raise fail(
        key,
        f"unsupported store {shown!r}. Use sqlite:///relative/path (inside the app's instance "
        "folder), sqlite:////absolute/path, memory://, redis://host:port/db or a SQLAlchemy "
        "URL such as postgresql+psycopg://user@host/db or mysql+pymysql://user@host/db.",
    )


def algorithms(key: str, value: Any) -> tuple[str, ...]:
    algorithms = string_list(key, value)
    assert algorithms is not None
    if not algorithms:
        raise fail(key, 'at least one algorithm is needed, for example ["HS256"].')
    known = HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS
    for alg in algorithms:
        if alg.lower() == "none":
            raise fail(key, '"none" is never accepted: unsigned tokens would let anyone in.')
        if alg not in known:
            raise fail(key, f"unknown algorithm {alg!r}. Choose from {sorted(known)}.")
    hmac_used = set(algorithms) & HMAC_ALGORITHMS
    if hmac_used and set(algorithms) - HMAC_ALGORITHMS:
        raise fail(
            key,
            "mixing HMAC (HS*) and public-key algorithms is refused: a public key could then "
            "be used as an HMAC secret (algorithm confusion). Use one family.",
        )
    return algorithms


def trusted_hosts(key: str, value: Any) -> tuple[str, ...] | None:
    hosts = string_list(key, value, optional=True)
    if hosts is None:
        return None
    if not hosts:
        raise fail(key, "an empty list would refuse every request. Use None to switch the check off.")
    normalised = []
    for host in hosts:
        lowered = host.strip().lower()
        if not _HOST_RE.match(lowered):
            raise fail(
                key,
                f"{host!r} is not a host name. Write names like 'api.example.com', "
                "'.example.com' (the domain and every subdomain) or '*' (any host).",
            )
        normalised.append(lowered)
    return tuple(normalised)


def methods(key: str, value: Any) -> tuple[str, ...]:
    methods = string_list(key, value)
    assert methods is not None
    upper = tuple(m.upper() for m in methods)
    for method in upper:
        if not _TOKEN_RE.match(method):
            raise fail(key, f"{method!r} is not an HTTP method name.")
    return upper


def header_name(key: str, value: Any) -> str:
    name = string(key, value)
    assert name is not None
    if not _TOKEN_RE.match(name):
        raise fail(key, f"{name!r} is not a valid HTTP header name.")
    return name


def header_names(key: str, value: Any) -> tuple[str, ...]:
    names = string_list(key, value)
    assert names is not None
    for name in names:
        if not _TOKEN_RE.match(name):
            raise fail(key, f"{name!r} is not a valid HTTP header name.")
    return names


def _header_value(key: str, name: str, value: str) -> str:
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        raise fail(key, f"the value of {name!r} contains a control character.")
    return value


def cors_origins(key: str, value: Any) -> tuple[str, ...]:
    origins = string_list(key, value)
    assert origins is not None
    for origin in origins:
        if origin.startswith("re:"):
            try:
                re.compile(origin[3:])
            except re.error as exc:
                raise fail(key, f"{origin!r} is not a valid regular expression ({exc}).") from None
        elif origin not in ("*", "null") and not _ORIGIN.fullmatch(origin):
            hint = (" A wildcard needs a pattern, e.g. 're:https://[a-z0-9-]+\\.example\\.com'."
                    if "*" in origin else "")
            raise fail(
                key,
                f"{origin!r} is not an origin. Write scheme://host[:port] with no path or "
                "trailing slash (for example 'https://app.example.com'), or 're:<regex>'." + hint,
            )
    return origins


def extra_headers(key: str, value: Any, default: Mapping[str, str]) -> dict[str, str]:
    given = mapping(key, value, optional=True)
    merged = dict(default)
    for name, header_value in (given or {}).items():
        if not isinstance(name, str) or not _TOKEN_RE.match(name):
            raise fail(key, f"{name!r} is not a valid HTTP header name.")
        if header_value is None:
            for existing in [n for n in merged if n.lower() == name.lower()]:
                del merged[existing]
            continue
        if not isinstance(header_value, str):
            raise fail(key, f"the value of {name!r} must be a string or None to remove it.")
        for existing in [n for n in merged if n.lower() == name.lower()]:
            del merged[existing]
        merged[name] = _header_value(key, name, header_value)
    return merged


def hsts(key: str, value: Any, default: Mapping[str, Any]) -> dict[str, Any] | None:
    hsts = mapping(key, value)
    if hsts is None:
        return None
    unknown = set(hsts) - {"max_age", "include_subdomains", "preload"}
    if unknown:
        raise fail(key, f"unknown option(s) {sorted(unknown)}; use max_age, include_subdomains, preload.")
    merged = {**default, **hsts}
    merged["max_age"] = integer(f"{key}['max_age']", merged["max_age"])
    merged["include_subdomains"] = boolean(f"{key}['include_subdomains']", merged["include_subdomains"])
    merged["preload"] = boolean(f"{key}['preload']", merged["preload"])
    if merged["preload"] and (merged["max_age"] < 31536000 or not merged["include_subdomains"]):
        raise fail(key, "preload needs max_age of at least 31536000 and include_subdomains=True.")
    return merged


def header_policy(key: str, value: Any) -> dict[str, str] | str | None:
    if value is None or isinstance(value, str):
        if isinstance(value, str):
            _header_value(key, key, value)
        return value
    policy = mapping(key, value)
    assert policy is not None
    for directive, content in policy.items():
        if not isinstance(directive, str) or not isinstance(content, str | list | tuple):
            raise fail(key, f"directive {directive!r} needs a string value.")
        text = content if isinstance(content, str) else " ".join(content)
        _header_value(key, directive, text)
        policy[directive] = text
    return policy


def frame_options(key: str, value: Any) -> str | None:
    if value is None:
        return None
    return choice(key, str(value).upper(), ("DENY", "SAMEORIGIN"))


def sanitizer(key: str, value: Any) -> str:
    backend = choice(key, value, ("bleach", "nh3"))
    if backend == "nh3":
        try:
            import nh3  # noqa: F401
        except ImportError:
            raise fail(key, 'nh3 is not installed. Run pip install "flask-apiguard[nh3]".') from None
    return backend


def error_type_base(key: str, value: Any) -> str | None:
    base = string(key, value, optional=True)
    if base is not None and not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", base):
        raise fail(key, f"{base!r} is not an absolute URI, e.g. 'https://errors.example.com/'.")
    return base


def openapi_route(key: str, value: Any, example: str = "/openapi.json") -> str | None:
    """A fixed URL path for a route the guard adds (``None``: no route)."""
    route = string(key, value, optional=True)
    if route is not None and (not route.startswith("/") or "<" in route or any(
            ch.isspace() for ch in route)):
        raise fail(key, f"{route!r} is not a URL path. Write a fixed path such as {example!r}, "
                        "or None to serve no document.")
    return route


def openapi_info(key: str, value: Any) -> dict[str, Any]:
    info = mapping(key, value, optional=False)
    assert info is not None
    for name in ("title", "version", "description"):
        if name in info and (not isinstance(info[name], str) or not info[name]):
            raise fail(key, f"{name!r} must be a non-empty string.")
    for name in info:
        if not isinstance(name, str):
            raise fail(key, f"keys must be strings (OpenAPI info fields), got {name!r}.")
    return info


def jwt_keys(key: str, value: Any, instance_path: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str | os.PathLike):
        path = Path(value)
        if not path.is_absolute():
            path = Path(instance_path) / path
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise fail(key, f"cannot read the JWKS file {str(path)!r} ({exc.strerror}).") from None
        except ValueError:
            raise fail(key, f"the JWKS file {str(path)!r} is not valid JSON.") from None
    if not isinstance(value, Mapping) or not value:
        raise fail(key, "expected {kid: key}, a JWKS dict {'keys': [...]}, or a JWKS file path.")
    return dict(value)


def signing_key_id(key: str, value: Any, keys: Mapping[str, Any] | None) -> str | None:
    kid = string(key, value, optional=True)
    if kid is not None and keys is None:
        raise fail(key, "is set but APIGUARD_JWT_KEYS is not; name a kid of APIGUARD_JWT_KEYS.")
    return kid


# -- the entry point --------------------------------------------------------------------------


def matches_anything(pattern: str) -> bool:
    """True when a CORS origin pattern admits origins no one would mean to trust."""
    compiled = re.compile(pattern, re.IGNORECASE)
    probes = ("null", "https://attacker.invalid", "http://evil.test", "https://x.evil.invalid")
    return any(compiled.fullmatch(probe) for probe in probes)


# -- identity providers --------------------------------------------------------------------

_DISCOVERY_PATH = "/.well-known/openid-configuration"


def url_problem(url: str) -> str | None:
    """Why keys may not be fetched from ``url`` (``https://`` only; ``http://`` only from a
    loopback host), or ``None``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return f"{url!r} is not a URL."
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host and _is_loopback(host):
        return None
    return (f"{url!r} is refused: keys are fetched over https:// only (http:// only from a "
            "loopback host such as 127.0.0.1, for tests).")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch_url(key: str, value: Any, *, optional: bool = True) -> str | None:
    """A URL keys may be fetched from (see :func:`url_problem`)."""
    url = string(key, value, optional=optional)
    if url is not None and (problem := url_problem(url)):
        raise fail(key, problem)
    return url


def discovery_url(issuer: str) -> str:
    """The OpenID discovery document's URL for ``issuer`` (OpenID Connect Discovery 1.0)."""
    return issuer.rstrip("/") + _DISCOVERY_PATH
