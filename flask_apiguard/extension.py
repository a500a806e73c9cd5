"""The :class:`ApiGuard` extension: ``init_app``, the one request pipeline and the error handler.

Read :meth:`ApiGuard._pipeline` to follow a request from top to bottom: it is the only place
that knows the order of the layers (``CONTRACT.md`` section 4).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, has_request_context, request
from flask.typing import ResponseReturnValue
from werkzeug import exceptions as wz
from werkzeug.routing import RequestRedirect
from werkzeug.wrappers import Response

from . import seclog
from .config import GuardConfig, load_config
from .errors import (
    ApiGuardConfigError,
    ApiGuardError,
    Forbidden,
    HttpsRequired,
    InvalidApiKey,
    MethodNotAllowed,
    NotFound,
    RateLimitExceeded,
    TokenRevoked,
    TooManyAuthFailures,
    Unauthorized,
    problem_response,
)
from .identity import ANONYMOUS, ENVIRON_KEY, Identity, RequestSlot, holds, own_slot, request_slot
from .layers import proxies
from .layers.apikeys import ApiKeyStore, identity_of, open_store
from .layers.body import BodyGuard
from .layers.cors import Cors
from .layers.headers import SecurityHeaders
from .layers.hosts import TrustedHosts
from .layers.jwt import JwtLayer
from .layers.ratelimit import CompiledLimit, FailureLimit, ProbeCache, compile_limits, probes
from .layers.requestid import RequestIds, new_request_id
from .layers.validation import load as load_location
from .policy import Policy, ValidationSpec, declared_policy
from .storage import Backend, LimitProbe, SharedState, WindowState, redis_client_defaults

if TYPE_CHECKING:
    from flask.wrappers import Request

_log = logging.getLogger("flask_apiguard")

EXTENSION_NAME = "apiguard"
_DEFAULT_REVOCATION_TTL = 30 * 24 * 3600
_LOGGED_STATUSES = frozenset({401, 403, 413, 415, 429})
_SECURE_SCHEMES = frozenset({"https", "wss"})  # werkzeug's Request.is_secure
#: Set while a guard hands the response it finished to the next ``start_response``: a guard
#: around it (an app mounted inside another guarded app) then passes the response on as is.
_finishing_guard: ContextVar[GuardState | None] = ContextVar("flask_apiguard.finishing",
                                                             default=None)


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


@dataclass(slots=True)
class RequestState:
    """Everything the guard knows about the current request: one namespace in its WSGI environ."""

    request_id: str
    client: str = "unknown"
    identity: Identity = ANONYMOUS
    route: Route | None = None
    credentials: bool = False
    preflight: bool = False
    error: ApiGuardError | None = None
    window: WindowState | None = None
    #: The ``count="failures"`` probes this request holds a place in, and where.
    reserved: tuple[LimitProbe, ...] = ()
    reserved_on: Backend | None = None
    reserve_token: str = ""
    #: Set once the security event of this request's response is recorded (a second
    #: ``start_response`` with ``exc_info`` must not record it again).
    logged: bool = False

    def take_places(self) -> tuple[tuple[LimitProbe, ...], Backend, str] | None:
        """The places this request holds, their backend and token, once: the caller settles
        them."""
        if not self.reserved or self.reserved_on is None:
            return None
        taken = self.reserved, self.reserved_on, self.reserve_token
        self.reserved, self.reserved_on = (), None
        return taken


class GuardState:
    """The per-app state, in ``app.extensions["apiguard"]``. Built once by ``init_app``."""

    def __init__(self, guard: ApiGuard, app: Flask, config: GuardConfig) -> None:
        from limits import parse_many

        self.guard = guard
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
            config.api_key_store, config.api_key_prefix, app.instance_path, redis_options
        )
        self.api_key_environ = "HTTP_" + config.api_key_header.upper().replace("-", "_")
        self.request_id_lower = config.request_id_header.lower()
        self.shared = SharedState(
            config.storage_uri,
            dict(config.storage_options),
            config.ratelimit_strategy,
            config.ratelimit_on_storage_error,
            config.memory_storage_max_keys,
        )
        #: Every route's probes by its limits and bucket names (one bound for the app).
        self.probe_cache = ProbeCache()
        self.failure_limit = FailureLimit(
            tuple(parse_many(config.auth_failure_limit)) if config.auth_failure_limit else ()
        )
        self.security_log = seclog.SecurityLog(config.security_log)
        self.routes: dict[tuple[str, str], Route] = {}
        #: Set when a request arrived with X-Forwarded-For while no proxy is trusted.
        self.saw_forwarded = False

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
        """The compiled policy of ``endpoint`` for ``method`` (computed once, then a lookup)."""
        key = (endpoint, method)
        route = self.routes.get(key)
        if route is None:
            route = self.routes[key] = self.compile(endpoint, method)
        return route

    def compile(self, endpoint: str, method: str) -> Route:
        config = self.config
        view = current_app.view_functions[endpoint]
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
        query_spec = declared.validations.get("query")
        order = ("path", "headers", "query", "form", "json")
        rule_arguments = {a for r in current_app.url_map.iter_rules(endpoint) for a in r.arguments}
        for spec in declared.validations.values():
            if spec.arg_name in rule_arguments:
                raise ApiGuardConfigError(
                    f"@validate on {endpoint!r}: the URL rule already has an argument named "
                    f"{spec.arg_name!r}; pass arg_name= to name the loaded data differently."
                )
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
            validations=tuple(declared.validations[loc] for loc in order
                              if loc in declared.validations),
            accepts_form="form" in declared.validations,
            list_query_fields=query_spec.list_fields if query_spec else frozenset(),
            declared=declared,
        )


def _state() -> GuardState:
    try:
        return current_app.extensions[EXTENSION_NAME]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "ApiGuard is not initialised on this app: call ApiGuard(app) or guard.init_app(app)."
        ) from None


def _request_state(environ: dict[str, Any]) -> RequestState:
    """The state of the request ``environ`` belongs to; a fresh one (with a new request id)
    when the guard's before-request hook did not run for it (a URL value preprocessor that
    aborted, a response from WSGI middleware installed before the guard)."""
    slot = request_slot(environ)
    current: RequestState | None = slot.state
    if current is None:
        current = slot.state = RequestState(request_id=new_request_id())
    return current


class _ReleaseOnClose:
    """A response body whose ``close`` also gives back the places its request still holds
    (after closing the body, even when that raises)."""

    __slots__ = ("_body", "_iterator", "_release")

    def __init__(self, body: Any, release: Any) -> None:
        self._body, self._iterator, self._release = body, iter(body), release

    def __iter__(self) -> _ReleaseOnClose:
        return self

    def __next__(self) -> Any:
        return next(self._iterator)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._release()


def _vary_with_origin(headers: list[tuple[str, str]]) -> None:
    """Make the response's ``Vary`` name ``Origin`` (the CORS answer depends on it)."""
    first = -1
    for index, (name, value) in enumerate(headers):
        if name.lower() == "vary":
            tokens = {token.strip().lower() for token in value.split(",")}
            if "origin" in tokens or "*" in tokens:
                return
            if first < 0:
                first = index
    if first < 0:
        headers.append(("Vary", "Origin"))
    else:
        name, value = headers[first]
        headers[first] = (name, f"{value}, Origin" if value.strip() else "Origin")


