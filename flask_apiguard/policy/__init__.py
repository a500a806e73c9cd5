"""What a view declares (:class:`Policy`, and the decorators that record it), and what the
pipeline enforces for one (endpoint, method): the :class:`Route` compiled from it.

Decorators only record; ApiGuard's pipeline enforces. Their order on a view does not matter,
they work on plain functions, blueprint views, ``View``/``MethodView`` classes and their
methods, and on async views. Contradictions (``@public`` with ``@roles``, two ``@validate`` for
one location) raise :class:`TypeError` when the module is imported, not at the first request.
"""

from __future__ import annotations

from .declared import (
    AUTH_METHODS,
    KEY_KINDS,
    LOCATIONS,
    POLICY_ATTR,
    Deprecation,
    Policy,
    RateLimitSpec,
    ValidationSpec,
    declared_policy,
    get_policy,
    handler_of,
    own_policy,
    view_methods,
)
from .decorators import (
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
from .route import Route, compile_route

__all__ = [
    "AUTH_METHODS", "KEY_KINDS", "LOCATIONS", "POLICY_ATTR", "Deprecation", "Policy",
    "RateLimitSpec", "Route", "ValidationSpec", "allow_networks", "compile_route",
    "concurrency_limit", "declared_policy", "deprecated", "get_policy", "handler_of",
    "own_policy", "public", "rate_limit", "rate_limit_exempt",
    "require_api_key", "require_jwt", "roles", "scopes", "validate", "view_methods",
]
