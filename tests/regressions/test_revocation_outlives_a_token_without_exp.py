"""A revoked token with no exp stays revoked as long as MAX_AGE lets it live."""

from __future__ import annotations

import time
from typing import Any

import jwt

from flask_apiguard import ApiGuard

from ..conftest import SECRET, bearer


def test_revocation_lasts_max_age(make_app: Any) -> None:
    app = make_app(APIGUARD_JWT_REQUIRED_CLAIMS=["sub"], APIGUARD_JWT_MAX_AGE=90 * 86400,
                   APIGUARD_JWT_REVOCATION=True)
    now = int(time.time())
    token = jwt.encode({"sub": "alice", "iat": now, "jti": "j1"}, SECRET, algorithm="HS256")
    client = app.test_client()
    assert client.get("/private", headers=bearer(token)).status_code == 200
    with app.app_context():
        ApiGuard().revoke_token(token)
    assert client.get("/private", headers=bearer(token)).get_json()["error"] == "token_revoked"
    entries = app.extensions["apiguard"].shared.primary.revocations._entries
    assert entries["j1"] - time.time() > 89 * 86400
