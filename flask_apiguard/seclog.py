"""The security log (logger ``flask_apiguard.security``) and the signals, one per security event.

Each record's message is one line of JSON::

    {"time": "2026-11-28T17:11:20.123Z", "event": "invalid_token", "source": "guard",
     "request_id": "…", "method": "GET", "path": "/api/notes", "status": 401,
     "client_ip": "203.0.113.7", "endpoint": "notes", "subject": null, "key_id": null,
     "user_agent": "curl/8.5.0"}

``source`` is ``guard`` for the pipeline's refusals and ``app`` for 401/403/413/415/429 and
5xx statuses the app produced itself. Never logged: ``Authorization``, API keys, cookies,
passwords, query strings or bodies. The JSON is ASCII-only, so control characters and
bidirectional overrides in a path or user agent arrive escaped (no log injection).
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from .errors import error_code_for
from .signals import BY_NAME

if TYPE_CHECKING:
    from flask import Flask
    from werkzeug.wrappers import Request

    from .context import RequestState

logger = logging.getLogger("flask_apiguard.security")
logger.addHandler(logging.NullHandler())
_errors = logging.getLogger("flask_apiguard")

_MAX_FIELD = 256


def _clip(value: str | None) -> str | None:
    return value if value is None or len(value) <= _MAX_FIELD else value[:_MAX_FIELD] + "…"


class SecurityLog:
    """Emits the log record and the signal of one refused or failed request."""

    __slots__ = ("enabled",)

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def record(self, app: Flask, req: Request, current: RequestState, status: int) -> None:
        error = current.error
        event = error.error if error is not None else error_code_for(status)
        identity = current.identity
        level = logging.ERROR if status >= 500 else logging.WARNING
        if self.enabled and logger.isEnabledFor(level):
            route = current.route
            entry = {
                "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "event": event,
                "source": "guard" if error is not None else "app",
                "request_id": current.request_id,
                "method": _clip(req.method),
                "path": _clip(req.path),
                "status": status,
                "client_ip": req.remote_addr,
                "endpoint": route.endpoint if route is not None else None,
                "subject": _clip(identity.subject) if identity.is_authenticated else None,
                "key_id": identity.key_id,
                "user_agent": _clip(req.headers.get("User-Agent")),
            }
            logger.log(level, json.dumps(entry, ensure_ascii=True, separators=(", ", ": ")))
        if error is None:
            return
        signal = BY_NAME[error.signal]
        if not signal.receivers:
            return
        try:
            signal.send(
                app,
                request_id=current.request_id,
                error=event,
                status=status,
                method=req.method,
                path=req.path,
                client_ip=req.remote_addr,
                identity=identity,
            )
        except Exception:
            _errors.exception("flask-apiguard: a receiver of the %s signal raised", error.signal)
