"""example_app/README.md's walk-through, run for real: ``make run``'s server command on a free
port, then the README's ``sh`` blocks with bash and curl, each step's output checked."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import IN_CI, SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "example_app" / "README.md"
MAKEFILE = ROOT / "Makefile"
PLACEHOLDER = "<password printed by make run>"
ADMIN_PASSWORD = "violet-anchor-93-thimble"
KEY_SHAPE = re.compile(r"agk_([0-9a-f]{16})_([0-9a-f]{64})")
MARKER = "@@ end of step @@"


def clean_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items()
            if not k.startswith(("APIGUARD_", "EXAMPLE_", "FLASK_")) and k != "SECRET_KEY"}


def run_recipe(port: int) -> str:
    """``make run``'s server command from the Makefile, on ``port`` and this virtualenv, with
    ``exec`` after its variable assignments so that the server's pid is the shell's."""
    makefile = MAKEFILE.read_text(encoding="utf-8")
    found = re.search(r"^run:.*\n\t(.+)$", makefile, re.MULTILINE)
    assert found is not None, "the Makefile has no run target"
    recipe = found.group(1)
    assert recipe.startswith("APIGUARD_FORCE_HTTPS=false ")
    assert recipe.endswith(" --app example_app run --host 127.0.0.1 --port 5000")
    recipe = recipe.replace("$(BIN)", str(Path(sys.executable).parent)).replace(
        "--port 5000", f"--port {port}")
    return re.sub(r"^((?:[A-Z_]+=\S* )*)", r"\1exec ", recipe, count=1)


def walkthrough() -> list[tuple[str, str]]:
    """(title, shell) of each ``### `` step of the README's Walk-through section."""
    text = README.read_text(encoding="utf-8")
    assert "\n## Walk-through\n" in text
    section = text.split("\n## Walk-through\n", 1)[1].split("\n## ", 1)[0]
    steps = []
    for part in re.split(r"^### ", section, flags=re.MULTILINE)[1:]:
        title = part.splitlines()[0].strip()
        blocks = re.findall(r"^```sh\n(.*?)^```$", part, flags=re.MULTILINE | re.DOTALL)
        assert blocks, f"step {title!r} has no sh block"
        steps.append((title, "".join(blocks)))
    return steps


