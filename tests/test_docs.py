"""The documentation is true: every key and error code is documented, the quickstart runs."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path
from typing import Any

from flask_apiguard.config import DEFAULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"
CONTRACT_ERRORS = [
    "unauthorized", "invalid_token", "token_expired", "token_revoked", "invalid_api_key",
    "forbidden", "too_many_auth_failures", "rate_limit_exceeded", "validation_error",
    "malformed_json", "invalid_body", "duplicate_parameter", "unsupported_media_type",
    "payload_too_large", "method_not_allowed", "invalid_host", "https_required", "not_found",
    "service_unavailable", "internal_error", "gone",
]


def test_every_key_is_documented_once() -> None:
    text = (DOCS / "config.rst").read_text(encoding="utf-8")
    for key in DEFAULTS:
        assert len(re.findall(rf"^\.\. data:: APIGUARD_{key}$", text, re.M)) == 1, key


def test_every_error_code_is_in_the_catalogue() -> None:
    text = (DOCS / "errors.rst").read_text(encoding="utf-8")
    for code in CONTRACT_ERRORS:
        assert f'"error": "{code}"' in text or f'"error":"{code}"' in text, code


def test_the_quickstart_runs(tmp_path: Any, monkeypatch: Any) -> None:
    text = (DOCS / "quickstart.rst").read_text(encoding="utf-8")
    match = re.search(
        r"\.\. code-block:: python\n   :name: quickstart-app\n(?:   :\w+:.*\n)*\n((?:   .*\n|\n)+)", text)
    assert match, "the quickstart-app block is missing"
    source = "\n".join(line[3:] for line in match.group(1).splitlines())
    assert len([line for line in source.splitlines() if line.strip()]) < 20
    module = types.ModuleType("quickstart_app")
    module.__file__ = str(tmp_path / "quickstart_app.py")
    monkeypatch.setitem(sys.modules, "quickstart_app", module)
    monkeypatch.chdir(tmp_path)
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    app = module.app
    client = app.test_client()
    assert client.get("/health", base_url="https://localhost").status_code == 200
    denied = [r for r in app.url_map.iter_rules() if r.endpoint not in ("static", "health")]
    assert denied, "the quickstart should show a protected view"
    response = client.get(denied[0].rule, base_url="https://localhost")
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"
