"""An app's after_request hook that raises must not strip the guard's headers from the 500."""

from __future__ import annotations

from typing import Any

from ..conftest import problem


def test_the_500_of_a_failing_app_hook_has_the_guard_headers(make_app: Any) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)

    @app.after_request
    def broken(response: Any) -> Any:
        raise RuntimeError("a bug in the app's hook")

    response = app.test_client().get("/health")
    assert response.status_code == 500
    assert response.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"
    assert problem(response)["error"] == "internal_error"
