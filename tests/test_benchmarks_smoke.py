"""The benchmark scripts still run (a few iterations; no timing is asserted)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest


def test_run_py_quick(capsys: Any) -> None:
    pytest.importorskip("flask_limiter", reason="the anchors need the [bench] extra")
    pytest.importorskip("apiflask", reason="the anchors need the [bench] extra")
    from benchmarks import run

    assert run.main(["--quick"]) == 0
    table = capsys.readouterr().out
    for row in ("bare Flask", "hand-assembled", "APIFlask", "plain WSGI", "ApiGuard, memory storage"):
        assert row in table


def test_run_py_redis_rows(capsys: Any, redis_url: str) -> None:
    pytest.importorskip("flask_limiter", reason="the anchors need the [bench] extra")
    from benchmarks import run

    assert run.main(["--quick", "--redis", redis_url, "--only", "Redis"]) == 0
    assert "ApiGuard, Redis storage" in capsys.readouterr().out


def test_fields_py_quick(capsys: Any) -> None:
    from benchmarks import fields

    assert fields.main(["--quick"]) == 0
    out = capsys.readouterr().out
    assert "bleach" in out and "nh3" in out and "@validate" in out


def test_load_py_is_importable_and_needs_wrk() -> None:
    from benchmarks import load

    assert callable(load.main)
    if shutil.which("wrk") is None:
        assert load.main(["--duration", "1"]) == 2


def test_layers_py_quick(capsys: Any) -> None:
    from benchmarks import layers

    assert layers.main(["--quick"]) == 0
    assert "+ @validate" in capsys.readouterr().out
