"""Request ids: generated, or accepted only when trusted and well-formed."""

from __future__ import annotations

import re
from typing import Any

import pytest

from .conftest import problem


def test_generated_when_not_trusted(client: Any) -> None:
    response = client.get("/health", headers={"X-Request-ID": "client-chosen"})
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    assert response.headers["X-Request-ID"] != "client-chosen"


def test_ids_differ(client: Any) -> None:
    assert client.get("/health").headers["X-Request-ID"] != client.get("/health").headers["X-Request-ID"]


def test_trusted_well_formed_id_is_kept(make_app: Any) -> None:
    app = make_app(APIGUARD_TRUST_REQUEST_ID=True)
    response = app.test_client().get("/private", headers={"X-Request-ID": "abc-123_XYZ.9"})
    assert response.headers["X-Request-ID"] == "abc-123_XYZ.9"
    assert problem(response)["request_id"] == "abc-123_XYZ.9"


@pytest.mark.parametrize("value", ["a" * 129, "with space", "crlf\r\ninjected: 1", "<script>",
                                   "semi;colon", "ünïcode", ""])
def test_malformed_trusted_id_is_replaced(make_app: Any, value: str) -> None:
    app = make_app(APIGUARD_TRUST_REQUEST_ID=True)
    environ = {"HTTP_X_REQUEST_ID": value}
    response = app.test_client().get("/health", environ_base=environ)
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])


def test_custom_header_name(make_app: Any) -> None:
    app = make_app(APIGUARD_REQUEST_ID_HEADER="X-Correlation-ID", APIGUARD_TRUST_REQUEST_ID=True)
    response = app.test_client().get("/health", headers={"X-Correlation-ID": "corr-1"})
    assert response.headers["X-Correlation-ID"] == "corr-1"
    assert "X-Request-ID" not in response.headers


def test_ids_neither_read_nor_advance_the_global_random(client: Any) -> None:
    # Ids came from random.getrandbits: ~156 of them recovered the app's whole random state.
    import random

    random.seed(1234)
    before = random.getstate()
    for _ in range(5):
        client.get("/health")
        client.get("/private")
    assert random.getstate() == before
