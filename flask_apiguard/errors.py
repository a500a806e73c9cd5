"""The errors the pipeline raises, and their ``application/problem+json`` rendering (RFC 9457).

Every error is a werkzeug :class:`~werkzeug.exceptions.HTTPException` subclass, so an app's
own ``@app.errorhandler(401)`` (or ``errorhandler(InvalidToken)``) still wins over ours.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

from werkzeug import exceptions as wz
from werkzeug.datastructures import Headers
from werkzeug.wrappers import Response

PROBLEM_JSON = "application/problem+json"


class ApiGuardConfigError(RuntimeError):
    """A configuration mistake found at start-up. The message names the key and the fix."""


class ApiGuardError(wz.HTTPException):
    """Base class of every refusal the pipeline produces.

    :param detail: a sentence for the client, never containing secrets or internals.
    :param headers: extra response headers (``WWW-Authenticate``, ``Retry-After``, ``Allow``).
    :param extra: extra members of the problem object (``errors``, ``retry_after``).
    """

    code: int = 400
    #: The contract's machine-readable code, the problem's ``error`` member.
    error: ClassVar[str] = "bad_request"
    #: The signal this refusal is announced on (see :mod:`flask_apiguard.signals`).
    signal: ClassVar[str] = "request_rejected"
    default_detail: ClassVar[str] = "The request was refused."

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(description=detail or self.default_detail)
        self.extra_headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})

    @property
    def detail(self) -> str:
        return self.description or self.default_detail

    def get_headers(self, environ: Any = None, scope: Any = None) -> list[tuple[str, str]]:
        return [("Content-Type", PROBLEM_JSON), *self.extra_headers.items()]


# -- 4xx refusals of the pipeline, in the order of the contract's table ----------------------

class Unauthorized(ApiGuardError, wz.Unauthorized):
    code = 401
    error = "unauthorized"
    signal = "auth_failed"
    default_detail = "Authentication is required: send a bearer token or an API key."

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class _BearerError(Unauthorized):
    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        text = (detail or self.default_detail).replace("\\", "").replace('"', "'")
        kwargs.setdefault(
            "headers",
            {"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{text}"'},
        )
        super().__init__(detail, **kwargs)


class InvalidToken(_BearerError):
    error = "invalid_token"
    default_detail = "The token is invalid."


class TokenExpired(_BearerError):
    error = "token_expired"
    default_detail = "The token has expired."


class TokenRevoked(_BearerError):
    error = "token_revoked"
    default_detail = "The token has been revoked."


class InvalidApiKey(Unauthorized):
    error = "invalid_api_key"
    default_detail = "The API key is invalid, expired or revoked."


class Forbidden(ApiGuardError, wz.Forbidden):
    code = 403
    error = "forbidden"
    signal = "access_denied"
    default_detail = "You do not have permission to perform this action."


class TooManyAuthFailures(ApiGuardError, wz.TooManyRequests):
    code = 429
    error = "too_many_auth_failures"
    signal = "rate_limited"
    default_detail = "Too many failed authentication attempts from this address; try again later."


class RateLimitExceeded(ApiGuardError, wz.TooManyRequests):
    code = 429
    error = "rate_limit_exceeded"
    signal = "rate_limited"
    default_detail = "Rate limit exceeded; try again later."


class ValidationFailed(ApiGuardError, wz.BadRequest):
    code = 400
    error = "validation_error"
    signal = "validation_failed"
    default_detail = "The request did not pass validation."


class MalformedJSON(ApiGuardError, wz.BadRequest):
    code = 400
    error = "malformed_json"
    default_detail = "The request body is not valid JSON."


class InvalidBody(ApiGuardError, wz.BadRequest):
    code = 400
    error = "invalid_body"
    default_detail = "The request body is not acceptable."


class DuplicateParameter(ApiGuardError, wz.BadRequest):
    code = 400
    error = "duplicate_parameter"
    default_detail = "A query parameter was given more than once."


class UnsupportedMediaType(ApiGuardError, wz.UnsupportedMediaType):
    code = 415
    error = "unsupported_media_type"
    default_detail = "The request body must be JSON (Content-Type: application/json)."


class PayloadTooLarge(ApiGuardError, wz.RequestEntityTooLarge):
    code = 413
    error = "payload_too_large"
    default_detail = "The request body is too large."


class MethodNotAllowed(ApiGuardError, wz.MethodNotAllowed):
    code = 405
    error = "method_not_allowed"
    default_detail = "The method is not allowed for this resource."

    def __init__(self, detail: str | None = None, *, allow: Any = (), **kwargs: Any) -> None:
        if allow:
            kwargs.setdefault("headers", {"Allow": ", ".join(sorted(allow))})
        super().__init__(detail, **kwargs)


class InvalidHost(ApiGuardError, wz.BadRequest):
    code = 400
    error = "invalid_host"
    default_detail = "The Host header does not name this service."


class InvalidScheme(ApiGuardError, wz.BadRequest):
    """A trusted proxy's ``X-Forwarded-Proto`` named a scheme other than http(s) or ws(s)."""

    code = 400
    error = "bad_request"
    default_detail = "The forwarded scheme must be http, https, ws or wss."


