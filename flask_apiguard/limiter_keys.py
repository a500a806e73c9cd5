"""flask-limiter's ``RATELIMIT_*`` keys, honoured where no ``APIGUARD_*`` key is set.

Each key is mapped to the guard's equivalent (``docs/config.rst``, "flask-limiter keys").
A ``RATELIMIT_*`` key and its ``APIGUARD_*`` equivalent set to different values is a
start-up error naming both. Keys the adopted limiter reads itself (its application and
default limits, ``RATELIMIT_KEY_PREFIX``, ``RATELIMIT_ON_BREACH_CALLBACK``) take effect
through it; :func:`keys_without_effect` lists the rest for ``flask apiguard check``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from .errors import ApiGuardConfigError
from .readers import PREFIX


def _on_error(value: Any, when_true: str) -> str | None:
    return when_true if value is True else None


#: ``RATELIMIT_*`` key -> (guard key without ``APIGUARD_``, how its value converts; ``None``
#: from the converter means "no effect").
MAPPED: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "RATELIMIT_STORAGE_URI": ("STORAGE_URI", lambda v: v or None),
    "RATELIMIT_STORAGE_OPTIONS": ("STORAGE_OPTIONS", lambda v: dict(v) if v else None),
    "RATELIMIT_STRATEGY": ("RATELIMIT_STRATEGY", lambda v: v or None),
    "RATELIMIT_HEADERS_ENABLED": ("RATELIMIT_HEADERS", lambda v: bool(v)),
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": (
        "RATELIMIT_ON_STORAGE_ERROR", lambda v: _on_error(v, "fallback")),
    # not "open": that would also switch the auth-failure limit off while the storage is down
    "RATELIMIT_SWALLOW_ERRORS": ("RATELIMIT_ON_STORAGE_ERROR", lambda v: _on_error(v, "fallback")),
}

#: Read by an adopted limiter itself (through it they take effect as under flask-limiter).
THROUGH_LIMITER = frozenset({
    "RATELIMIT_ENABLED", "RATELIMIT_DEFAULT", "RATELIMIT_DEFAULTS_PER_METHOD",
    "RATELIMIT_DEFAULTS_EXEMPT_WHEN", "RATELIMIT_DEFAULTS_DEDUCT_WHEN", "RATELIMIT_DEFAULTS_COST",
    "RATELIMIT_APPLICATION", "RATELIMIT_APPLICATION_PER_METHOD",
    "RATELIMIT_APPLICATION_EXEMPT_WHEN", "RATELIMIT_APPLICATION_DEDUCT_WHEN",
    "RATELIMIT_APPLICATION_COST", "RATELIMIT_KEY_PREFIX", "RATELIMIT_ON_BREACH_CALLBACK",
})

#: Refused whatever the adoption: the guard cannot reproduce them.
REFUSED = {
    "RATELIMIT_META": "meta limits are not supported; remove it",
    "RATELIMIT_ON_META_BREACH_CALLBACK": "meta limits are not supported; remove it",
    "RATELIMIT_IN_MEMORY_FALLBACK": (
        "separate fallback limits have no equivalent; remove it (with "
        "APIGUARD_RATELIMIT_ON_STORAGE_ERROR='fallback' the same limits apply per process)"),
    "RATELIMIT_REQUEST_IDENTIFIER": (
        "a custom request identifier is not supported; remove it (limits are per endpoint)"),
}


def inherited(config: Mapping[str, Any], limiter: Mapping[str, Any] | None) -> dict[str, Any]:
    """The guard settings (names without ``APIGUARD_``) that ``RATELIMIT_*`` keys, and the
    adopted limiter's own settings (``limiter``, from ``adopt.limiter_settings``), give where
    no ``APIGUARD_*`` key is set.

    :raises ApiGuardConfigError: for a refused key, or for a ``RATELIMIT_*`` key (or the
        limiter's setting) that contradicts the ``APIGUARD_*`` key set beside it.
    """
    for key, why in REFUSED.items():
        if config.get(key):
            raise ApiGuardConfigError(f"{key}: {why}.")
    found: dict[str, tuple[str, Any]] = {}
    for key, (name, convert) in MAPPED.items():
        if key in config:
            value = convert(config[key])
            if value is not None and name not in found:
                found[name] = (key, value)
    adopted = limiter is not None
    if not adopted:
        if config.get("RATELIMIT_APPLICATION"):
            raise ApiGuardConfigError(
                "RATELIMIT_APPLICATION: an application-wide limit has no APIGUARD_* "
                "equivalent; keep the flask-limiter Limiter on the app (ApiGuard adopts it) "
                "or use @rate_limit(..., scope=...) on the views."
            )
        default = config.get("RATELIMIT_DEFAULT")
        if isinstance(default, str) and default:
            found["RATELIMIT_DEFAULT"] = ("RATELIMIT_DEFAULT", default)
        if config.get("RATELIMIT_ENABLED") is False:
            found["RATELIMIT_DEFAULT"] = ("RATELIMIT_ENABLED", None)
    else:
        for name, value in limiter.items():  # type: ignore[union-attr]
            if value is not None:
                found[name] = (f"the adopted Limiter's {name.lower()}", value)
        # The limiter's own default limits play the part of APIGUARD_RATELIMIT_DEFAULT.
        found.setdefault("RATELIMIT_DEFAULT", ("an adopted Limiter", None))
    result: dict[str, Any] = {}
    for name, (source, value) in found.items():
        guard_key = PREFIX + name
        if guard_key in config:
            if source.startswith("RATELIMIT_") and config[guard_key] != value:
                raise ApiGuardConfigError(
                    f"{guard_key} and {source} are both set, to different values "
                    f"({config[guard_key]!r} and {config[source]!r}); keep one of them."
                )
            if source.startswith("the adopted") and config[guard_key] != value:
                raise ApiGuardConfigError(
                    f"{guard_key} is {config[guard_key]!r} but {source} is {value!r}: the "
                    "guard counts the adopted limits in the limiter's storage with its "
                    f"strategy. Set {guard_key} to {value!r}, or remove it."
                )
            continue
        result[name] = value
    return result


def keys_without_effect(config: Mapping[str, Any], adopted: bool) -> list[str]:
    """The ``RATELIMIT_*`` keys of ``config`` that change nothing under the guard."""
    honoured = set(MAPPED) | {"RATELIMIT_DEFAULT", "RATELIMIT_ENABLED"}
    if adopted:
        honoured |= THROUGH_LIMITER
    return sorted(k for k in config if k.startswith("RATELIMIT_") and k not in honoured)
