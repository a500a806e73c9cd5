"""The :class:`ApiGuard` extension: ``init_app``, the one request pipeline, and the token and
key methods.

Read :meth:`ApiGuard._pipeline` to follow a request from top to bottom: it is the only place
that knows the order of the layers (``CONTRACT.md`` section 4). What the guard adds to the
response is :mod:`flask_apiguard.response`; the per-app state is :mod:`flask_apiguard.state`,
the per-request state :mod:`flask_apiguard.context`.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app, request
from flask.typing import ResponseReturnValue
from werkzeug import exceptions as wz
from werkzeug.routing import RequestRedirect
from werkzeug.sansio.utils import get_current_url
from werkzeug.wrappers import Response

from . import limiter_keys, openapi, response
from .apikeys import ApiKeyStore, identity_of
from .audit import warn_at_startup
from .cli import apiguard_cli
from .config import load_config
from .context import RequestState, own_slot, request_slot
from .errors import (
    ApiGuardError,
    Forbidden,
    Gone,
    HttpsRequired,
    InvalidApiKey,
    InvalidHost,
    InvalidScheme,
    InvalidToken,
    MethodNotAllowed,
    NotFound,
    RateLimitExceeded,
    ServiceUnavailable,
    TokenRevoked,
    TooManyAuthFailures,
    problem_response,
)
from .identity import ANONYMOUS, Identity
from .layers import proxies
from .layers.validation import load as load_location
from .policy.route import Route, authorization_refusal
from .ratelimit import adopt
from .ratelimit.adopt import AdoptedProbe
from .ratelimit.probes import LimitProbe, probes
from .ratelimit.select import exempt, route_probes
from .response import SECURE_SCHEMES
from .routes import add_routes
from .state import EXTENSION_NAME, GuardState, current_state

if TYPE_CHECKING:
    from flask.wrappers import Request
    from flask_limiter import Limiter

_DEFAULT_REVOCATION_TTL = 30 * 24 * 3600
_KNOWN_SCHEMES = frozenset({"http", "https", "ws", "wss"})


def _gone_detail(route: Route) -> str:
    deprecation = route.deprecation
    assert deprecation is not None and deprecation.sunset is not None
    detail = f"This endpoint was retired on {deprecation.sunset.isoformat()}."
    if deprecation.replacement is not None:
        detail += f" Use {deprecation.replacement} instead."
    return detail


def _too_many(cls: type[ApiGuardError], retry_after: int,
              detail: str | None = None) -> ApiGuardError:
    return cls(detail, headers={"Retry-After": str(retry_after)},
               extra={"retry_after": retry_after})


class ApiGuard:
    """Hardens a Flask API: ``ApiGuard(app)``, or ``guard = ApiGuard()`` then ``guard.init_app(app)``.

    One instance may serve several apps; each app's state lives in
    ``app.extensions["apiguard"]``, never on the instance.
    """

    def __init__(self, app: Flask | None = None, *, limiter: Limiter | None = None) -> None:
        self._limiter = limiter
        self._identity_loader: Callable[[Identity], Any] | None = None
        if app is not None:
            self.init_app(app, limiter=limiter)

    def init_app(self, app: Flask, *, limiter: Limiter | None = None) -> None:
        """Read and validate the configuration, then install the pipeline on ``app``.

        A flask-limiter ``Limiter`` initialised on ``app`` (``app.extensions["limiter"]``),
        or ``limiter`` (which may be initialised on ``app`` after the guard), is adopted: its
        hooks are detached and its limits enforced at step 9 (:doc:`migrating-from-flask-limiter`).

        Keys read (all documented in ``docs/config.rst``): ``APIGUARD_DEFAULT_DENY``,
        ``APIGUARD_PUBLIC_ENDPOINTS``, ``APIGUARD_STORAGE_URI``, ``APIGUARD_STORAGE_OPTIONS``,
        ``APIGUARD_MEMORY_STORAGE_MAX_KEYS``, ``APIGUARD_STORAGE_MODE``,
        ``APIGUARD_JWT_SECRET``, ``APIGUARD_JWT_PRIVATE_KEY``, ``APIGUARD_JWT_PUBLIC_KEY``,
        ``APIGUARD_JWT_KEYS``, ``APIGUARD_JWT_SIGNING_KEY_ID``, ``APIGUARD_JWT_MAX_LENGTH``,
        ``APIGUARD_JWT_MAX_AGE``, ``APIGUARD_JWT_ALGORITHMS``, ``APIGUARD_JWT_ISSUER``,
        ``APIGUARD_JWT_AUDIENCE``, ``APIGUARD_JWT_LEEWAY``, ``APIGUARD_JWT_REQUIRED_CLAIMS``,
        ``APIGUARD_JWT_EXPIRES_IN``, ``APIGUARD_JWT_ROLES_CLAIM``, ``APIGUARD_JWT_REVOCATION``,
        ``APIGUARD_JWT_CACHE_SIZE``, ``APIGUARD_API_KEY_HEADER``, ``APIGUARD_API_KEY_STORE``,
        ``APIGUARD_API_KEY_PREFIX``, ``APIGUARD_AUTH_FAILURE_LIMIT``,
        ``APIGUARD_RATELIMIT_DEFAULT``, ``APIGUARD_RATELIMIT_STRATEGY``,
        ``APIGUARD_RATELIMIT_HEADERS``, ``APIGUARD_RATELIMIT_ON_STORAGE_ERROR``,
        ``APIGUARD_RATELIMIT_EXEMPT_NETWORKS``, ``APIGUARD_IP_DENYLIST``,
        ``APIGUARD_CORS_ORIGINS``, ``APIGUARD_CORS_METHODS``, ``APIGUARD_CORS_HEADERS``,
        ``APIGUARD_CORS_EXPOSE_HEADERS``, ``APIGUARD_CORS_CREDENTIALS``,
        ``APIGUARD_CORS_MAX_AGE``, ``APIGUARD_FORCE_HTTPS``, ``APIGUARD_HSTS``,
        ``APIGUARD_CSP``, ``APIGUARD_FRAME_OPTIONS``, ``APIGUARD_REFERRER_POLICY``,
        ``APIGUARD_PERMISSIONS_POLICY``, ``APIGUARD_EXTRA_HEADERS``, ``APIGUARD_CACHE_CONTROL``,
        ``APIGUARD_CACHE_CONTROL_ALWAYS``,
        ``APIGUARD_MAX_CONTENT_LENGTH``, ``APIGUARD_MAX_JSON_DEPTH``, ``APIGUARD_JSON_ONLY``,
        ``APIGUARD_REJECT_OPERATOR_KEYS``, ``APIGUARD_DUPLICATE_PARAMS``,
        ``APIGUARD_TRUSTED_HOSTS``, ``APIGUARD_TRUSTED_PROXIES``, ``APIGUARD_ALLOWED_METHODS``,
        ``APIGUARD_REQUEST_ID_HEADER``, ``APIGUARD_TRUST_REQUEST_ID``, ``APIGUARD_SANITIZER``,
        ``APIGUARD_SECURITY_LOG``, ``APIGUARD_ERROR_TYPE_BASE``, ``APIGUARD_SUNSET_ENFORCE``,
        ``APIGUARD_OPENAPI_ROUTE``, ``APIGUARD_OPENAPI_INFO``, ``APIGUARD_JWT_SCOPES_CLAIM``,
        ``APIGUARD_JWT_JWKS_URL``, ``APIGUARD_JWT_OIDC_DISCOVERY``,
        ``APIGUARD_JWT_JWKS_CACHE_TTL``, ``APIGUARD_JWT_JWKS_REFETCH_COOLDOWN``,
        ``APIGUARD_JWT_ISSUERS``, ``APIGUARD_JWKS_ROUTE``; Flask's ``MAX_CONTENT_LENGTH``
        (the smaller limit wins); and, where no ``APIGUARD_*`` key is set, flask-limiter's
        ``RATELIMIT_STORAGE_URI``, ``RATELIMIT_STORAGE_OPTIONS``, ``RATELIMIT_STRATEGY``,
        ``RATELIMIT_DEFAULT``, ``RATELIMIT_ENABLED``, ``RATELIMIT_HEADERS_ENABLED``,
        ``RATELIMIT_IN_MEMORY_FALLBACK_ENABLED`` and ``RATELIMIT_SWALLOW_ERRORS``
        (``docs/config.rst``).

        :raises ApiGuardConfigError: for a bad value, naming the key and the fix.
        :raises RuntimeError: when ``app`` already has an ApiGuard.
        """
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "ApiGuard is already initialised on this app. Create one ApiGuard per app "
                "and call init_app(app) once (an instance may serve several apps)."
            )
        explicit = limiter if limiter is not None else self._limiter
        found = adopt.find_limiter(app, explicit)
        adopting = found if found is not None else explicit
        settings = adopt.limiter_settings(adopting, app.config) \
            if adopting is not None and adopting.enabled else None
        config = load_config(app.config, app.instance_path,
                             limiter_keys.inherited(app.config, settings))
        state = GuardState(app, config)
        app.extensions[EXTENSION_NAME] = state
        if found is not None and found.enabled:
            state.adopt(app, found)
        elif explicit is not None and explicit.enabled:
            state.pending_limiter = explicit
        if settings is not None:
            app.after_request(adopt.deductions_hook)
        if config.force_https and not app.config.get("SESSION_COOKIE_SECURE"):
            app.config["SESSION_COOKIE_SECURE"] = True
        if app.config.get("SESSION_COOKIE_SAMESITE") is None:
            app.config["SESSION_COOKIE_SAMESITE"] = "Lax"
        # The pipeline is a plain function closing over this app's state: no current_app
        # lookup per request.
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

        # It runs before anything of the app's own: Flask calls url_value_preprocessors (an
        # app's tenant lookup, say) ahead of every before_request function, so the pipeline
        # goes in front of preprocess_request itself, and a refused request runs no app code.
        app_preprocess = app.preprocess_request

        def preprocess_request() -> ResponseReturnValue | None:
            answer = before_request()
            return answer if answer is not None else app_preprocess()

        app.preprocess_request = preprocess_request  # type: ignore[method-assign]
        # After the view, the guard's headers are added where the response is finally sent:
        # in start_response, around the app's WSGI callable (see flask_apiguard.response).
        app.wsgi_app = response.finishing(state, app, app.wsgi_app)  # type: ignore[method-assign]
        proxies.install(app, config.trusted_proxies)
        app.register_error_handler(wz.HTTPException, self._handle_http_error)
        app.cli.add_command(apiguard_cli)
        add_routes(app, config)
        if openapi.is_apiflask(app):
            openapi.merge_into_apiflask(app, state)
        state.jwt.fetch_keys()  # the identity providers' keys, when reachable
        warn_at_startup(app, state)

    # -- the pipeline -------------------------------------------------------------------------
    def _pipeline(self, state: GuardState, req: Request, current: RequestState) -> ResponseReturnValue | None:
        config = state.config
        environ = req.environ
        method = req.method
        address = req.remote_addr  # the trusted-proxy client address, as every layer sees it
        current.client = proxies.client_key(address)
        # the IP denylist: refused before anything else looks at the request
        if config.ip_denylist is not None and address in config.ip_denylist:
            raise Forbidden("Requests from your network are not accepted.")
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
        # 4. HTTPS (the scheme is the server's, or a trusted proxy's X-Forwarded-Proto)
        scheme = environ["wsgi.url_scheme"]
        if scheme not in _KNOWN_SCHEMES:
            raise InvalidScheme()
        if config.force_https and scheme not in SECURE_SCHEMES:
            if method not in ("GET", "HEAD"):
                raise HttpsRequired()
            host = req.host  # checked at step 3 when APIGUARD_TRUSTED_HOSTS is set
            if not host:
                raise InvalidHost("The Host header is missing or malformed.")
            location = get_current_url("https", host, req.root_path, req.path, req.query_string)
            return Response(status=301, headers={"Location": location})
        # routing: unknown paths 404, wrong methods 405, for anyone
        if req.routing_exception is not None:
            raise self._routing_error(req.routing_exception)
        assert req.url_rule is not None and req.url_rule.endpoint is not None
        route = current.route = state.route(req.url_rule.endpoint, method)
        # @allow_networks: the view exists only for its networks, before any credential is read
        if route.networks is not None and address not in route.networks:
            raise Forbidden("This endpoint cannot be reached from your network.")
        # 5. CORS preflight, answered here; OPTIONS is never authenticated nor counted
        if method == "OPTIONS":
            if state.cors is not None and "HTTP_ORIGIN" in environ \
                    and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ:
                current.preflight = True
                return state.cors.preflight(req.headers)
            # Never the view: a view that handles OPTIONS itself would otherwise run for
            # anyone, unauthenticated and uncounted. Flask's own answer lists the methods.
            return current_app.make_default_options_response()
        # a @deprecated view past its sunset is gone, for anyone, before any credential is read
        if route.gone_at is not None and time.time() >= route.gone_at:
            raise Gone(_gone_detail(route))
        # 6. body size, before anything reads the body
        length = state.body.check_size(req)

        # 7. authentication: who is calling (no I/O but an API key lookup). A refusal is
        #    answered below, after the shared state said whether the client is throttled.
        identity, jti, auth_error, presented = ANONYMOUS, None, None, False
        header = environ.get("HTTP_AUTHORIZATION", "")
        auth_scheme = header.split(None, 1)[0].lower() if header.strip() else ""
        if route.jwt and auth_scheme == "bearer":
            presented = True
            try:
                identity, jti = state.jwt.verify_header(header)
            except ServiceUnavailable:  # no provider keys yet: the client did nothing wrong
                raise
            except ApiGuardError as exc:
                auth_error = exc
        elif route.api_key and (plaintext := environ.get(state.api_key_environ)):
            presented = True
            key = state.api_keys.verify(plaintext)
            if key is None:
                auth_error = InvalidApiKey()
            else:
                identity = identity_of(key)
        if auth_error is None:
            current.identity = identity  # a limit's key function may read current_identity
        # 8. authorization (no I/O). Decided here, since a refused request counts against no
        #    rate limit; answered after step 7's, since a throttled client gets 429 and a
        #    revoked token 401 whatever it may do.
        refusal = authorization_refusal(route, identity) if auth_error is None else None

        # Steps 7 to 9 ask the shared state one question (one Redis round trip): is the
        # client throttled for failed credentials (and count this failure), is the token
        # revoked, and what do the view's rate limits say.
        failure = state.failure_limit.probes(current.client) if presented else ()
        if jti is None or not config.jwt_revocation:
            jti = None
        limits: tuple[LimitProbe, ...] = ()
        places: tuple[LimitProbe, ...] = ()
        if auth_error is None and refusal is None:
            if route.plain_limits:  # no limit=/exempt_when= callable, places, exempt networks
                limits = probes(route.limits, identity, current.client, state.probe_cache)
            else:
                limits, places = route_probes(state, route, identity, current.client, address)
            if route.adopted is not None and (route.plain_limits or not exempt(state, address)):
                limits = (*limits, *route.adopted.probes())  # an adopted flask-limiter's
        verdict = state.shared.admit(failure, auth_error is not None, jti, limits,
                                     config.ratelimit_headers, places) \
            if failure or jti or limits or places else None
        # 7. answered: a throttled client, then a refused or revoked credential
        if verdict is not None and verdict.throttled:
            current.identity = ANONYMOUS
            raise _too_many(TooManyAuthFailures, verdict.retry_after)
        if auth_error is None and verdict is not None and verdict.revoked:
            auth_error = TokenRevoked()
        if auth_error is not None:
            current.identity = ANONYMOUS
            raise auth_error
        # 9. answered: the rate limits (a request that passes holds its count="failures"
        #    places until the response says whether it failed). A request a role or scope
        #    refuses was counted by no limit, so it cannot be refused here.
        if verdict is not None:
            current.window = verdict.window
            if (breached := verdict.breached) is not None:
                detail = route.adopted.adopter.breached(breached) \
                    if isinstance(breached, AdoptedProbe) and route.adopted is not None else None
                raise _too_many(RateLimitExceeded, verdict.retry_after, detail)
            if verdict.busy:  # @concurrency_limit
                raise _too_many(RateLimitExceeded, 1)
            current.reserved, current.reserved_on = verdict.reserved, verdict.backend
            current.reservation = verdict.token
        # The app's own user (@identity_loader), before @roles is answered, and only for a
        # caller neither throttled, nor revoked, nor over a limit: its query never runs for them.
        if self._identity_loader is not None and identity.is_authenticated:
            identity, unknown = self._load_user(identity)
            if unknown is not None:
                current.identity = ANONYMOUS
                if failure:  # a failed credential, counted (a second question, on this path only)
                    state.shared.admit(failure, True, None, (), False)
                raise unknown
            current.identity = identity
        # 8. answered
        if refusal is not None:
            raise refusal

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

    def _load_user(self, identity: Identity) -> tuple[Identity, ApiGuardError | None]:
        """Run the ``@identity_loader`` function: the identity with its ``user``, or a
        refusal with the credential's failure code when it returned ``None``."""
        assert self._identity_loader is not None
        user = current_app.ensure_sync(self._identity_loader)(identity)
        if user is not None:
            return dataclasses.replace(identity, user=user), None
        if identity.method == "jwt":
            return ANONYMOUS, InvalidToken("The token's subject is not a known user.")
        return ANONYMOUS, InvalidApiKey()

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

    # -- errors -----------------------------------------------------------------------------
    def _handle_http_error(self, exc: wz.HTTPException) -> ResponseReturnValue:
        if exc.response is not None:
            return exc.response
        if exc.code is None or exc.code < 400:
            return exc
        current = request_slot(request.environ).current()
        return problem_response(exc, current.request_id, current_state().config.error_type_base)

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
        return current_state().jwt.issue(subject, roles=roles, scopes=scopes, expires_in=expires_in,
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
        state = current_state()
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

    def openapi(self, *, title: str | None = None, version: str | None = None) -> dict[str, Any]:
        """The OpenAPI 3.1 document of the current app, from the policies the pipeline
        enforces (needs an app context). See :doc:`openapi`.

        Under APIFlask or flask-smorest it is their document with the guard's security
        schemes, per-operation ``security``, error responses and ``deprecated`` merged in.

        :param title: ``info.title`` (default: ``APIGUARD_OPENAPI_INFO["title"]``, else the
            app's name).
        :param version: ``info.version`` (default: ``APIGUARD_OPENAPI_INFO["version"]``,
            else ``"0.0.0"``).
        """
        return openapi.document_for(current_app, current_state(), title=title, version=version)

    def identity_loader(self, loader: Callable[[Identity], Any]) -> Callable[[Identity], Any]:
        """Register ``loader(identity) -> user | None`` (a decorator). It runs once per
        admitted request, after the JWT or API key is verified and the auth-failure, revocation
        and rate-limit checks passed, and before ``@roles`` is answered;
        its result is ``current_identity.user``. ``None`` refuses the request with 401 and
        the credential's failure code (``invalid_token`` or ``invalid_api_key``): a deleted
        user's still-valid token stops working. It may be a coroutine function."""
        self._identity_loader = loader
        return loader

    def jwks(self) -> dict[str, Any]:
        """The public JWKS (``{"keys": [...]}``) of the current app's own asymmetric keys,
        for other services to verify its tokens; an HMAC secret is never in it. Served at
        ``APIGUARD_JWKS_ROUTE`` when set (needs an app context)."""
        return current_state().jwt.jwks()

    @property
    def api_keys(self) -> ApiKeyStore:
        """The current app's API key store (``create``, ``verify``, ``revoke``, ``list``)."""
        return current_state().api_keys
