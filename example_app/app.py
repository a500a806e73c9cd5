"""The app factory: configuration from the environment, the database, the guard, the routes."""

from __future__ import annotations

import json
import os
import secrets
import tempfile
from pathlib import Path
from typing import Any

from flask import Flask

from . import db
from .api import bp, guard

#: What the example sets beyond flask-apiguard's own defaults.
EXAMPLE_DEFAULTS: dict[str, Any] = {
    "APIGUARD_JWT_REVOCATION": True,  # logout revokes the token
    "APIGUARD_JWT_EXPIRES_IN": 900,
    "APIGUARD_JWT_LEEWAY": 10,
    "APIGUARD_OPENAPI_ROUTE": "/api/openapi.json",  # the API's description, for anyone
    "APIGUARD_OPENAPI_INFO": {"title": "Example notes API", "version": "1.0.0"},
    "EXAMPLE_PASSWORD_METHOD": "scrypt",
}


#: Any of these (from the environment) switches on "use your identity provider" mode.
PROVIDER_KEYS = ("APIGUARD_JWT_JWKS_URL", "APIGUARD_JWT_OIDC_DISCOVERY", "APIGUARD_JWT_ISSUERS")


def _from_environment() -> dict[str, Any]:
    """``APIGUARD_*``, ``EXAMPLE_*`` and ``SECRET_KEY`` from the environment (JSON values
    such as ``true``, ``3`` or ``["https://a.example"]`` are decoded; anything else is a string)."""
    config: dict[str, Any] = {}
    for name, raw in os.environ.items():
        if name.startswith(("APIGUARD_", "EXAMPLE_")) or name == "SECRET_KEY":
            try:
                config[name] = json.loads(raw)
            except ValueError:
                config[name] = raw
    return config


def _jwt_secret(instance: Path) -> str:
    """A development secret kept in the instance folder so that tokens survive restarts.

    Written to a private temporary file first and linked into place, so that several workers
    starting together agree on one secret (the link fails for all but the first).
    """
    path = instance / "jwt-secret.txt"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(dir=instance, prefix=".jwt-secret-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(secrets.token_urlsafe(48))
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    return path.read_text(encoding="utf-8").strip()


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the example API. ``config`` overrides the environment, which overrides defaults."""
    app = Flask(__name__, instance_relative_config=True)
    given = {**_from_environment(), **(config or {})}
    app.config.update(EXAMPLE_DEFAULTS)
    app.config.update(given)
    instance = Path(app.instance_path)
    instance.mkdir(parents=True, exist_ok=True)
    app.config.setdefault("EXAMPLE_DATABASE", str(instance / "example.sqlite3"))
    # "Use your identity provider" mode: tokens come from the provider, none are issued here
    provider = any(app.config.get(key) for key in PROVIDER_KEYS)
    app.config["EXAMPLE_PROVIDER_MODE"] = provider
    if provider and "APIGUARD_JWT_REVOCATION" not in given:
        # logout is the provider's, and not every provider's tokens carry a jti
        app.config["APIGUARD_JWT_REVOCATION"] = False
    elif not app.config.get("APIGUARD_JWT_SECRET") and not app.config.get("APIGUARD_JWT_KEYS") \
            and not app.config.get("APIGUARD_JWT_PRIVATE_KEY"):
        app.config["APIGUARD_JWT_SECRET"] = _jwt_secret(instance)

    db.init_app(app)
    guard.init_app(app)
    app.register_blueprint(bp)
    return app
