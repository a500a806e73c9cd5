"""Adopting an existing :class:`flask_limiter.Limiter`: its limits enforced at step 9.

``ApiGuard(app)`` finds the limiter initialised on the app (``app.extensions["limiter"]``),
or takes one given as ``ApiGuard(app, limiter=...)``; a limiter initialised after the guard
is adopted when the first route is compiled (the first request). Adopting it:

- detaches its ``before_request``, ``after_request`` and ``teardown_request`` hooks, and
  replaces every view wrapped by its ``@limiter.limit`` / ``shared_limit`` by the view it
  wraps, so nothing of it runs outside the pipeline;
- resolves its limits once per (endpoint, method), through its own
  ``limit_manager.resolve_limits`` (application, default, decorated and blueprint limits,
  ``@limiter.exempt``, ``override_defaults``, ``methods``); limits given as callables are
  resolved per request, as flask-limiter does;
- turns them into :class:`AdoptedProbe` values per request (``key_func``, ``exempt_when``,
  ``cost``, ``request_filter``), counted by the guard's storage in the same call (one Redis
  round trip) as ``@rate_limit``. Their counter keys are flask-limiter's own
  (``item.key_for([key_prefix,] key, scope)``), so old and new workers share counters.

What cannot be reproduced faithfully is refused at adoption with
:class:`~flask_apiguard.ApiGuardConfigError`: meta limits and ``RATELIMIT_IN_MEMORY_FALLBACK``
limits.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, has_request_context, request

from ..errors import ApiGuardConfigError
from .probes import LimitProbe, ProbeCache

if TYPE_CHECKING:
    from flask_limiter import Limiter

log = logging.getLogger("flask_apiguard.ratelimit")

#: flask-limiter marks each view wrapper with the limiter that made it (``RouteLimit``).
WRAPPER_MARK = "__wrapper-limiter-instance"


@dataclass(frozen=True, slots=True)
class AdoptedProbe(LimitProbe):
    """A probe of an adopted limit: it remembers the flask-limiter limit it counts for (its
    ``error_message``, ``on_breach`` and ``deduct_when``)."""

    runtime: Any = field(default=None, compare=False)


@dataclass(frozen=True, slots=True, eq=False)
class AdoptedLimit:
    """One flask-limiter ``RuntimeLimit`` of an (endpoint, method), with its scope resolved."""

    runtime: Any
    #: The scope part of the key, or ``None`` when the scope is a callable (per request).
    scope: str | None


@dataclass(frozen=True, slots=True, eq=False)
class AdoptedRoute:
    """The adopted limits of one (endpoint, method)."""

    adopter: Adopter
    endpoint: str
    method: str
    limits: tuple[AdoptedLimit, ...]
    #: Some limit of the limiter is a callable: resolve again on every request.
    dynamic: bool

    def probes(self) -> tuple[AdoptedProbe, ...]:
        """This request's probes (needs the request context: key and exemption callables)."""
        adopter = self.adopter
        for request_filter in adopter.request_filters:
            if request_filter():
                return ()
        limits = self.limits
        if self.dynamic:
            limits = adopter.resolve(self.endpoint, self.method, request.blueprint)
        keys: list[Any] = []
        chosen: list[AdoptedLimit] = []
        for limit in limits:
            runtime = limit.runtime
            if runtime.exempt_when is not None and runtime.exempt_when():
                continue
            key = runtime.key_func()
            scope = limit.scope if limit.scope is not None \
                else runtime.scope_for(self.endpoint, self.method)
            if not key or not scope:  # as flask-limiter: a limit with an empty part is skipped
                continue
            chosen.append(limit)
            keys.append((key, scope, runtime.deduction_amount))
        cache_key = (limits, tuple(keys))
        found = adopter.cache.get(cache_key)
        if found is not None:
            return found  # type: ignore[return-value]
        prefix = (adopter.key_prefix,) if adopter.key_prefix else ()
        made = tuple(
            AdoptedProbe(limit.runtime.limit, (*prefix, key, scope), cost,
                         hit=limit.runtime.deduct_when is None, runtime=limit.runtime)
            for limit, (key, scope, cost) in zip(chosen, keys, strict=True)
        )
        return adopter.cache.put(cache_key, made)  # type: ignore[return-value]


