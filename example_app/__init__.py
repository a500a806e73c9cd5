"""A small but real API protected by flask-apiguard: users, login, API keys and notes.

Run it with ``make run`` (development settings, plain HTTP on localhost) or, in production,
``gunicorn -w 4 "example_app:create_app()"`` with ``APIGUARD_STORAGE_URI=redis://…`` and TLS
at a proxy (``APIGUARD_TRUSTED_PROXIES=1``). See ``example_app/README.md``.
"""

from __future__ import annotations

from .app import create_app

__all__ = ["create_app"]
