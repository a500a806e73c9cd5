"""flask-apiguard: harden a Flask REST API in one line, ``ApiGuard(app)``."""

from __future__ import annotations

from . import fields, signals
from .apikeys import ApiKey
from .context import current_identity
from .errors import ApiGuardConfigError, ApiGuardError
from .extension import ApiGuard
from .identity import Identity
from .policy import (
    allow_networks,
    concurrency_limit,
    deprecated,
    public,
    rate_limit,
    rate_limit_exempt,
    require_api_key,
    require_jwt,
    roles,
    scopes,
    validate,
)

__version__ = "0.1.0"

__all__ = [
    "ApiGuard",
    "ApiGuardConfigError",
    "ApiGuardError",
    "ApiKey",
    "Identity",
    "allow_networks",
    "concurrency_limit",
    "current_identity",
    "deprecated",
    "fields",
    "public",
    "rate_limit",
    "rate_limit_exempt",
    "require_api_key",
    "require_jwt",
    "roles",
    "scopes",
    "signals",
    "validate",
]
