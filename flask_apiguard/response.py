"""The response step: what the guard adds to every response, at the WSGI level.

:func:`finishing` wraps the app's WSGI callable (``app.wsgi_app``, inside any proxy
middleware) so that :func:`finish` runs in ``start_response``, where the response is finally
sent. Every answer passes there exactly once, after all of the app's hooks: the view's, an
error handler's, a routing redirect, the 500 after an app hook raised, a response made by WSGI
middleware installed before the guard. It adds the security, CORS and rate-limit headers, the
request id and ``Cache-Control`` to the header list in place (no copy and re-validation by
werkzeug), settles the ``count="failures"`` places the request holds, and records the
security event.

Why not Flask's ``after_request``: it sees neither the responses of middleware nor a teardown
function that raises, and werkzeug would copy the header list once more. A response started
while the app runs is held until the app returns, after its teardown functions, so that one
raising there still gets the problem+json 500 (unless Flask's rule says to raise, see
:func:`_propagates`).

Nested guards: a guarded app mounted inside another guarded app (werkzeug's
``DispatcherMiddleware``, a cascade, middleware in between) finishes its own response with its
own settings. While it hands that response on, the context variable ``_finishing_guard`` is
set, and the outer guard passes the response on as it receives it: nothing is added twice.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flask import Flask, has_request_context, request

from .context import ENVIRON_KEY, RequestSlot, own_slot
from .errors import internal_error, problem_response
from .signals import deprecated_called

if TYPE_CHECKING:
    from .context import RequestState
    from .policy import Route
    from .ratelimit.probes import LimitProbe
    from .ratelimit.window import WindowState
    from .state import GuardState

_log = logging.getLogger("flask_apiguard")

_LOGGED_STATUSES = frozenset({401, 403, 413, 415, 429})
#: werkzeug's ``Request.is_secure``.
SECURE_SCHEMES = frozenset({"https", "wss"})
#: Set while a guard hands the response it finished to the next ``start_response``: a guard
#: around it (an app mounted inside another guarded app) then passes the response on as is.
_finishing_guard: ContextVar[GuardState | None] = ContextVar("flask_apiguard.finishing",
                                                             default=None)


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


def _after_deferred(window: WindowState | None, used: tuple[LimitProbe, ...],
                    counted: list[WindowState]) -> WindowState | None:
    """The window to report once the ``count="failures"`` probes of this failed response are
    counted: their fresh windows compete with the window of the other limits."""
    keys = {p.key for p in used}
    candidates = list(counted)
    if window is not None and (window.key not in keys or not counted):
        candidates.append(window)
    return min(candidates, key=lambda s: (s.remaining, s.reset_in), default=None)


def _propagates(app: Flask) -> bool:
    """Flask's own rule for exceptions: raised to the server in testing or debug mode."""
    propagate = app.config.get("PROPAGATE_EXCEPTIONS")
    return bool(app.testing or app.debug) if propagate is None else bool(propagate)


def finishing(state: GuardState, app: Flask, wsgi_app: Any) -> Any:
    """``wsgi_app`` with the guard's response step in its ``start_response``."""

    def release(slot: RequestSlot) -> None:
        """Count as a failure, and give back, the places of a request that never answered."""
        current = slot.state
        taken = current.take_places() if current is not None else None
        if taken is not None:
            reserved, backend, reservation = taken
            state.shared.settle(backend, reserved, reservation, failed=True)

    def guarded_wsgi_app(environ: dict[str, Any], start_response: Any) -> Any:
        previous = environ.get(ENVIRON_KEY)
        slot = own_slot(environ)
        # A response started while the app runs is held until the app returns, after its
        # teardown hooks: one that raises there can still be answered with the 500.
        held: list[tuple[str, Any, Any, bool]] = []
        sent: list[Any] = []  # the server's write callable, once the response is started
        running = True

        def send(status: str, headers: Any, exc_info: Any, passed_on: bool) -> Any:
            if passed_on:
                # A guarded app inside this one finished this very response (mounted
                # with a dispatcher, a cascade, middleware in between): pass it on.
                write = start_response(status, headers, exc_info)
            else:
                headers = list(headers)  # never the caller's own list
                try:
                    finish(state, app, environ, slot, status, headers)
                except Exception:
                    _log.exception("flask-apiguard: the response step failed")
                token = _finishing_guard.set(state)
                try:
                    write = start_response(status, headers, exc_info)
                finally:
                    _finishing_guard.reset(token)
            sent[:] = [write]
            return write

        def flush() -> None:
            if held:
                send(*held.pop())

        def write(data: bytes) -> Any:
            """PEP 3333's ``write`` for an app that calls it: the held start goes first."""
            flush()
            return sent[0](data)

        def finishing_start_response(status: str, headers: Any, exc_info: Any = None) -> Any:
            passed_on = _finishing_guard.get() is not None
            if running:
                held[:] = [(status, headers, exc_info, passed_on)]
                return write
            return send(status, headers, exc_info, passed_on)

        try:
            result = wsgi_app(environ, finishing_start_response)
        except Exception:
            running = False
            if sent or _propagates(app):
                release(slot)  # the server answers: no response of ours was started
                raise
            held.clear()
            _log.error("flask-apiguard: an exception reached the server from the app "
                       "(a teardown hook or middleware); answered 500.", exc_info=True)
            answer = problem_response(internal_error(), slot.current().request_id,
                                      state.config.error_type_base)
            return answer(environ, finishing_start_response)
        except BaseException:
            release(slot)  # an exception went up to the server: no response was started
            raise
        finally:
            running = False
            if previous is not None and previous is not slot:
                environ[ENVIRON_KEY] = previous  # the environ was lent by another request
        flush()
        current = slot.state
        if current is not None and current.reserved:
            # Middleware may start the response only when the body is first read (PEP
            # 3333): settle then, or when the body is closed without a response.
            return _ReleaseOnClose(result, lambda: release(slot))
        return result

    return guarded_wsgi_app


