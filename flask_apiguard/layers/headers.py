"""Security headers, computed once at start-up with flask-talisman.

flask-talisman is the source of the header semantics (how a CSP or Permissions-Policy dict is
written, the HSTS value). Running its hooks on every request costs tens of microseconds and
its HTTPS detection trusts a raw ``X-Forwarded-Proto``, so instead we run Talisman once, at
``init_app``, on a private Flask app with our options, over HTTPS and over HTTP, and keep the
two header sets it produced. A request then only copies a precomputed list.
"""

from __future__ import annotations

from flask import Flask
from flask_talisman import Talisman

from ..config import GuardConfig

Header = tuple[str, str]
_SKIP = frozenset({"content-type", "content-length", "set-cookie", "vary"})


class SecurityHeaders:
    """The header lists to add to HTTPS and to plain-HTTP responses (HSTS only on HTTPS)."""

    __slots__ = ("http", "https")

    def __init__(self, config: GuardConfig) -> None:
        self.https: tuple[Header, ...] = self._talisman_headers(config, secure=True)
        self.http: tuple[Header, ...] = tuple(
            (k, v) for k, v in self.https if k.lower() != "strict-transport-security"
        )

    @staticmethod
    def _talisman_headers(config: GuardConfig, *, secure: bool) -> tuple[Header, ...]:
        hsts = config.hsts
        probe = Flask("flask_apiguard.headers_probe")
        Talisman(
            probe,
            force_https=False,
            feature_policy={},
            document_policy={},
            permissions_policy=config.permissions_policy or {},
            frame_options=config.frame_options,
            strict_transport_security=hsts is not None,
            strict_transport_security_max_age=(hsts or {}).get("max_age", 0),
            strict_transport_security_include_subdomains=(hsts or {}).get("include_subdomains", False),
            strict_transport_security_preload=(hsts or {}).get("preload", False),
            content_security_policy=config.csp,
            referrer_policy=config.referrer_policy or "",
            session_cookie_secure=False,
            x_content_type_options=True,
            x_xss_protection=False,
        )
        probe.add_url_rule("/", "probe", lambda: "")
        base = "https://localhost" if secure else "http://localhost"
        response = probe.test_client().get("/", base_url=base)
        headers: list[Header] = [
            (name, value)
            for name, value in response.headers.items()
            if name.lower() not in _SKIP and value
        ]
        names = {name.lower() for name, _ in headers}
        for name, value in config.extra_headers.items():
            if name.lower() in names:
                headers = [(k, v) for k, v in headers if k.lower() != name.lower()]
            headers.append((name, value))
        return tuple(headers)