class HttpsRequired(ApiGuardError, wz.Forbidden):
    code = 403
    error = "https_required"
    default_detail = "This API is only available over HTTPS."


class NotFound(ApiGuardError, wz.NotFound):
    code = 404
    error = "not_found"
    default_detail = "The requested resource was not found."


class Gone(ApiGuardError, wz.Gone):
    """A ``@deprecated`` view past its sunset (``APIGUARD_SUNSET_ENFORCE``)."""

    code = 410
    error = "gone"
    default_detail = "This endpoint has been retired."


class ServiceUnavailable(ApiGuardError, wz.ServiceUnavailable):
    code = 503
    error = "service_unavailable"
    signal = "request_rejected"
    default_detail = "A backing service is unavailable; try again shortly."


#: ``error`` codes for werkzeug's own exceptions and statuses raised by the app.
_CODES_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
    500: "internal_error",
    503: "service_unavailable",
}
_SAFE_500 = "The server encountered an internal error."


def error_code_for(status: int) -> str:
    """The ``error`` member for a status the package did not raise itself."""
    if status in _CODES_BY_STATUS:
        return _CODES_BY_STATUS[status]
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        return "internal_error" if status >= 500 else "http_error"
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_")


def problem_body(
    exc: wz.HTTPException, request_id: str | None, type_base: str | None
) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """The problem object and the extra headers for ``exc``."""
    status = exc.code or 500
    headers: list[tuple[str, str]] = []
    if isinstance(exc, ApiGuardError):
        code = exc.error
        detail = exc.detail
        extra: dict[str, Any] = exc.extra
        headers.extend(exc.extra_headers.items())
    else:
        code = error_code_for(status)
        # werkzeug's own descriptions are fixed sentences; an app's abort(404, "...") is the
        # app's own wording. A 5xx never shows anything but a fixed sentence.
        detail = _SAFE_500 if status >= 500 else (exc.description or "")
        extra = {}
        if isinstance(exc, wz.MethodNotAllowed) and exc.valid_methods:
            headers.append(("Allow", ", ".join(exc.valid_methods)))
        if isinstance(exc, wz.Unauthorized) and exc.www_authenticate:
            headers.extend(("WWW-Authenticate", v.to_header()) for v in exc.www_authenticate)
        elif isinstance(exc, wz.Unauthorized):
            headers.append(("WWW-Authenticate", "Bearer"))
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            headers.extend((k, v) for k, v in Headers(exc.get_headers()).items() if k == "Retry-After")
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = exc.name
    body: dict[str, Any] = {
        "type": f"{type_base}{code}" if type_base else "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "error": code,
        "request_id": request_id,
    }
    for key, value in extra.items():
        body.setdefault(key, value)
    return body, headers


def problem_response(
    exc: wz.HTTPException, request_id: str | None, type_base: str | None = None
) -> Response:
    """Render ``exc`` as an ``application/problem+json`` response."""
    body, headers = problem_body(exc, request_id, type_base)
    payload = json.dumps(body, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
    response = Response(payload, status=body["status"], mimetype=PROBLEM_JSON)
    for name, value in headers:
        response.headers[name] = value
    return response


def internal_error() -> wz.InternalServerError:
    return wz.InternalServerError(_SAFE_500)
