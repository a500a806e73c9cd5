"""A scanner's 404s must not flood the security log or the request_rejected signal."""

from __future__ import annotations

import logging
from typing import Any

from flask_apiguard import signals


def test_unknown_path_is_neither_logged_nor_signalled(app: Any, client: Any, caplog: Any) -> None:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **event: Any) -> None:
        received.append(event)

    with signals.request_rejected.connected_to(receiver, app), \
            caplog.at_level(logging.INFO, logger="flask_apiguard.security"):
        response = client.get("/wp-admin/setup.php")
    assert response.status_code == 404
    assert received == []
    assert [r for r in caplog.records if r.name == "flask_apiguard.security"] == []


def test_wrong_method_on_a_real_route_is_still_an_event(app: Any, client: Any) -> None:
    received: list[dict[str, Any]] = []

    def receiver(sender: Any, **event: Any) -> None:
        received.append(event)

    with signals.request_rejected.connected_to(receiver, app):
        assert client.delete("/health").status_code == 405
    assert [e["error"] for e in received] == ["method_not_allowed"]
