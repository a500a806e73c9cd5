"""count="failures": parallel guesses may not all pass the test before the first is counted."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest
from flask import abort, request

from flask_apiguard import ApiGuard, public, rate_limit


def login_app(make_app: Any, **config: Any) -> Any:
    app = make_app(init=False, **config)
    checks: list[int] = []

    @app.post("/login")
    @public
    @rate_limit("5 per 15 minutes", key="ip", count="failures")
    def login() -> Any:
        checks.append(1)
        time.sleep(0.2)  # a password hash
        if (request.get_json(silent=True) or {}).get("password") != "right":
            abort(401, "Wrong username or password.")
        return {"ok": True}

    ApiGuard(app)
    app.checks = checks  # type: ignore[attr-defined]
    return app


def hammer(app: Any, count: int, password: str = "wrong") -> Counter[int]:
    statuses: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        response = app.test_client().post("/login", json={"password": password})
        with lock:
            statuses.append(response.status_code)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return Counter(statuses)


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_fifty_parallel_guesses_run_at_most_five_password_checks(
        make_app: Any, storage: str, request: Any) -> None:
    config = {}
    if storage == "redis":
        config = request.getfixturevalue("redis_config")()
    app = login_app(make_app, **config)
    statuses = hammer(app, 50)
    assert statuses[401] <= 5 and statuses[401] + statuses[429] == 50, statuses
    assert len(app.checks) <= 5
    # and the five failures are counted: the next guess, even a right one, is refused
    assert app.test_client().post("/login", json={"password": "right"}).status_code == 429


def test_successes_release_their_place(make_app: Any) -> None:
    app = login_app(make_app)
    for _ in range(3):
        assert hammer(app, 5, password="right") == Counter({200: 5})
    assert hammer(app, 5) == Counter({401: 5})
    assert app.test_client().post("/login", json={"password": "right"}).status_code == 429
