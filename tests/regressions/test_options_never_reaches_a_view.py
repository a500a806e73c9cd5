"""OPTIONS is never authenticated, so it must never run a view that handles OPTIONS itself."""

from __future__ import annotations

from typing import Any

from flask.views import MethodView

from flask_apiguard import ApiGuard, require_jwt, roles


def test_a_view_that_handles_options_is_not_run_for_anonymous_callers(make_app: Any) -> None:
    app = make_app(init=False)
    ran: list[str] = []

    @app.route("/admin/data", methods=["GET", "OPTIONS"])
    @require_jwt
    @roles("admin")
    def admin_data() -> Any:
        ran.append("view")
        return {"secret": "payroll"}

    class Users(MethodView):
        decorators = [require_jwt]

        @roles("admin")
        def options(self) -> Any:
            ran.append("options")
            return {"leak": True}

    app.add_url_rule("/users", view_func=Users.as_view("users"))
    ApiGuard(app)
    client = app.test_client()
    for path in ("/admin/data", "/users"):
        response = client.options(path)
        assert response.status_code == 200
        assert b"payroll" not in response.data and b"leak" not in response.data
        assert "OPTIONS" in response.headers["Allow"]
    assert ran == []
    assert client.get("/admin/data").status_code == 401
