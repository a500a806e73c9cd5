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


def test_the_floor_target_answers_after_a_ping(redis_url: str) -> None:
    # in a child process: the floor target patches the memory backend for its whole process
    import os
    import subprocess
    import sys

    code = (
        "from benchmarks import apps, wsgi_targets as t\n"
        "env = apps.environ_for(apps.hs256_token())\n"
        "env['wsgi.input'] = __import__('io').BytesIO(apps.BODY)\n"
        "body = t.floor(env, lambda s, h, e=None: None)\n"
        "print(b''.join(body).decode())\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True,
                          env={**os.environ, "BENCH_PING_URL": redis_url}, timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"created"' in done.stdout


def test_redis_gate_py_quick(capsys: Any, redis_url: str) -> None:
    from benchmarks import redis_gate

    assert redis_gate.main(["--quick", "--redis", redis_url]) == 0
    out = capsys.readouterr().out
    assert "admit" in out and "PING on a plain socket" in out


def test_steps_py_quick() -> None:
    # in a child process: it wraps the guard's classes with timers for its whole process
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run([sys.executable, "benchmarks/steps.py", "--quick"], cwd=root,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    for step in ("whole request", "@validate", "shared state", "response step"):
        assert step in done.stdout
