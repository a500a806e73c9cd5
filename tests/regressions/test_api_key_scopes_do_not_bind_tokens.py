"""@require_api_key(scopes=...) next to @require_jwt: the scopes bind keys, not tokens."""

from __future__ import annotations

from typing import Any

from flask_apiguard import ApiGuard, require_api_key, require_jwt

from ..conftest import bearer, token_for


def test_a_token_passes_and_a_key_needs_its_scope(make_app: Any) -> None:
    app = make_app(init=False)

    @app.get("/reports")
    @require_jwt
    @require_api_key(scopes=["reports:read"])
    def reports() -> Any:
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    assert client.get("/reports", headers=bearer(token_for(app))).status_code == 200
    with app.app_context():
        store = app.extensions["apiguard"].api_keys
        scoped, _ = store.create("scoped", scopes=["reports:read"])
        bare, _ = store.create("bare")
    assert client.get("/reports", headers={"X-API-Key": scoped}).status_code == 200
    assert client.get("/reports", headers={"X-API-Key": bare}).status_code == 403