def _authorization_error(route: Route, identity: Identity) -> ApiGuardError | None:
    """Step 8 on its own: default-deny, roles and scopes (no I/O)."""
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


def _after_deferred(window: WindowState | None, used: tuple[LimitProbe, ...],
                    counted: list[WindowState]) -> WindowState | None:
    """The window to report once the ``count="failures"`` probes of this failed response are
    counted: their fresh windows compete with the window of the other limits."""
    keys = {p.key for p in used}
    candidates = list(counted)
    if window is not None and (window.key not in keys or not counted):
        candidates.append(window)
    return min(candidates, key=lambda s: (s.remaining, s.reset_in), default=None)


def _too_many(cls: type[ApiGuardError], retry_after: int) -> ApiGuardError:
    return cls(headers={"Retry-After": str(retry_after)}, extra={"retry_after": retry_after})


class ApiGuard:
    """Hardens a Flask API: ``ApiGuard(app)``, or ``guard = ApiGuard()`` then ``guard.init_app(app)``.

    One instance may serve several apps; each app's state lives in
    ``app.extensions["apiguard"]``, never on the instance.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read and validate the configuration, then install the pipeline on ``app``.

        Keys read (all documented in ``docs/config.rst``): ``APIGUARD_DEFAULT_DENY``,
        ``APIGUARD_PUBLIC_ENDPOINTS``, ``APIGUARD_STORAGE_URI``, ``APIGUARD_STORAGE_OPTIONS``,
        ``APIGUARD_MEMORY_STORAGE_MAX_KEYS``,
        ``APIGUARD_JWT_SECRET``, ``APIGUARD_JWT_PRIVATE_KEY``, ``APIGUARD_JWT_PUBLIC_KEY``,
        ``APIGUARD_JWT_KEYS``, ``APIGUARD_JWT_SIGNING_KEY_ID``, ``APIGUARD_JWT_MAX_LENGTH``,
        ``APIGUARD_JWT_MAX_AGE``, ``APIGUARD_JWT_ALGORITHMS``, ``APIGUARD_JWT_ISSUER``,
        ``APIGUARD_JWT_AUDIENCE``, ``APIGUARD_JWT_LEEWAY``, ``APIGUARD_JWT_REQUIRED_CLAIMS``,
        ``APIGUARD_JWT_EXPIRES_IN``, ``APIGUARD_JWT_ROLES_CLAIM``, ``APIGUARD_JWT_REVOCATION``,
        ``APIGUARD_JWT_CACHE_SIZE``, ``APIGUARD_API_KEY_HEADER``, ``APIGUARD_API_KEY_STORE``,
        ``APIGUARD_API_KEY_PREFIX``, ``APIGUARD_AUTH_FAILURE_LIMIT``,
        ``APIGUARD_RATELIMIT_DEFAULT``, ``APIGUARD_RATELIMIT_STRATEGY``,
        ``APIGUARD_RATELIMIT_HEADERS``, ``APIGUARD_RATELIMIT_ON_STORAGE_ERROR``,
        ``APIGUARD_CORS_ORIGINS``, ``APIGUARD_CORS_METHODS``, ``APIGUARD_CORS_HEADERS``,
        ``APIGUARD_CORS_EXPOSE_HEADERS``, ``APIGUARD_CORS_CREDENTIALS``,
        ``APIGUARD_CORS_MAX_AGE``, ``APIGUARD_FORCE_HTTPS``, ``APIGUARD_HSTS``,
        ``APIGUARD_CSP``, ``APIGUARD_FRAME_OPTIONS``, ``APIGUARD_REFERRER_POLICY``,
        ``APIGUARD_PERMISSIONS_POLICY``, ``APIGUARD_EXTRA_HEADERS``, ``APIGUARD_CACHE_CONTROL``,
        ``APIGUARD_MAX_CONTENT_LENGTH``, ``APIGUARD_MAX_JSON_DEPTH``, ``APIGUARD_JSON_ONLY``,
        ``APIGUARD_REJECT_OPERATOR_KEYS``, ``APIGUARD_DUPLICATE_PARAMS``,
        ``APIGUARD_TRUSTED_HOSTS``, ``APIGUARD_TRUSTED_PROXIES``, ``APIGUARD_ALLOWED_METHODS``,
        ``APIGUARD_REQUEST_ID_HEADER``, ``APIGUARD_TRUST_REQUEST_ID``, ``APIGUARD_SANITIZER``,
        ``APIGUARD_SECURITY_LOG``, ``APIGUARD_ERROR_TYPE_BASE``; and Flask's
        ``MAX_CONTENT_LENGTH`` (the smaller limit wins).

        :raises ApiGuardConfigError: for a bad value, naming the key and the fix.
        :raises RuntimeError: when ``app`` already has an ApiGuard.
        """
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "ApiGuard is already initialised on this app. Create one ApiGuard per app "
                "and call init_app(app) once (an instance may serve several apps)."
            )
        config = load_config(app.config, app.instance_path)
        state = GuardState(self, app, config)
        app.extensions[EXTENSION_NAME] = state
        if config.force_https and not app.config.get("SESSION_COOKIE_SECURE"):
            app.config["SESSION_COOKIE_SECURE"] = True
        if app.config.get("SESSION_COOKIE_SAMESITE") is None:
            app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
        # The pipeline is the first before-request hook, so it runs before the app's own. It
        # is a plain function closing over this app's state: no current_app lookup per request,
        # and the cheap case of Flask's per-call coroutine check.
        pipeline, resolve_id = self._pipeline, state.request_ids.resolve

        def before_request() -> ResponseReturnValue | None:
            req: Request = request._get_current_object()  # type: ignore[attr-defined]
            environ = req.environ
            current = own_slot(environ).state = RequestState(request_id=resolve_id(environ))
            try:
                return pipeline(state, req, current)
            except ApiGuardError as exc:
                if not isinstance(exc, NotFound):  # an unknown path is not a security event
                    current.error = exc
                raise

        app.before_request_funcs.setdefault(None, []).insert(0, before_request)
        # After the view, the guard's headers are added where the response is finally sent:
        # in start_response, around the app's WSGI callable (inside any proxy middleware).
        # Whatever answers (the view, an error handler, the 500 after an app hook raised,
        # a routing redirect) passes there exactly once, after every app hook, and the header
        # list is extended in place instead of being copied and re-validated by werkzeug.
        app.wsgi_app = self._finishing(state, app, app.wsgi_app)  # type: ignore[method-assign]
        proxies.install(app, config.trusted_proxies)
        app.register_error_handler(wz.HTTPException, self._handle_http_error)
        from .audit import warn_at_startup
        from .cli import apiguard_cli

        app.cli.add_command(apiguard_cli)
        warn_at_startup(app, state)

    # -- the pipeline -------------------------------------------------------------------------
    def _pipeline(self, state: GuardState, req: Request, current: RequestState) -> ResponseReturnValue | None:
        config = state.config
        environ = req.environ
        method = req.method
        current.client = proxies.client_key(req.remote_addr)
        if not state.saw_forwarded and not config.trusted_proxies \
                and "HTTP_X_FORWARDED_FOR" in environ:
            state.note_forwarded()

        # 2. method allow-list
        if method not in config.allowed_methods:
            raise MethodNotAllowed("This HTTP method is not allowed.",
                                   allow=self._allowed_for(req, config.allowed_methods))
        # 3. trusted host (the trusted X-Forwarded-Host behind proxies)
        if state.hosts is not None:
            state.hosts.check(req.host)
        current.credentials = bool(
            "HTTP_AUTHORIZATION" in environ or state.api_key_environ in environ
            or "HTTP_COOKIE" in environ
        )
        # 4. HTTPS
        if config.force_https and not req.is_secure:
            if method in ("GET", "HEAD"):
                redirect = Response(status=301, headers={"Location": "https://" + req.url[len("http://"):]})
                if state.hosts is None:  # the Location echoes an unchecked Host: keep it out of caches
                    redirect.headers["Cache-Control"] = "no-store"
                return redirect
            raise HttpsRequired()
        # routing: unknown paths 404, wrong methods 405, for anyone
        if req.routing_exception is not None:
            raise self._routing_error(req.routing_exception)
        assert req.url_rule is not None and req.url_rule.endpoint is not None
        route = current.route = state.route(req.url_rule.endpoint, method)
        # 5. CORS preflight, answered here; OPTIONS is never authenticated nor counted
        if method == "OPTIONS":
            if state.cors is not None and "HTTP_ORIGIN" in environ \
                    and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
                current.preflight = True
                return state.cors.preflight(req.headers)
            # Never the view: a view that handles OPTIONS itself would otherwise run for
            # anyone, unauthenticated and uncounted. Flask's own answer lists the methods.
            return current_app.make_default_options_response()
        # 6. body size, before anything reads the body
        length = state.body.check_size(req)

        # 7. authentication (no I/O but an API key lookup)
        identity, jti, auth_error, presented = ANONYMOUS, None, None, False
        header = environ.get("HTTP_AUTHORIZATION", "")
        scheme = header.split(None, 1)[0].lower() if header.strip() else ""
        if route.jwt and scheme == "bearer":
            presented = True
            try:
                identity, jti = state.jwt.verify_header(header)
            except ApiGuardError as exc:
                auth_error = exc
        elif route.api_key and (plaintext := environ.get(state.api_key_environ)):
            presented = True
            key = state.api_keys.verify(plaintext)
            if key is None:
                auth_error = InvalidApiKey()
            else:
                identity = identity_of(key)
        # 8. authorization (no I/O)
        authz_error = _authorization_error(route, identity) if auth_error is None else None
        if auth_error is None:
            current.identity = identity  # a limit's key function may read current_identity

        # 7-9 in one question to the shared state: auth-failure limit, revocation, rate limits
        failure = state.failure_limit.probes(current.client) if presented else ()
        if jti is None or not config.jwt_revocation:
            jti = None
        limits = probes(route.limits, identity, current.client, state.probe_cache) \
            if auth_error is None and authz_error is None else ()
        if failure or jti or limits:
            verdict = state.shared.admit(failure, auth_error is not None, jti, limits,
                                         config.ratelimit_headers)
            if verdict.throttled:
                current.identity = ANONYMOUS
                raise _too_many(TooManyAuthFailures, verdict.retry_after)
            if auth_error is None and verdict.revoked:
                auth_error = TokenRevoked()
            current.window = verdict.window
            if auth_error is None and authz_error is None and verdict.breached is not None:
                raise _too_many(RateLimitExceeded, verdict.retry_after)
            current.reserved, current.reserved_on = verdict.reserved, verdict.backend
            current.reserve_token = verdict.token
        if auth_error is not None:
            current.identity = ANONYMOUS
            raise auth_error
        if authz_error is not None:
            raise authz_error

        # 10. body and parameter checks, then @validate
        document = state.body.check_body(req, route.accepts_form, length)
        state.body.check_query(req, route.list_query_fields)
        if route.validations:
            view_args = req.view_args if req.view_args is not None else {}
            for spec in route.validations:
                view_args[spec.arg_name] = load_location(req, spec.location, spec.schema,
                                                         spec.list_fields, document)
            req.view_args = view_args
        # 11. the view
        return None

    @staticmethod
    def _allowed_for(req: Request, allowed: Iterable[str]) -> list[str]:
        exc = req.routing_exception
        if isinstance(exc, wz.MethodNotAllowed) and exc.valid_methods:
            return [m for m in exc.valid_methods if m in allowed]
        if req.url_rule is not None and req.url_rule.methods:
            return [m for m in req.url_rule.methods if m in allowed]
        return sorted(allowed)

    @staticmethod
    def _routing_error(exc: BaseException) -> BaseException:
        if isinstance(exc, RequestRedirect):
            return exc
        if isinstance(exc, wz.MethodNotAllowed):
            return MethodNotAllowed(allow=exc.valid_methods or ())
        if isinstance(exc, wz.NotFound):
            return NotFound()
        return exc

    # -- after the view -----------------------------------------------------------------------
    def _finishing(self, state: GuardState, app: Flask, wsgi_app: Any) -> Any:
        """``wsgi_app`` with the guard's response step in its ``start_response``."""
        finish = self._finish

        def release(slot: RequestSlot) -> None:
            """Count as a failure, and give back, the places of a request that never answered."""
            current: RequestState | None = slot.state
            taken = current.take_places() if current is not None else None
            if taken is not None:
                reserved, backend, token = taken
                state.shared.settle(backend, reserved, token, failed=True)

        def guarded_wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
            previous = environ.get(ENVIRON_KEY)
            slot = own_slot(environ)

            def finishing_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
                if _finishing_guard.get() is not None:
                    # A guarded app inside this one finished this very response (mounted
                    # with a dispatcher, a cascade, middleware in between): pass it on.
                    return start_response(status, headers, exc_info)
                headers = list(headers)  # never the caller's own list
                try:
                    finish(state, app, environ, slot, status, headers)
                except Exception:
                    _log.exception("flask-apiguard: the response step failed")
                token = _finishing_guard.set(state)
                try:
                    return start_response(status, headers, exc_info)
                finally:
                    _finishing_guard.reset(token)

            try:
                result = wsgi_app(environ, finishing_start_response)
            except BaseException:
                release(slot)  # an exception went up to the server: no response was started
                raise
            finally:
                if previous is not None and previous is not slot:
                    environ[ENVIRON_KEY] = previous  # the environ was lent by another request
            current: RequestState | None = slot.state
            if current is not None and current.reserved:
                # Middleware may start the response only when the body is first read (PEP
                # 3333): settle then, or when the body is closed without a response.
                return _ReleaseOnClose(result, lambda: release(slot))
            return result

        return guarded_wsgi_app

    def _finish(self, state: GuardState, app: Flask, environ: dict[str, Any], slot: RequestSlot,
                status: str, headers: list[tuple[str, str]]) -> None:
        """Security, CORS and rate-limit headers, the request id and ``Cache-Control`` on the
        header list about to be sent; settle ``count="failures"`` places; record the event.

        Every value added was validated at start-up or is generated here, so the list is
        extended directly. A header the view or the app's own hooks set is left alone.
        """
        config = state.config
        current: RequestState | None = slot.state
        if current is None:  # the pipeline did not run (middleware inside the guard answered)
            current = slot.state = RequestState(request_id=new_request_id())
        # first the places, so that nothing below can leave them held
        try:
            code = int(status[:3])
        except ValueError:
            code = 500
        taken = current.take_places()
        if taken is not None:
            reserved, backend, token = taken
            try:
                counted = state.shared.settle(backend, reserved, token, code >= 400,
                                              config.ratelimit_headers)
            except Exception:
                # The response is already decided; send it with its headers. The places held
                # expire on their own (INFLIGHT_TTL_MS).
                _log.exception("flask-apiguard: settling a count=\"failures\" limit failed")
                counted = []
            if code >= 400:
                current.window = _after_deferred(current.window, reserved, counted)
        present = {name.lower() for name, _ in headers}
        add = headers.append
        secure = environ.get("wsgi.url_scheme") in _SECURE_SCHEMES
        if present.isdisjoint(state.header_names):
            headers.extend(state.https_pairs if secure else state.http_pairs)
        else:
            for name, lower, value in state.https_headers if secure else state.http_headers:
                if lower not in present:
                    add((name, value))
        if state.cors is not None:
            origin = environ.get("HTTP_ORIGIN")
            if origin and not current.preflight:
                for name, value in state.cors.headers_for(origin):
                    if name.lower() not in present:
                        add((name, value))
            if "vary" in present:
                _vary_with_origin(headers)
            else:
                add(("Vary", "Origin"))
        if current.window is not None and config.ratelimit_headers \
                and "ratelimit-limit" not in present:
            window = current.window
            add(("RateLimit-Limit", str(window.limit)))
            add(("RateLimit-Remaining", str(window.remaining)))
            add(("RateLimit-Reset", str(window.reset_in)))
        if state.request_id_lower not in present:
            add((config.request_id_header, current.request_id))
        if config.cache_control and "cache-control" not in present and (
            code >= 400 or current.credentials
        ):
            add(("Cache-Control", config.cache_control))
        if (current.error is not None or code in _LOGGED_STATUSES or code >= 500) \
                and not current.logged:
            current.logged = True
            if has_request_context() and request.environ is environ:
                req = request._get_current_object()  # type: ignore[attr-defined]
            else:
                req = app.request_class(environ)
            state.security_log.record(app, req, current, code)

    def _handle_http_error(self, exc: wz.HTTPException) -> ResponseReturnValue:
        if exc.response is not None:
            return exc.response
        if exc.code is None or exc.code < 400:
            return exc
        current = _request_state(request.environ)
        return problem_response(exc, current.request_id, _state().config.error_type_base)

    # -- tokens and keys ----------------------------------------------------------------------
    def issue_token(
        self,
        subject: str,
        *,
        roles: Iterable[str] = (),
        scopes: Iterable[str] = (),
        expires_in: int | timedelta | None = None,
        **claims: Any,
    ) -> str:
        """Sign a token for ``subject`` with the configured key and algorithm.

        Adds ``iat``, ``exp`` (``APIGUARD_JWT_EXPIRES_IN`` unless ``expires_in``), a random
        ``jti``, ``iss`` and ``aud`` when configured, the roles (under
        ``APIGUARD_JWT_ROLES_CLAIM``) and ``scope`` (space-separated). Needs an app context.
        """
        if isinstance(expires_in, timedelta):
            expires_in = math.ceil(expires_in.total_seconds())
        return _state().jwt.issue(subject, roles=roles, scopes=scopes, expires_in=expires_in,
                                  **claims)

    def revoke_token(self, token_or_jti: str) -> None:
        """Denylist a token (or a bare ``jti``) in the shared storage until it expires.

        A token is verified with the configured keys (an expired one is accepted; nothing
        else is) and kept until its ``exp`` plus the leeway, or, without ``exp``, until its
        ``iat`` plus ``APIGUARD_JWT_MAX_AGE`` plus the leeway. A bare ``jti`` is kept for
        ``APIGUARD_JWT_MAX_AGE`` (plus leeway) when set, otherwise for 30 days.

        :raises RuntimeError: when ``APIGUARD_JWT_REVOCATION`` is off (revoking would have no
            effect).
        :raises ValueError: when the token was not signed with this app's keys.
        """
        state = _state()
        config = state.config
        if not config.jwt_revocation:
            raise RuntimeError(
                "revoke_token has no effect while APIGUARD_JWT_REVOCATION is False: set it to "
                "True so every token's jti is checked against the denylist."
            )
        if not isinstance(token_or_jti, str) or not token_or_jti:
            raise ValueError("revoke_token takes a token or a jti string.")
        leeway = config.jwt_leeway
        max_age = config.jwt_max_age
        if token_or_jti.count(".") == 2:
            jti, exp, iat = state.jwt.decode_for_revocation(token_or_jti)
            now = time.time()
            if exp is not None:
                ttl = exp - now + leeway
            elif max_age is not None:
                ttl = (iat if iat is not None else now) + max_age - now + leeway
            else:
                ttl = float(_DEFAULT_REVOCATION_TTL)
            if ttl <= 0:
                return
        else:
            jti = token_or_jti
            ttl = (max_age + leeway) if max_age else _DEFAULT_REVOCATION_TTL
        state.shared.revoke(jti, math.ceil(ttl))

    @property
    def api_keys(self) -> ApiKeyStore:
        """The current app's API key store (``create``, ``verify``, ``revoke``, ``list``)."""
        return _state().api_keys


def guard_state(app: Flask) -> GuardState:
    """The :class:`GuardState` of ``app`` (for the CLI and tests)."""
    try:
        return app.extensions[EXTENSION_NAME]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError("ApiGuard is not initialised on this app.") from None

