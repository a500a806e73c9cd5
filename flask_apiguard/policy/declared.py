"""What a view declared: :class:`Policy` and its parts, read from a view function, its class
and the method that serves a request."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, TypeVar

from limits import RateLimitItem

from ..networks import NetworkSet

if TYPE_CHECKING:
    pass

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")

#: The attribute that carries a view's :class:`Policy`.
POLICY_ATTR = "__apiguard_policy__"

LOCATIONS = ("json", "query", "form", "headers", "path")
KEY_KINDS = ("auto", "ip", "user", "api_key")
AUTH_METHODS = ("jwt", "api_key")


@dataclass(frozen=True, slots=True)
class RateLimitSpec:
    """One ``@rate_limit`` declaration."""

    #: The limit string, or a zero-argument callable returning one per request.
    limit: str | Callable[[], str]
    #: The parsed limit string (empty for a callable).
    items: tuple[RateLimitItem, ...]
    key: str | Callable[[], str]
    count: str = "all"
    scope: str | None = None
    cost: int = 1
    #: A zero-argument callable: when it returns true, this limit is skipped for the request.
    exempt_when: Callable[[], object] | None = None


@dataclass(frozen=True, slots=True)
class ValidationSpec:
    """One ``@validate`` declaration; ``schema`` is a marshmallow schema instance built once."""

    location: str
    schema: Any
    arg_name: str
    #: Names (as sent) of fields that accept several values, e.g. ``fields.List`` in a query.
    list_fields: frozenset[str]


@dataclass(frozen=True, slots=True)
class Deprecation:
    """One ``@deprecated`` declaration, its dates aware and in UTC."""

    sunset: datetime | None
    link: str | None
    replacement: str | None
    since: datetime | None

    def headers(self) -> tuple[tuple[str, str], ...]:
        """``Deprecation`` (RFC 9745), ``Sunset`` (RFC 8594) and ``Link`` (RFC 8288), once."""
        since = int(self.since.timestamp()) if self.since is not None else 0
        out = [("Deprecation", f"@{since}")]
        if self.sunset is not None:
            out.append(("Sunset", format_datetime(self.sunset, usegmt=True)))
        links = []
        if self.link is not None:
            links.append(f'<{self.link}>; rel="deprecation"; type="text/html"')
        if self.replacement is not None:
            links.append(f'<{self.replacement}>; rel="successor-version"')
        if links:
            out.append(("Link", ", ".join(links)))
        return tuple(out)


@dataclass(slots=True)
class Policy:
    """The security policy a view declared. ``None``/empty means "not declared here"."""

    public: bool = False
    optional: bool = False
    methods: set[str] = field(default_factory=set)
    api_key_scopes: frozenset[str] = frozenset()
    role_rules: list[tuple[frozenset[str], str]] = field(default_factory=list)
    scope_rules: list[frozenset[str]] = field(default_factory=list)
    rate_limits: list[RateLimitSpec] = field(default_factory=list)
    rate_limit_exempt: bool = False
    validations: dict[str, ValidationSpec] = field(default_factory=dict)
    deprecation: Deprecation | None = None
    #: ``@allow_networks``, one set per level that declares it (all of them must match).
    networks: list[NetworkSet] = field(default_factory=list)
    #: ``@concurrency_limit``: ``(n, key)`` each; every one applies.
    concurrency: list[tuple[int, str | Callable[[], str]]] = field(default_factory=list)

    @property
    def needs_identity(self) -> bool:
        """True when the declarations alone demand an authenticated caller."""
        return bool(
            (self.methods and not self.optional) or self.role_rules or self.scope_rules
            or self.api_key_scopes
        )

    def copy(self) -> Policy:
        return Policy(
            public=self.public,
            optional=self.optional,
            methods=set(self.methods),
            api_key_scopes=self.api_key_scopes,
            role_rules=list(self.role_rules),
            scope_rules=list(self.scope_rules),
            rate_limits=list(self.rate_limits),
            rate_limit_exempt=self.rate_limit_exempt,
            validations=dict(self.validations),
            deprecation=self.deprecation,
            networks=list(self.networks),
            concurrency=list(self.concurrency),
        )

    def merge(self, more_specific: Policy) -> Policy:
        """Combine with a more specific level (class < view < method).

        Requirements (roles, scopes, limits, validations) add up; the authentication mode of the
        most specific level that declares one wins.
        """
        merged = self.copy()
        if more_specific.public or more_specific.methods or more_specific.optional:
            merged.public = more_specific.public
            merged.optional = more_specific.optional
            merged.methods = set(more_specific.methods)
        merged.api_key_scopes |= more_specific.api_key_scopes
        merged.role_rules += more_specific.role_rules
        merged.scope_rules += more_specific.scope_rules
        merged.rate_limits += more_specific.rate_limits
        merged.rate_limit_exempt |= more_specific.rate_limit_exempt
        merged.validations.update(more_specific.validations)
        if more_specific.deprecation is not None:
            merged.deprecation = more_specific.deprecation
        merged.networks += [n for n in more_specific.networks if n not in merged.networks]
        merged.concurrency += more_specific.concurrency
        if merged.public and merged.needs_identity:
            merged.public = False
        return merged


def own_policy(target: Any) -> Policy | None:
    """The policy recorded on ``target`` itself (in its own ``__dict__``), if any."""
    try:
        found = vars(target).get(POLICY_ATTR)
    except TypeError:  # no __dict__
        return None
    return found if isinstance(found, Policy) else None


def get_policy(target: Any) -> Policy | None:
    """What ``target`` declares, if anything.

    For a class, what it and every base declared, merged from the most general base to the
    class itself (so two decorated bases of one view both count). For a function, its own
    declaration, or else the declaration of the function it stands for: ``__wrapped__``
    (a wrapper that does not copy ``__dict__``) or a ``functools.partial``'s ``func``.
    """
    if isinstance(target, type):
        merged: Policy | None = None
        for cls in reversed(target.__mro__):
            own = own_policy(cls)
            if own is not None:
                merged = own if merged is None else merged.merge(own)
        return merged
    for _ in range(_MAX_WRAPPERS):
        if target is None:
            return None
        own = own_policy(target)
        if own is not None:
            return own
        target = target.func if isinstance(target, functools.partial) \
            else getattr(target, "__wrapped__", None)
    return None


#: How far get_policy follows wrappers (a cycle of __wrapped__ ends there).
_MAX_WRAPPERS = 32



def declared_policy(view_func: Callable[..., Any], method: str) -> Policy:
    """Merge what the class, the view function and the handling method declared.

    ``view_func`` is the function Flask routes to (``app.view_functions[endpoint]``).
    """
    policy = Policy()
    view_class = getattr(view_func, "view_class", None)
    if view_class is not None:
        class_policy = get_policy(view_class)
        if class_policy is not None:
            policy = policy.merge(class_policy)
    own = get_policy(view_func)
    if own is not None:
        policy = policy.merge(own)
    if view_class is not None:
        handler = handler_of(view_class, method)
        handler_policy = get_policy(handler) if handler is not None else None
        if handler_policy is not None:
            policy = policy.merge(handler_policy)
    return policy


def handler_of(view_class: type, method: str) -> Any:
    """The method of a ``View`` class that serves ``method`` (MethodView maps verbs)."""
    from flask.views import MethodView

    if issubclass(view_class, MethodView):
        handler = getattr(view_class, method.lower(), None)
        if handler is None and method == "HEAD":
            handler = getattr(view_class, "get", None)
        return handler
    return getattr(view_class, "dispatch_request", None)


def view_methods(view_func: Callable[..., Any]) -> Mapping[str, Policy]:
    """For the ``routes`` audit: the declared policy per handled method of a view class."""
    view_class = getattr(view_func, "view_class", None)
    methods = getattr(view_class, "methods", None) or ()
    return {m: declared_policy(view_func, m) for m in sorted(methods)}



