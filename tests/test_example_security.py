"""The example app's policy, proven: its committed lockfile is current, every rule of it holds
by a request (the generated security tests, from the lockfile), and a copy of the app with a
role check removed fails both the lockfile check and the generated tests."""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from example_app import create_app
from flask_apiguard.cli import current_lock
from flask_apiguard.lockfile import compare, dumps, loads
from flask_apiguard.testing import apiguard_security_tests, security_cases

from .conftest import SECRET

ROOT = Path(__file__).resolve().parent.parent
LOCKFILE = ROOT / "example_app" / "apiguard.lock"
UPDATE = ("APIGUARD_API_KEY_STORE=memory:// EXAMPLE_DATABASE=/tmp/example.sqlite3 "
          "flask --app example_app apiguard routes --baseline example_app/apiguard.lock --update")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app reads APIGUARD_*/EXAMPLE_* from the environment: start from none of it."""
    for name in list(os.environ):
        if name.startswith(("APIGUARD_", "EXAMPLE_")) or name in ("SECRET_KEY", "FLASK_DEBUG"):
            monkeypatch.delenv(name)


def example_config(directory: Path) -> dict[str, Any]:
    return {
        "TESTING": True,
        "EXAMPLE_DATABASE": str(directory / "example.sqlite3"),
        "EXAMPLE_ADMIN_PASSWORD": "violet-anchor-93-thimble",
        "EXAMPLE_PASSWORD_METHOD": "pbkdf2:sha256:1000",
        "APIGUARD_JWT_SECRET": SECRET,
        "APIGUARD_API_KEY_STORE": "memory://",
    }


@contextmanager
def example_environment() -> Iterator[None]:
    """create_app reads APIGUARD_*/EXAMPLE_* from the environment: none of it, for a moment."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(("APIGUARD_", "EXAMPLE_"))}
    for name in saved:
        del os.environ[name]
    try:
        yield
    finally:
        os.environ.update(saved)


def collected_example() -> Flask:
    """The example app the generated tests run against (built once, when pytest collects)."""
    directory = Path(tempfile.mkdtemp(prefix="apiguard-example-"))
    atexit.register(shutil.rmtree, directory, True)
    with example_environment():
        return create_app(example_config(directory))


#: The one line: every rule of the committed lockfile, proven by a request to the example app.
test_security = apiguard_security_tests(collected_example, baseline=LOCKFILE)


def lock_text(app: Flask) -> str:
    with app.app_context():
        return dumps(current_lock())


@pytest.fixture
def broken_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Flask]]:
    """``create_app`` of a copy of the example app whose admin-only route lost its
    ``@roles("admin")`` (the planted policy bug)."""
    copy = tmp_path / "src" / "broken_example"
    shutil.copytree(ROOT / "example_app", copy, ignore=shutil.ignore_patterns("__pycache__"))
    api = copy / "api.py"
    source = api.read_text(encoding="utf-8")
    planted = source.replace('@bp.post("/users")\n@require_jwt\n@roles("admin")\n',
                             '@bp.post("/users")\n@require_jwt\n')
    assert planted != source, "the example's admin route changed: update the planted bug"
    api.write_text(planted, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    module = importlib.import_module("broken_example")
    yield module.create_app
    for name in [n for n in sys.modules if n == "broken_example" or n.startswith("broken_example.")]:
        del sys.modules[name]


def test_the_committed_lockfile_is_current(tmp_path: Path) -> None:
    current = lock_text(create_app(example_config(tmp_path)))
    committed = LOCKFILE.read_text(encoding="utf-8")
    if current != committed:
        changes = compare(loads(committed), loads(current))
        pytest.fail("example_app/apiguard.lock is out of date; review these changes and run\n  "
                    + UPDATE + "\n" + "\n".join(map(str, changes)))


def test_the_lockfile_check_catches_the_planted_role_bug(tmp_path: Path,
                                                         broken_example: Callable[..., Flask]) -> None:
    app = broken_example(example_config(tmp_path))
    assert lock_text(app) != LOCKFILE.read_text(encoding="utf-8")
    result = app.test_cli_runner().invoke(
        args=["apiguard", "routes", "--baseline", str(LOCKFILE), "--fail-on-loosen"])
    assert result.exit_code == 1, result.output
    assert "loosened: POST /api/users (api.create_user_view): no longer requires role admin" \
        in result.stdout


def test_the_generated_tests_catch_the_planted_role_bug(tmp_path: Path,
                                                        broken_example: Callable[..., Flask]) -> None:
    app = broken_example(example_config(tmp_path))
    failed = []
    for case in security_cases(app, baseline=LOCKFILE):
        try:
            case.run(app)
        except AssertionError as exc:
            failed.append(str(exc).splitlines()[0])
    assert failed == ["POST /api/users: token without role admin -> 403: expected 403, got 400 "
                      "validation_error"]
