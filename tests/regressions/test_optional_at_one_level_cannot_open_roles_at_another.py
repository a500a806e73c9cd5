"""@require_jwt(optional=True) on a class never lets anonymous callers past a method's @roles."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from flask_apiguard import ApiGuard, require_jwt, roles, scopes

from ..conftest import bearer, token_for


def test_roles_and_scopes_still_need_an_identity(make_app: Any) -> None:
    app = make_app(init=False)

    @require_jwt(optional=True)
    class Reports(MethodView):
        def get(self) -> Any:
            return {"public": True}

        @roles("admin")
        def delete(self) -> Any:
            return {"deleted": "everything"}

        @scopes("reports:write")
        def post(self) -> Any:
            return {"created": True}

    @roles("editor")
    class Articles(MethodView):
        @require_jwt(optional=True)
        def get(self) -> Any:
            return {"drafts": "unpublished"}

    app.add_url_rule("/reports", view_func=Reports.as_view("reports"))
    app.add_url_rule("/articles", view_func=Articles.as_view("articles"))
    ApiGuard(app)
    client = app.test_client()
    assert client.get("/reports").status_code == 200  # optional really is optional here
    assert client.delete("/reports").status_code == 401
    assert client.post("/reports").status_code == 401
    assert client.get("/articles").status_code == 401
    assert client.get("/articles", headers=bearer(token_for(app))).status_code == 403
    editor = token_for(app, "ed", roles=["editor"])
    assert client.get("/articles", headers=bearer(editor)).status_code == 200
