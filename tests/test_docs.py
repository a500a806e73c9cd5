"""The documentation is true: every key and error code is documented, the quickstart runs."""

from __future__ import annotations

import re
import secrets
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from flask_apiguard import ApiGuard, public, rate_limit
from flask_apiguard.audit import is_documented_secret
from flask_apiguard.config import DEFAULTS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
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
    monkeypatch.setenv("APIGUARD_JWT_SECRET", secrets.token_urlsafe(48))  # as the page says
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    app = module.app
    client = app.test_client()
    assert client.get("/health", base_url="https://localhost").status_code == 200
    denied = [r for r in app.url_map.iter_rules() if r.endpoint not in ("static", "health")]
    assert denied, "the quickstart should show a protected view"
    response = client.get(denied[0].rule, base_url="https://localhost")
    assert response.status_code == 401
    assert response.get_json()["error"] == "unauthorized"


# -- no secret to copy ------------------------------------------------------------------------
# docs/quickstart.rst, docs/index.rst and docs/deployment.rst printed a real-looking JWT secret,
# and `check` accepted it from anyone who copied it.

#: A literal assigned to a JWT secret, in Python (subscript, dict, keyword) or a shell line.
SECRET_ASSIGNMENT = re.compile(
    r"""(?:APIGUARD_JWT_SECRET|JWT_SECRET\w*)["'\]]*[ \t]*[:=][ \t]*"""
    r"""(?:(?P<quote>["'])(?P<quoted>[^"'\n]*)(?P=quote)|(?P<bare>[A-Za-z0-9_+/=-]{16,})(?![\w.(\[+/=-]))""")
#: Every string value of a literal APIGUARD_JWT_KEYS dict.
KEYS_ASSIGNMENT = re.compile(r"""APIGUARD_JWT_KEYS["'\]]*[ \t]*[:=][ \t]*\{(?P<body>[^}]*)\}""")
KEYS_VALUE = re.compile(r""":\s*(?P<quote>["'])(?P<value>[^"'\n]*)(?P=quote)""")
#: Shorter secrets are refused at start-up (APIGUARD_JWT_SECRET), so they cannot be copied.
MIN_SECRET_BYTES = 32


def documented_secrets(text: str) -> list[str]:
    """Every literal a page assigns to a JWT secret, shell substitutions left out."""
    found = [m.group("quoted") if m.group("quote") else m.group("bare")
             for m in SECRET_ASSIGNMENT.finditer(text)]
    for block in KEYS_ASSIGNMENT.finditer(text):
        found += [m.group("value") for m in KEYS_VALUE.finditer(block.group("body"))]
    return [value for value in found if not value.startswith("$")]


def pages() -> list[Path]:
    example = [p for p in (ROOT / "example_app").rglob("*")
               if p.suffix in (".py", ".md", ".txt", ".cfg", ".toml", ".env") and p.is_file()]
    return [ROOT / "README.md", *sorted(DOCS.glob("*.rst")), *sorted(example)]


@pytest.mark.parametrize("line", [
    'app.config["APIGUARD_JWT_SECRET"] = "{s}"',
    '    "APIGUARD_JWT_SECRET": "{s}",',
    "    APIGUARD_JWT_SECRET='{s}',",
    "$ export APIGUARD_JWT_SECRET={s}",
    "JWT_SECRET={s} flask run",
    'app.config["APIGUARD_JWT_KEYS"] = {{"2025-01": "{s}", "2025-06": other}}',
])
def test_the_secret_scanner_sees_each_way_of_writing_one(line: str) -> None:
    value = "kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx"
    assert documented_secrets(line.format(s=value)) == [value]


@pytest.mark.parametrize("line", [
    'app.config["APIGUARD_JWT_SECRET"] = os.environ["APIGUARD_JWT_SECRET"]',
    "APIGUARD_JWT_SECRET=os.environ[\"JWT_SECRET\"],",
    'APIGUARD_JWT_SECRET="$(cat /run/secrets/jwt_secret)"',
    '"APIGUARD_JWT_SECRET": secrets.token_urlsafe(48),',
    'app.config["APIGUARD_JWT_KEYS"] = {"2025-01": os.environ["JWT_SECRET_OLD"]}',
])
def test_the_secret_scanner_ignores_secrets_read_at_run_time(line: str) -> None:
    assert documented_secrets(line) == []


def test_every_secret_in_the_docs_is_known_to_the_audit() -> None:
    """A secret a page shows must be one ``check`` flags (``jwt-secret-documented``), so that
    nobody runs with it; shorter literals are placeholders that start-up refuses."""
    for page in pages():
        for value in documented_secrets(page.read_text(encoding="utf-8")):
            if len(value.encode()) >= MIN_SECRET_BYTES:
                assert is_documented_secret(value.encode()), (
                    f"{page.relative_to(ROOT)} shows the JWT secret {value!r}: read it from the "
                    "environment instead, or add its digest to audit.DOCUMENTED_SECRETS")


def test_the_docs_read_the_jwt_secret_from_the_environment() -> None:
    for page in (ROOT / "README.md", DOCS / "index.rst", DOCS / "quickstart.rst"):
        text = page.read_text(encoding="utf-8")
        assert 'app.config["APIGUARD_JWT_SECRET"] = os.environ["APIGUARD_JWT_SECRET"]' in text, page
        assert documented_secrets(text) == [], page


# -- the first 429 ----------------------------------------------------------------------------
# "5 per 15 minutes" answering Retry-After: 389 looked like a bug: nothing explained it.

def test_the_retry_after_walk_through_is_what_the_code_answers(
    make_app: Any, counter_clock: Any
) -> None:
    app = make_app(init=False)

    @app.post("/login")
    @public
    @rate_limit("5 per 15 minutes", key="ip")
    def login() -> Any:
        return {"ok": True}

    ApiGuard(app)
    client = app.test_client()
    answers = []
    # 12:00:00 of the page is the counters' clock at a moment every window starts
    for at in (510.2, 510.4, 510.6, 510.8, 511.0, 511.4, 900.4, 901.0, 1080.4, 1260.4):
        counter_clock.freeze(at)
        response = client.post("/login")
        answers.append((response.status_code, response.headers.get("Retry-After")))
    assert answers == [(200, None)] * 5 + [(429, "389"), (200, None), (429, "179"),
                                           (200, None), (200, None)]
    page = (DOCS / "ratelimit.rst").read_text(encoding="utf-8")
    for shown in ("12:08:31.4                the sixth           429  Retry-After: 389",
                  "12:15:00.4                                    200",
                  "12:15:01.0                                    429  Retry-After: 179",
                  "12:18:00.4                                    200",
                  "12:21:00.4                                    200"):
        assert shown in page
    assert "`Retry-After: 389`" in (ROOT / "README.md").read_text(encoding="utf-8")
