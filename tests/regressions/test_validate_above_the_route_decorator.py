"""@validate works above or below the route decorator: decorators only record."""

from __future__ import annotations

from typing import Any

import pytest
from marshmallow import fields

from flask_apiguard import ApiGuard, ApiGuardConfigError, public, validate


def test_validate_above_the_route_decorator_still_validates(make_app: Any) -> None:
    app = make_app(init=False)

    @validate({"name": fields.String(required=True)})
    @app.post("/above")
    @public
    def above(json_data: dict[str, Any]) -> Any:
        return {"name": json_data["name"]}

    ApiGuard(app)
    client = app.test_client()
    assert client.post("/above", json={"name": "x"}).get_json() == {"name": "x"}
    refused = client.post("/above", json={"nom": "x"})
    assert refused.status_code == 400
    assert refused.get_json()["error"] == "validation_error"


def test_a_url_argument_with_the_same_name_is_refused(make_app: Any) -> None:
    app = make_app(init=False, PROPAGATE_EXCEPTIONS=True)

    @app.get("/items/<path_data>")
    @public
    @validate({"path_data": fields.String()}, location="path")
    def item(path_data: str) -> Any:
        return {}

    ApiGuard(app)
    with pytest.raises(ApiGuardConfigError, match="arg_name"):
        app.test_client().get("/items/x")