class Adopter:
    """The adopted limiter of one app (in ``GuardState.adopter``)."""

    def __init__(self, app: Flask, limiter: Limiter) -> None:
        refuse_unsupported(app, limiter)
        self.limiter = limiter
        self.manager = limiter.limit_manager
        self.request_filters: list[Callable[[], bool]] = limiter._request_filters
        self.key_prefix: str = limiter._key_prefix or ""
        self.cache = ProbeCache()
        detach(app, limiter)

    # -- compile ------------------------------------------------------------------------------
    def compile(self, app: Flask, endpoint: str, method: str) -> AdoptedRoute | None:
        """The adopted limits of ``endpoint`` for ``method`` (``None`` when it has none).
        ``HEAD`` runs the ``GET`` view, so it gets ``GET``'s limits (under flask-limiter a
        ``methods=["GET"]`` limit let any number of ``HEAD`` requests through)."""
        if endpoint.split(".")[-1] == "static":  # flask-limiter never limits static files
            return None
        if method == "HEAD":
            method = "GET"
        dynamic = self._has_dynamic_limits()
        blueprint = endpoint.rpartition(".")[0] or None
        if blueprint is not None and blueprint not in app.blueprints:
            blueprint = None
        limits: tuple[AdoptedLimit, ...] = ()
        if not dynamic:
            if has_request_context() and request.method == method:
                limits = self.resolve(endpoint, method, blueprint, app)
            else:
                with app.test_request_context(method=method):
                    limits = self.resolve(endpoint, method, blueprint, app)
            if not limits:
                return None
        return AdoptedRoute(self, endpoint, method, limits, dynamic)

    def resolve(self, endpoint: str, method: str, blueprint: str | None,
                app: Flask | None = None) -> tuple[AdoptedLimit, ...]:
        """What flask-limiter's two checks (its ``before_request`` hook, then its view wrapper)
        apply to one request of ``endpoint`` with ``method``, in its evaluation order."""
        from flask import current_app

        app = app if app is not None else current_app._get_current_object()  # type: ignore[attr-defined]
        view = app.view_functions.get(endpoint)
        name = qualified_name(view) if view is not None else ""
        marked = name in self.limiter._marked_for_limiting
        found: list[Any] = []
        for in_middleware in (True, False) if marked else (True,):
            defaults, decorated = self.manager.resolve_limits(
                app, endpoint, blueprint, name, in_middleware, marked)
            for runtime in (*defaults, *decorated):
                refuse_meta(runtime, endpoint)
                if runtime not in found:  # flask-limiter's seen_limits
                    found.append(runtime)
        limits = sorted(found, key=lambda runtime: runtime.limit)
        return tuple(
            AdoptedLimit(runtime, None if callable(runtime.scope)
                         else runtime.scope_for(endpoint, method))
            for runtime in limits if not runtime.method_exempt
        )

    def _has_dynamic_limits(self) -> bool:
        manager = self.manager
        groups = [*manager._application_limits, *manager._default_limits]
        for found in (*manager._decorated_limits.values(), *manager._blueprint_limits.values()):
            groups.extend(found)
        return any(callable(group.limit_provider) for group in groups)

    # -- after a breach -----------------------------------------------------------------------
    def breached(self, probe: AdoptedProbe) -> str | None:
        """Call the ``on_breach`` callbacks of the breached limit (the limiter's, then the
        limit's, as flask-limiter does) and return its ``error_message`` (the problem
        ``detail``), if it has one. A response a callback returns is not used: the answer is
        the guard's 429."""
        from flask_limiter import RequestLimit

        runtime = probe.runtime
        limit = RequestLimit(self.limiter, runtime.limit, list(probe.identifiers), True,
                             runtime.shared)
        for callback in dict.fromkeys([self.limiter._on_breach, runtime.on_breach]):
            if callback is not None:
                callback(limit)
        message = runtime.error_message
        if callable(message):
            message = message()
        return str(message) if message else None


def qualified_name(view: Callable[..., Any]) -> str:
    """The name flask-limiter files a view's limits and exemptions under."""
    from flask_limiter.util import get_qualified_name

    return get_qualified_name(view)


