"""Identity and the current_identity proxy."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, Response, stream_with_context

from flask_apiguard import ApiGuard, Identity, current_identity, require_jwt
from flask_apiguard.identity import ANONYMOUS

from .conftest import bearer, token_for


def test_anonymous_identity() -> None:
    assert not ANONYMOUS.is_authenticated
    assert ANONYMOUS.subject is None and ANONYMOUS.method is None and ANONYMOUS.key_id is None
    assert ANONYMOUS.roles == frozenset() and ANONYMOUS.scopes == frozenset()
    assert dict(ANONYMOUS.claims) == {}
    assert repr(ANONYMOUS) == "<Identity anonymous>"


def test_identity_is_frozen_and_claims_read_only() -> None:
    identity = Identity(subject="a", roles=frozenset({"x"}), method="jwt", claims={"sub": "a"})
    with pytest.raises(AttributeError):
        identity.subject = "b"  # type: ignore[misc]
    assert identity.has_roles("x", "y") and not identity.has_roles("x", "y", require="all")


def test_current_identity_outside_requests_and_apps() -> None:
    with Flask("x").test_request_context():
        assert current_identity.is_authenticated is False


def test_current_identity_in_a_guarded_request(app: Any, client: Any) -> None:
    token = token_for(app, "zoe", roles=["r"], scopes=["s1", "s2"], team="blue")
    seen: dict[str, Any] = {}

    @app.after_request
    def capture(response: Any) -> Any:
        seen.update(subject=current_identity.subject, roles=current_identity.roles,
                    scopes=current_identity.scopes, team=current_identity.claims.get("team"),
                    method=current_identity.method)
        try:
            current_identity.claims["team"] = "red"  # type: ignore[index]
        except TypeError:
            seen["read_only"] = True
        return response

    assert client.get("/private", headers=bearer(token)).status_code == 200
    assert seen == {"subject": "zoe", "roles": frozenset({"r"}), "scopes": frozenset({"s1", "s2"}),
                    "team": "blue", "method": "jwt", "read_only": True}


def test_current_identity_stays_the_callers_in_a_streamed_body_and_teardown(make_app: Any) -> None:
    # Teardown dropped the request state: streamed bodies and early teardown hooks saw anonymous.
    app = make_app(init=False)
    seen: list[Any] = []

    @app.teardown_request
    def early_teardown(exc: Any) -> None:  # registered before init_app: runs after the guard's
        seen.append(("teardown", current_identity.subject))

    @app.get("/stream")
    @require_jwt
    def stream() -> Any:
        def body() -> Any:
            yield f"{current_identity.subject}"

        return Response(stream_with_context(body()))

    ApiGuard(app)
    response = app.test_client().get("/stream", headers=bearer(token_for(app, "alice")))
    assert response.get_data(as_text=True) == "alice"
    assert ("teardown", "alice") in seen
