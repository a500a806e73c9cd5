"""The per-app state: :class:`GuardState`, in ``app.extensions["apiguard"]``.

``init_app`` builds it once from the frozen config: the layers, the shared state, the API key
store, the header sets and the table of compiled routes. The pipeline, the response step,
the CLI and the audit all read it from here; it knows nothing of the :class:`ApiGuard`
instance that built it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from flask import Flask, current_app
from limits import parse_many

from . import seclog
from .apikeys import ApiKeyStore, open_store
from .config import GuardConfig
from .errors import ApiGuardConfigError
from .layers.body import BodyGuard
from .layers.cors import Cors
from .layers.headers import SecurityHeaders
from .layers.hosts import TrustedHosts
from .layers.jwt import JwtLayer
from .layers.requestid import RequestIds
from .policy import Route, compile_route
from .ratelimit.adopt import Adopter, limiter_settings, unwrap
from .ratelimit.probes import FailureLimit, LimitCache, ProbeCache
from .ratelimit.redis_client import redis_client_defaults
from .ratelimit.shared import SharedState

#: The key of the per-app state in ``app.extensions``.
EXTENSION_NAME = "apiguard"


class GuardState:
    """The per-app state, in ``app.extensions["apiguard"]``. Built once by ``init_app``."""

    def __init__(self, app: Flask, config: GuardConfig) -> None:
        self.config = config
        self.request_ids = RequestIds(config)
        self.hosts = TrustedHosts(config) if config.trusted_hosts is not None else None
        headers = SecurityHeaders(config)
        self.http_headers = tuple((k, k.lower(), v) for k, v in headers.http)
        self.https_headers = tuple((k, k.lower(), v) for k, v in headers.https)
        #: The same as plain pairs and their lower-case names: when a response sets none of
        #: them (the usual case) they are added in one step.
        self.http_pairs = tuple(headers.http)
        self.https_pairs = tuple(headers.https)
        self.header_names = frozenset(k.lower() for k, _ in (*headers.http, *headers.https))
        self.cors = Cors(config) if config.cors_origins else None
        self.body = BodyGuard(config, app.config.get("MAX_CONTENT_LENGTH"))
        self.jwt = JwtLayer(config)
        redis_options = redis_client_defaults() if config.api_key_store.startswith("redis") else {}
        self.api_keys: ApiKeyStore = open_store(
            config.api_key_store, config.api_key_prefix, app.instance_path, redis_options,
            config.storage_options.get("key_prefix"),
        )
        self.api_key_environ = "HTTP_" + config.api_key_header.upper().replace("-", "_")
        self.request_id_lower = config.request_id_header.lower()
        self.shared = SharedState(
            config.storage_uri,
            dict(config.storage_options),
            config.ratelimit_strategy,
            config.ratelimit_on_storage_error,
            config.memory_storage_max_keys,
            config.storage_mode,
        )
        #: Every route's probes by its limits and bucket names (one bound for the app).
        self.probe_cache = ProbeCache()
        #: The limits of ``limit=`` callables, parsed once per string they return.
        self.limit_cache = LimitCache()
        self.failure_limit = FailureLimit(
            tuple(parse_many(config.auth_failure_limit)) if config.auth_failure_limit else ()
        )
        self.security_log = seclog.SecurityLog(config.security_log)
        self.routes: dict[tuple[str, str], Route] = {}
        #: The app's own endpoint table and URL map (Flask never replaces these objects, only
        #: their entries), so that compiling a route needs no app context.
        self.view_functions = app.view_functions
        self.url_map = app.url_map
        #: Set when a request arrived with X-Forwarded-For while no proxy is trusted.
        self.saw_forwarded = False
        #: The JSON served at ``APIGUARD_OPENAPI_ROUTE``, built at its first request (no
        #: route can be added to the app after that).
        self.openapi_document: bytes | None = None
        #: The adopted flask-limiter ``Limiter`` (:mod:`flask_apiguard.ratelimit.adopt`), and
        #: one given to the guard before it was initialised on the app (adopted when the
        #: first route is compiled).
        self.adopter: Adopter | None = None
        self.pending_limiter: Any = None
        #: Views whose flask-limiter wrapper was taken out of ``app.view_functions``, by
        #: endpoint: their policy is read from the wrapper.
        self.wrappers: dict[str, Callable[..., Any]] = {}

    def adopt(self, app: Flask, limiter: Any) -> None:
        """Adopt ``limiter`` (initialised on ``app``): detach its hooks, then enforce its
        limits in the pipeline. Routes compiled before are compiled again."""
        self.adopter = Adopter(app, limiter)
        self.pending_limiter = None
        self.routes.clear()

    def _adopt_late(self) -> None:
        app = current_app._get_current_object()  # type: ignore[attr-defined]
        limiter = self.pending_limiter
        if limiter is not None:
            if limiter not in (app.extensions.get("limiter") or ()):
                if not limiter.enabled:
                    self.pending_limiter = None
                    return
                raise ApiGuardConfigError(
                    "The flask-limiter Limiter given to ApiGuard(app, limiter=...) is not "
                    "initialised on this app: call limiter.init_app(app) at start-up."
                )
            settings = limiter_settings(limiter, app.config)
            if settings["RATELIMIT_STRATEGY"] != self.config.ratelimit_strategy:
                raise ApiGuardConfigError(
                    f"The adopted Limiter counts with {settings['RATELIMIT_STRATEGY']!r} but "
                    f"APIGUARD_RATELIMIT_STRATEGY is {self.config.ratelimit_strategy!r}: set "
                    "one strategy for both (RATELIMIT_STRATEGY or APIGUARD_RATELIMIT_STRATEGY)."
                )
            self.adopt(app, limiter)
        elif app.extensions.get("limiter"):
            raise ApiGuardConfigError(
                "A flask-limiter Limiter was initialised on this app after ApiGuard: pass it "
                "as ApiGuard(app, limiter=limiter), or initialise it before the guard, so "
                "that the guard adopts it."
            )

    def note_forwarded(self) -> None:
        """Warn once that a proxy seems to be in front while APIGUARD_TRUSTED_PROXIES is 0."""
        if not self.saw_forwarded:
            self.saw_forwarded = True
            current_app.logger.warning(
                "flask-apiguard: a request arrived with X-Forwarded-For but "
                "APIGUARD_TRUSTED_PROXIES is 0, so clients are seen as the proxy's address. "
                "If a proxy you run is in front, set APIGUARD_TRUSTED_PROXIES to the number of "
                "proxies (a forged header from a client is ignored either way)."
            )

    def route(self, endpoint: str, method: str) -> Route:
        """The compiled policy of ``endpoint`` for ``method``: compiled once per view, then a
        lookup. A view function replaced in ``app.view_functions`` brings its own policy."""
        key = (endpoint, method)
        route = self.routes.get(key)
        view = self.view_functions[endpoint]
        if route is None or route.view is not view:
            if not self.routes and (self.pending_limiter is not None or self.adopter is None):
                self._adopt_late()  # the first route compiled: a limiter initialised since
            arguments = (a for rule in self.url_map.iter_rules(endpoint) for a in rule.arguments)
            adopter = self.adopter
            if adopter is None:
                route = compile_route(endpoint, method, view, self.config, arguments)
            else:
                inner = unwrap(view, adopter.limiter)
                if inner is not view:  # its wrapper would check the limits a second time
                    self.wrappers[endpoint] = view
                    self.view_functions[endpoint] = inner
                declaring = self.wrappers.get(endpoint, inner) \
                    if unwrap(self.wrappers.get(endpoint, inner), adopter.limiter) is inner \
                    else inner
                route = replace(
                    compile_route(endpoint, method, declaring, self.config, arguments),
                    view=inner,
                    adopted=adopter.compile(current_app._get_current_object(),  # type: ignore[attr-defined]
                                            endpoint, method),
                )
            self.routes[key] = route
        return route


def guard_state(app: Flask) -> GuardState:
    """The :class:`GuardState` of ``app``.

    :raises RuntimeError: when ``app`` has no ApiGuard.
    """
    state: GuardState | None = app.extensions.get(EXTENSION_NAME)
    if state is None:
        raise RuntimeError(
            "ApiGuard is not initialised on this app: call ApiGuard(app) or guard.init_app(app)."
        )
    return state


def current_state() -> GuardState:
    """The :class:`GuardState` of the current app (needs an app context)."""
    return guard_state(current_app)