def unwrap(view: Callable[..., Any], limiter: Limiter) -> Callable[..., Any]:
    """``view`` without the wrappers ``limiter``'s decorators put around it."""
    # The mark is a weak proxy of the limiter: compared with ==, which the proxy forwards.
    while hasattr(view, "__wrapped__") and getattr(view, WRAPPER_MARK, None) == limiter:
        view = view.__wrapped__
    return view


def detach(app: Flask, limiter: Limiter) -> None:
    """Remove ``limiter``'s request hooks from ``app``: its checks run in the pipeline."""
    check = limiter._check_request_limit
    inject = type(limiter)._Limiter__inject_headers  # type: ignore[attr-defined]
    release = limiter._Limiter__release_context  # type: ignore[attr-defined]

    def keep(f: Any) -> bool:
        if isinstance(f, functools.partial):
            return not (f.func is inject and f.args[:1] == (limiter,))
        return bool(f != check and f != release)

    hooks: list[dict[Any, list[Any]]] = [
        app.before_request_funcs, app.after_request_funcs, app.teardown_request_funcs]
    for table in hooks:
        for funcs in table.values():
            funcs[:] = [f for f in funcs if keep(f)]


def refuse_unsupported(app: Flask, limiter: Limiter) -> None:
    """Refuse what the guard cannot enforce as flask-limiter would, naming it."""
    if limiter._meta_limits or any(
        group.meta_limits for group in (*limiter.limit_manager._application_limits,
                                        *limiter.limit_manager._default_limits)
    ):
        raise ApiGuardConfigError(
            "flask-limiter meta limits (meta_limits= / RATELIMIT_META) are not supported by "
            "the adopted limiter: remove them, or keep flask-limiter without ApiGuard's "
            "adoption (pass limiter=None and do not initialise it on this app)."
        )
    if limiter._in_memory_fallback:
        raise ApiGuardConfigError(
            "RATELIMIT_IN_MEMORY_FALLBACK / in_memory_fallback= (separate limits while the "
            "storage is down) has no equivalent: remove it; while the storage is down the "
            "guard applies the same limits per process (APIGUARD_RATELIMIT_ON_STORAGE_ERROR="
            "'fallback')."
        )


def refuse_meta(runtime: Any, endpoint: str) -> None:
    """A decorated limit with ``meta_limits=`` is refused like the limiter's."""
    if runtime.meta_limits:
        raise ApiGuardConfigError(
            f"@limiter.limit(..., meta_limits=...) on {endpoint!r}: meta limits are not "
            "supported by the adopted limiter; remove meta_limits=."
        )


def find_limiter(app: Flask, explicit: Limiter | None) -> Limiter | None:
    """The limiter to adopt on ``app``: ``explicit`` once initialised on it, else the one
    limiter in ``app.extensions["limiter"]``.

    :raises ApiGuardConfigError: when several limiters are initialised and none is named.
    """
    found = app.extensions.get("limiter") or set()
    if explicit is not None:
        return explicit if explicit in found else None
    if len(found) > 1:
        raise ApiGuardConfigError(
            "Several flask-limiter Limiters are initialised on this app; pass the one to "
            "adopt as ApiGuard(app, limiter=...)."
        )
    return next(iter(found), None)


def limiter_settings(limiter: Limiter, config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the limiter counts with, under the guard's key names (without the
    ``APIGUARD_`` prefix), so that the guard counts the same way in the same place: its
    constructor's ``storage_uri``, ``storage_options`` and ``strategy`` (flask-limiter's
    default strategy is ``fixed-window``)."""
    return {
        "STORAGE_URI": limiter._storage_uri or None,
        "STORAGE_OPTIONS": dict(limiter._storage_options) or None,
        "RATELIMIT_STRATEGY": limiter._strategy or config.get("RATELIMIT_STRATEGY")
        or "fixed-window",
    }


def deductions_hook(response: Response) -> Response:
    """After the view (an ``after_request`` function): whether each adopted limit with
    ``deduct_when`` counts this response, for the response step that settles it."""
    from ..context import request_slot

    current = request_slot(request.environ).current()
    decided: dict[str, bool] = {}
    for probe in current.reserved:
        if isinstance(probe, AdoptedProbe):
            decided[probe.key] = bool(probe.runtime.deduct_when(response))
    if decided:
        current.deductions = decided
    return response
