"""Identity and the current_identity proxy."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_apiguard import Identity, current_identity
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