def need(program: str) -> None:
    if shutil.which(program) is None:
        message = f"the walk-through needs {program}, which is not on PATH"
        if IN_CI:
            pytest.fail(message + " (CI=true: it must run)")
        pytest.skip(message)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[int]:
    """``make run``'s command serving a fresh database on a free port; stopped by its pid."""
    need("curl")
    need("python3")
    port = free_port()
    env = clean_environment()
    env.update(
        EXAMPLE_DATABASE=str(tmp_path / "example.sqlite3"),
        EXAMPLE_ADMIN_PASSWORD=ADMIN_PASSWORD,
        APIGUARD_API_KEY_STORE=f"sqlite:///{tmp_path / 'keys.sqlite3'}",
        # keeps the repository's instance/ folder out of it (make run writes a dev secret there)
        APIGUARD_JWT_SECRET=SECRET,
    )
    log_path = tmp_path / "server.log"
    for _attempt in range(3):
        with log_path.open("wb") as log:
            process = subprocess.Popen(["bash", "-c", run_recipe(port)], cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        if _started(process, port, log_path):
            break
        # the free port was taken by someone else before the server bound it: another one
        _stop(process)
        if "Address already in use" not in log_path.read_text(errors="replace"):
            pytest.fail("the server did not start:\n" + log_path.read_text(errors="replace"))
        port = free_port()
    else:
        pytest.fail("the server found no free port:\n" + log_path.read_text(errors="replace"))
    try:
        yield port
    finally:
        _stop(process)
    assert "Traceback" not in log_path.read_text(errors="replace")


def _started(process: subprocess.Popen[bytes], port: int, log_path: Path) -> bool:
    """Whether this server (not another one on the same port) bound ``port`` and answers:
    the development server prints "Running on http://127.0.0.1:<port>" once it has bound it."""
    deadline = time.monotonic() + 30
    while process.poll() is None and time.monotonic() < deadline:
        if f"Running on http://127.0.0.1:{port}" in log_path.read_text(errors="replace"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
        time.sleep(0.1)
    return False


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


# -- what each step must print -------------------------------------------------------------------

def problem_line(line: str, error: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(line)
    assert body["error"] == error, body
    assert {"type", "title", "status", "detail", "request_id"} <= body.keys()
    return body


def split_http(output: str) -> tuple[str, dict[str, str], str]:
    """``curl -i`` output: status line, headers (lower-case names), body."""
    head, _, body = output.replace("\r\n", "\n").partition("\n\n")
    status, *lines = head.splitlines()
    headers = {name.strip().lower(): value.strip()
               for name, _, value in (line.partition(":") for line in lines)}
    return status, headers, body.strip()


def check_health(output: str) -> None:
    assert json.loads(output) == {"status": "healthy"}


def check_login(output: str) -> None:
    me = json.loads(output)
    assert me["subject"] == "admin"
    assert me["method"] == "jwt"
    assert me["roles"] == ["admin", "user"]


def check_create_note(output: str) -> None:
    note = json.loads(output)
    assert note["title"] == "First note"
    assert "<b>bold</b>" in note["body"]
    assert "<script" not in note["body"]
    assert "alert" not in note["body"]


def check_list_notes(output: str) -> None:
    [note] = json.loads(output)["notes"]
    assert note["title"] == "First note"
    assert "<script" not in note["body"]


def check_api_key(output: str) -> None:
    key, notes, write, keys, revoked_status, refused = output.strip().splitlines()
    shape = KEY_SHAPE.fullmatch(key)
    assert shape is not None, key
    assert [n["title"] for n in json.loads(notes)["notes"]] == ["First note"]
    assert json.loads(write)["status"] == 403
    problem_line(write, "forbidden")
    [listed] = json.loads(keys)["keys"]
    assert listed["key_id"] == shape.group(1)
    assert listed["scopes"] == ["notes:read"]
    assert shape.group(2) not in keys
    assert revoked_status == "204"
    problem_line(refused, "invalid_api_key")


def check_401(output: str) -> None:
    status, headers, body = split_http(output)
    assert status.split()[1] == "401"
    assert headers["content-type"] == "application/problem+json"
    assert headers["www-authenticate"] == "Bearer"
    assert headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert problem_line(body, "unauthorized")["request_id"] == headers["x-request-id"]


def check_throttled(output: str) -> None:
    lines = output.strip().splitlines()
    assert lines[:6] == ["401"] * 5 + ["429"]
    status, headers, body = split_http("\n".join(lines[6:]))
    assert status.split()[1] == "429"
    assert int(headers["retry-after"]) > 0
    assert headers["ratelimit-limit"] == "5"
    assert headers["ratelimit-remaining"] == "0"
    assert problem_line(body, "rate_limit_exceeded")["retry_after"] == int(headers["retry-after"])


def check_deprecated(output: str) -> None:
    status, headers, body = split_http(output)
    assert status.split()[1] == "200"
    assert headers["deprecation"] == "@1796083200"
    assert headers["sunset"] == "Sun, 30 Jun 2030 00:00:00 GMT"
    assert headers["link"] == '</api/notes>; rel="successor-version"'
    [note] = json.loads(body)
    assert note["title"] == "First note"


def check_openapi(output: str) -> None:
    lines = output.strip().splitlines()
    assert "GET /api/notes [{'jwt': ['notes:read']}, {'api_key': ['notes:read']}] " in lines
    assert "GET /api/health [] " in lines
    [v1] = [line for line in lines if line.startswith("GET /api/v1/notes ")]
    assert v1.endswith(" deprecated")


def check_logout(output: str) -> None:
    status, refused = output.strip().splitlines()
    assert status == "204"
    problem_line(refused, "token_revoked")


CHECKS: dict[str, Callable[[str], None]] = {
    "health": check_health,
    "log in": check_login,
    "create a note": check_create_note,
    "list your notes": check_list_notes,
    "api key": check_api_key,
    "401": check_401,
    "throttled": check_throttled,
    "deprecated": check_deprecated,
    "openapi": check_openapi,
    "log out": check_logout,
}


def test_readme_has_the_promised_steps() -> None:
    titles = [title.lower() for title, _ in walkthrough()]
    for keyword in CHECKS:
        assert sum(keyword in title for title in titles) == 1, (keyword, titles)
    shell = "".join(code for _, code in walkthrough())
    assert shell.count(PLACEHOLDER) == 1
    assert set(re.findall(r"https?://[^/\s\"']+", shell)) == {"http://127.0.0.1:5000"}


def test_readme_walkthrough_runs_verbatim(server: int, tmp_path: Path) -> None:
    steps = walkthrough()
    script = ["set -euo pipefail"]
    for _, code in steps:
        code = code.replace(PLACEHOLDER, ADMIN_PASSWORD).replace("127.0.0.1:5000", f"127.0.0.1:{server}")
        script += [code, f"printf '\\n{MARKER}\\n'"]
    result = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, env=clean_environment(),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout[-2000:], result.stderr[-2000:])
    outputs = result.stdout.split(f"\n{MARKER}\n")
    assert len(outputs) == len(steps) + 1 and outputs[-1] == ""
    for (title, _), output in zip(steps, outputs, strict=False):
        [check] = [c for keyword, c in CHECKS.items() if keyword in title.lower()]
        try:
            check(output.strip())
        except Exception as exc:
            raise AssertionError(f"step {title!r} printed:\n{output}") from exc
