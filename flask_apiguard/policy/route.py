"""What the pipeline enforces for one (endpoint, method): the :class:`Route` compiled from the
view's declarations and the app's config."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ApiGuardConfigError, ApiGuardError, Forbidden, Unauthorized
from ..identity import Identity, holds
from ..networks import NetworkSet, intersection
from ..ratelimit.probes import (
    CompiledLimit,
    LimitSource,
    compile_concurrency,
    compile_limits,
    compile_sources,
)
from .declared import (
    Deprecation,
    Policy,
    ValidationSpec,
    declared_policy,
)

if TYPE_CHECKING:
    from ..config import GuardConfig
    from ..ratelimit.adopt import AdoptedRoute

@dataclass(frozen=True, slots=True)
class Route:
    """The compiled policy of one (endpoint, method): what the pipeline enforces."""

    endpoint: str
    public: bool
    jwt: bool
    api_key: bool
    required: bool
    role_rules: tuple[tuple[frozenset[str], str], ...]
    scope_rules: tuple[frozenset[str], ...]
    api_key_scopes: frozenset[str]
    limits: tuple[CompiledLimit, ...]
    validations: tuple[ValidationSpec, ...]
    accepts_form: bool
    list_query_fields: frozenset[str]
    declared: Policy
    #: The view function it was compiled for: a replaced view is compiled anew.
    view: Callable[..., Any]
    #: ``@deprecated``: the declaration, the headers every response gets (``()`` when not
    #: deprecated) and, when ``APIGUARD_SUNSET_ENFORCE`` is on, the Unix time of the sunset,
    #: from which the view answers 410.
    deprecation: Deprecation | None = None
    deprecation_headers: tuple[tuple[str, str], ...] = ()
    gone_at: float | None = None
    #: The limits of an adopted flask-limiter ``Limiter`` (``None`` when it has none here).
    adopted: AdoptedRoute | None = None
    #: ``@allow_networks`` (of every level that declares it, intersected): the client address
    #: must be in it; ``None``: any address.
    networks: NetworkSet | None = None
    #: Limits decided per request (a ``limit=`` or ``exempt_when=`` callable), or ``None``
    #: when :attr:`limits` serves every request.
    limit_sources: tuple[LimitSource, ...] | None = None
    #: ``@concurrency_limit``: places in flight per client (``()``: none).
    concurrency: tuple[CompiledLimit, ...] = ()
    #: True when :attr:`limits` serve every request as they are: no callable, no
    #: concurrency places, no exempt networks (the pipeline's one check for all of them).
    plain_limits: bool = True


#: The order ``@validate`` locations are loaded in (the cheapest first, the body last).
_LOAD_ORDER = ("path", "headers", "query", "form", "json")


def compile_route(endpoint: str, method: str, view: Callable[..., Any], config: GuardConfig,
                  rule_arguments: Iterable[str]) -> Route:
    """The :class:`Route` of ``view`` serving ``method`` at ``endpoint``, under ``config``.

    :param rule_arguments: the names of the endpoint's URL rule arguments (a ``@validate``
        argument may not reuse one).
    :raises ApiGuardConfigError: when a ``@validate`` argument name is a URL rule argument.
    """
    declared = declared_policy(view, method)
    public = declared.public or (
        endpoint in config.public_endpoints and not declared.needs_identity
    )
    methods = declared.methods or {"jwt", "api_key"}
    # Fail closed: roles and scopes (part of needs_identity) demand an authenticated caller
    # whatever an optional=True at another level (class, view, method) says.
    required = not public and (
        (config.default_deny and not declared.optional) or declared.needs_identity
    )
    arguments = set(rule_arguments)
    for spec in declared.validations.values():
        if spec.arg_name in arguments:
            raise ApiGuardConfigError(
                f"@validate on {endpoint!r}: the URL rule already has an argument named "
                f"{spec.arg_name!r}; pass arg_name= to name the loaded data differently."
            )
    query_spec = declared.validations.get("query")
    deprecation = declared.deprecation
    limit_sources = None if declared.rate_limit_exempt else compile_sources(
        declared.rate_limits, endpoint
    )
    concurrency = compile_concurrency(declared.concurrency, endpoint)
    return Route(
        endpoint=endpoint,
        public=public,
        jwt=not public and "jwt" in methods,
        api_key=not public and "api_key" in methods,
        required=required,
        role_rules=tuple(declared.role_rules),
        scope_rules=tuple(declared.scope_rules),
        api_key_scopes=declared.api_key_scopes,
        limits=() if declared.rate_limit_exempt else compile_limits(
            declared.rate_limits, endpoint, config.ratelimit_default
        ),
        limit_sources=limit_sources,
        networks=intersection(declared.networks),
        concurrency=concurrency,
        plain_limits=limit_sources is None and not concurrency
        and config.ratelimit_exempt_networks is None,
        validations=tuple(declared.validations[loc] for loc in _LOAD_ORDER
                          if loc in declared.validations),
        accepts_form="form" in declared.validations,
        list_query_fields=query_spec.list_fields if query_spec else frozenset(),
        declared=declared,
        view=view,
        deprecation=deprecation,
        deprecation_headers=deprecation.headers() if deprecation is not None else (),
        gone_at=deprecation.sunset.timestamp()
        if deprecation is not None and deprecation.sunset is not None and config.sunset_enforce
        else None,
    )


def authorization_refusal(route: Route, identity: Identity) -> ApiGuardError | None:
    """Step 8 for ``route``: default-deny, roles and scopes (no I/O); ``None`` admits."""
    if not identity.is_authenticated:
        return Unauthorized() if route.required else None
    for names, require in route.role_rules:
        if not holds(identity.roles, names, require):
            return Forbidden("You lack a role this action requires.")
    for needed in route.scope_rules:
        if not needed <= identity.scopes:
            return Forbidden("Your credentials lack a scope this action requires.")
    if route.api_key_scopes and identity.method == "api_key" \
            and not route.api_key_scopes <= identity.scopes:
        return Forbidden("The API key lacks a scope this action requires.")
    return None
