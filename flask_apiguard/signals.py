"""Blinker signals, sent with the app as sender, so an app can feed metrics or a SIEM.

Every refusal signal is sent with these keyword arguments (``deprecated_called`` has its own,
below):

``request_id``
    the request's id (the ``X-Request-ID`` response header).
``error``
    the contract's error code, e.g. ``"invalid_token"``.
``status``
    the HTTP status of the refusal.
``method``, ``path``
    the request line (the path without its query string).
``client_ip``
    the client address as resolved through ``APIGUARD_TRUSTED_PROXIES``.
``identity``
    the :class:`~flask_apiguard.identity.Identity` known at that point (anonymous when the
    caller was not authenticated).

A receiver is called synchronously, after the response is built and before it is sent; an
exception in a receiver is logged and never changes the response.

Example::

    from flask_apiguard import signals

    @signals.auth_failed.connect_via(app)
    def count_auth_failure(sender, **event):
        metrics.increment("auth_failed", tags={"error": event["error"]})
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: 401: missing, invalid, expired or revoked credentials.
auth_failed = _signals.signal("apiguard.auth-failed")
#: 403: authenticated, but a role or scope is missing.
access_denied = _signals.signal("apiguard.access-denied")
#: 429: a rate limit or the auth-failure limit was hit.
rate_limited = _signals.signal("apiguard.rate-limited")
#: 400 ``validation_error``: the request data failed its schema.
validation_failed = _signals.signal("apiguard.validation-failed")
#: The pipeline's other refusals: method, host, HTTPS, size, media type, malformed or invalid
#: body, duplicate parameter, storage unavailable.
request_rejected = _signals.signal("apiguard.request-rejected")

#: A ``@deprecated`` view was called (any status but a CORS preflight's). Sent, unlike the
#: others, with ``endpoint``, ``identity``, ``request_id``, ``method``, ``path``, ``status``,
#: ``client_ip`` and ``sunset`` (an aware datetime, or None): who still uses an old version.
deprecated_called = _signals.signal("apiguard.deprecated-called")

BY_NAME = {
    "auth_failed": auth_failed,
    "access_denied": access_denied,
    "rate_limited": rate_limited,
    "validation_failed": validation_failed,
    "request_rejected": request_rejected,
}

__all__ = ["access_denied", "auth_failed", "deprecated_called", "rate_limited", "request_rejected",
           "validation_failed"]