def _deprecation(app: Flask, environ: dict[str, Any], current: RequestState, route: Route,
                 code: int, present: set[str], add: Any) -> None:
    """A ``@deprecated`` view's headers (precompiled on its route), and its signal."""
    for name, value in route.deprecation_headers:
        if name.lower() not in present:
            add((name, value))
    if not deprecated_called.receivers or current.preflight \
            or environ.get("REQUEST_METHOD") == "OPTIONS":
        return
    assert route.deprecation is not None
    try:
        deprecated_called.send(
            app,
            endpoint=route.endpoint,
            identity=current.identity,
            request_id=current.request_id,
            method=environ.get("REQUEST_METHOD"),
            path=_path(environ),
            status=code,
            client_ip=environ.get("REMOTE_ADDR"),
            sunset=route.deprecation.sunset,
        )
    except Exception:
        _log.exception("flask-apiguard: a receiver of the deprecated_called signal raised")


def _path(environ: dict[str, Any]) -> str:
    """The request path as werkzeug's ``Request.path`` decodes it."""
    raw = environ.get("PATH_INFO") or "/"
    return raw.encode("latin-1").decode("utf-8", "replace")


def finish(state: GuardState, app: Flask, environ: dict[str, Any], slot: RequestSlot,
           status: str, headers: list[tuple[str, str]]) -> None:
    """Security, CORS and rate-limit headers, the request id and ``Cache-Control`` on the
    header list about to be sent; settle ``count="failures"`` places; record the event.

    Every value added was validated at start-up or is generated here, so the list is
    extended directly. A header the view or the app's own hooks set is left alone.
    """
    config = state.config
    current = slot.current()  # a fresh one when middleware inside the guard answered
    # first the places, so that nothing below can leave them held
    try:
        code = int(status[:3])
    except ValueError:
        code = 500
    taken = current.take_places()
    if taken is not None:
        reserved, backend, reservation = taken
        try:
            if current.deductions is not None:  # an adopted limiter's deduct_when
                decided = current.deductions
                state.shared.settle(backend, [p for p in reserved if decided.get(p.key)],
                                    reservation, True)
                state.shared.settle(backend, [p for p in reserved if p.key in decided
                                              and not decided[p.key]], reservation, False)
                reserved = tuple(p for p in reserved if p.key not in decided)
            counted = state.shared.settle(backend, reserved, reservation, code >= 400,
                                          config.ratelimit_headers) if reserved else []
        except Exception:
            # The response is already decided; send it with its headers. The places held
            # expire on their own (INFLIGHT_TTL_MS).
            _log.exception("flask-apiguard: settling a count=\"failures\" limit failed")
            counted = []
        if code >= 400:
            current.window = _after_deferred(current.window, reserved, counted)
    present = {name.lower() for name, _ in headers}
    add = headers.append
    secure = environ.get("wsgi.url_scheme") in SECURE_SCHEMES
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
    route = current.route
    if route is not None and route.deprecation_headers:
        _deprecation(app, environ, current, route, code, present, add)
    if "cache-control" not in present:
        if state.hosts is None and 300 <= code < 400:
            # a redirect's Location names the Host, unchecked here: never cached
            add(("Cache-Control", "no-store"))
        elif config.cache_control and (
            config.cache_control_always or code >= 400 or current.credentials
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
