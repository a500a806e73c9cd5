"""The example API end to end: every request goes through the HTTP API (Flask's test client),
with a database of the test's own, real tokens, real API keys and, where marked, real Redis."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from flask import Flask
from flask.testing import FlaskClient

from example_app import create_app

from .conftest import SECRET, HttpsClient, PrivateRedis, bearer, problem

ROOT = Path(__file__).resolve().parent.parent
ADMIN_PASSWORD = "violet-anchor-93-thimble"
USER_PASSWORD = "tangerine-orbit-57-lantern"
#: Fast hashing for tests (the example's default is scrypt).
FAST_HASH = "pbkdf2:sha256:1000"
KEY_SHAPE = re.compile(r"agk_([0-9a-f]{16})_([0-9a-f]{64})")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


# The login limit is "5 per 15 minutes" on a sliding-window counter whose memory windows line
# up with the clock: each test starts at the beginning of a window on the counters' clock
# (conftest.counter_clock; it used to sleep past a boundary); on Redis windows start at the
# first hit.


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_app reads APIGUARD_*/EXAMPLE_* from the environment: start from none of it."""
    for name in list(os.environ):
        if name.startswith(("APIGUARD_", "EXAMPLE_")) or name in ("SECRET_KEY", "FLASK_DEBUG"):
            monkeypatch.delenv(name)


def example_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "TESTING": True,
        "EXAMPLE_DATABASE": str(tmp_path / "example.sqlite3"),
        "EXAMPLE_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "EXAMPLE_PASSWORD_METHOD": FAST_HASH,
        "APIGUARD_JWT_SECRET": SECRET,
        "APIGUARD_API_KEY_STORE": f"sqlite:///{tmp_path / 'keys.sqlite3'}",
    }
    config.update(overrides)
    return config


def build(config: dict[str, Any]) -> Flask:
    app = create_app(config)
    app.test_client_class = HttpsClient
    return app


@pytest.fixture
def api(tmp_path: Path) -> Flask:
    return build(example_config(tmp_path))


@pytest.fixture
def client(api: Flask) -> FlaskClient:
    return api.test_client()


def login(client: FlaskClient, username: str = "admin", password: str = ADMIN_PASSWORD) -> str:
    response = client.post("/api/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.data
    token: str = response.json["access_token"]  # type: ignore[index]
    return token


def add_user(client: FlaskClient, username: str, password: str = USER_PASSWORD) -> str:
    """Create a normal user through the admin API; return a token of theirs."""
    admin = login(client)
    response = client.post("/api/users", headers=bearer(admin), json={
        "username": username, "email": f"{username}@example.com", "password": password,
    })
    assert response.status_code == 201, response.data
    return login(client, username, password)


def new_key(client: FlaskClient, token: str, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "laptop")
    response = client.post("/api/keys", headers=bearer(token), json=body)
    assert response.status_code == 201, response.data
    created: dict[str, Any] = response.json  # type: ignore[assignment]
    return created


def new_note(client: FlaskClient, token: str, title: str = "groceries", body: str = "milk") -> int:
    response = client.post("/api/notes", headers=bearer(token), json={"title": title, "body": body})
    assert response.status_code == 201, response.data
    return int(response.json["id"])  # type: ignore[index]


def api_key(plaintext: str) -> dict[str, str]:
    return {"X-API-Key": plaintext}


def bad_login(client: FlaskClient, username: str = "admin") -> Any:
    return client.post("/api/auth/login", json={"username": username, "password": "not-the-password"})


# -- start-up and health ----------------------------------------------------------------------

def test_health_is_public(client: FlaskClient) -> None:
    response = client.get("/api/health")
    assert response.status_code == 200
    assert response.json == {"status": "healthy"}


def test_first_start_prints_the_admin_password_once(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = example_config(tmp_path)
    del config["EXAMPLE_ADMIN_PASSWORD"]
    app = build(config)
    printed = re.search(r"admin / (\S+)", capsys.readouterr().err)
    assert printed is not None
    login(app.test_client(), "admin", printed.group(1))
    build(config)  # the second start finds the admin and prints nothing
    assert "admin /" not in capsys.readouterr().err


def test_configuration_comes_from_the_environment(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``make run`` relies on: ``APIGUARD_FORCE_HTTPS=false`` is decoded to False."""
    monkeypatch.setenv("APIGUARD_FORCE_HTTPS", "false")
    monkeypatch.setenv("EXAMPLE_DATABASE", str(tmp_path / "from-env.sqlite3"))
    config = example_config(tmp_path)
    del config["EXAMPLE_DATABASE"]
    app = create_app(config)
    client = app.test_client()
    assert client.get("/api/health", base_url="http://localhost").status_code == 200
    response = client.post("/api/auth/login", base_url="http://localhost",
                           json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    assert (tmp_path / "from-env.sqlite3").exists()


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)  # the usual umask, under which SQLite makes 0644 files
    yield
    os.umask(old)


# The example's database (password hashes) and the API key store were created 0644, their
# -wal and -shm files too: readable by every account on the host.
@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_sqlite_files_are_private(tmp_path: Path, umask_022: None) -> None:
    client = build(example_config(tmp_path)).test_client()
    reader = sqlite3.connect(tmp_path / "example.sqlite3")  # keeps -wal and -shm in place
    try:
        reader.execute("SELECT count(*) FROM users").fetchone()
        token = add_user(client, "bob")
        new_key(client, token)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.glob("*.sqlite3*")}
    finally:
        reader.close()
    assert {"example.sqlite3", "example.sqlite3-wal", "example.sqlite3-shm",
            "keys.sqlite3", "keys.sqlite3-wal", "keys.sqlite3-shm"} <= set(modes)
    assert set(modes.values()) == {0o600}, modes


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_a_database_readable_by_others_is_made_private(
    tmp_path: Path, umask_022: None, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "example.sqlite3"
    sqlite3.connect(path).close()
    path.chmod(0o644)
    caplog.set_level(logging.WARNING)
    build(example_config(tmp_path))
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert any(f"{path} was readable by other accounts" in r.getMessage() for r in caplog.records)


def test_plain_http_is_redirected_or_refused_by_default(api: Flask) -> None:
    client = api.test_client()
    response = client.get("/api/health", base_url="http://localhost")
    assert response.status_code == 301
    assert response.headers["Location"] == "https://localhost/api/health"
    response = client.post("/api/auth/login", base_url="http://localhost",
                           json={"username": "admin", "password": ADMIN_PASSWORD})
    assert problem(response)["error"] == "https_required"
    assert response.status_code == 403


def _first_start(config: dict[str, Any], barrier: Any, results: Any) -> None:
    """One worker's start-up (a gunicorn worker calling ``create_app()``)."""
    barrier.wait(timeout=60)
    try:
        create_app(config)
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")
    else:
        results.put("ok")


@pytest.mark.slow
def test_several_workers_can_start_on_an_empty_database(tmp_path: Path) -> None:
    """``gunicorn -w 4`` on a fresh database: every worker seeds the admin at once. The check
    then insert in ``db.init_app`` races, and a worker that loses it fails to boot."""
    config = example_config(tmp_path)
    del config["EXAMPLE_PASSWORD_METHOD"]  # the real (slow) hash, as on a real first start
    context = multiprocessing.get_context("spawn")
    workers = 4
    barrier, results = context.Barrier(workers), context.Queue()
    processes = [context.Process(target=_first_start, args=(config, barrier, results))
                 for _ in range(workers)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    assert outcomes == ["ok"] * workers


# -- login, me, logout ------------------------------------------------------------------------

def test_login_gives_a_token_for_me(client: FlaskClient) -> None:
    response = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    assert response.json["token_type"] == "Bearer"
    assert response.json["expires_in"] == 900
    me = client.get("/api/me", headers=bearer(response.json["access_token"]))
    assert me.status_code == 200
    assert me.json == {"subject": "admin", "roles": ["admin", "user"],
                       "scopes": ["notes:read", "notes:write"], "method": "jwt"}


def test_token_response_is_not_cacheable(client: FlaskClient) -> None:
    """RFC 6749 section 5.1: a response carrying a token must say ``Cache-Control: no-store``
    (the login request carries no credentials, so the guard's own rule does not cover it)."""
    response = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert response.status_code == 200
    assert response.headers.get("Cache-Control") == "no-store"


def test_me_without_credentials_is_401(client: FlaskClient) -> None:
    response = client.get("/api/me")
    assert problem(response)["error"] == "unauthorized"
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"


def test_user_enumeration_wrong_password_and_unknown_user_answer_alike(client: FlaskClient) -> None:
    wrong_password = bad_login(client, "admin")
    unknown_user = bad_login(client, "nobody")
    answers = []
    for response in (wrong_password, unknown_user):
        assert response.status_code == 401
        body = problem(response)
        del body["request_id"]
        varying = {"x-request-id", "ratelimit-remaining", "ratelimit-reset"}
        answers.append((body, sorted((k, v) for k, v in response.headers.items()
                                     if k.lower() not in varying)))
    assert answers[0] == answers[1]
    assert answers[0][0]["detail"] == "Wrong username or password."


def test_login_brute_force_is_throttled_after_five_failures(client: FlaskClient) -> None:
    for attempt in range(5):
        response = bad_login(client)
        assert response.status_code == 401, attempt
        assert response.headers["RateLimit-Remaining"] == str(4 - attempt)
    response = bad_login(client)
    body = problem(response)
    assert response.status_code == 429
    assert body["error"] == "rate_limit_exceeded"
    assert int(response.headers["Retry-After"]) > 0
    assert body["retry_after"] == int(response.headers["Retry-After"])
    # locked: the right password does not get through either (no oracle)
    right = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert right.status_code == 429


def test_first_login_failure_reports_when_the_budget_resets(client: FlaskClient) -> None:
    """The failure just counted is held for the window: ``RateLimit-Reset: 0`` would tell a
    client that its budget is already back to full."""
    response = bad_login(client)
    assert response.headers["RateLimit-Remaining"] == "4"
    assert int(response.headers["RateLimit-Reset"]) > 0


def test_successful_logins_do_not_use_the_failure_budget(client: FlaskClient) -> None:
    for _ in range(8):
        response = client.post("/api/auth/login",
                               json={"username": "admin", "password": ADMIN_PASSWORD})
        assert response.status_code == 200
        assert response.headers["RateLimit-Remaining"] == "5"
    for attempt in range(5):
        assert bad_login(client).status_code == 401, attempt
    assert bad_login(client).status_code == 429


def test_logout_revokes_the_token(client: FlaskClient) -> None:
    token = login(client)
    other = login(client)
    assert client.get("/api/me", headers=bearer(token)).status_code == 200
    response = client.post("/api/auth/logout", headers=bearer(token))
    assert response.status_code == 204
    assert response.data == b""
    for path, method in (("/api/me", "GET"), ("/api/auth/logout", "POST")):
        refused = client.open(path, method=method, headers=bearer(token))
        assert refused.status_code == 401
        assert problem(refused)["error"] == "token_revoked"
    # only that token: another session of the same user goes on
    assert client.get("/api/me", headers=bearer(other)).status_code == 200


def test_forged_token_is_refused(client: FlaskClient) -> None:
    header, payload, _ = login(client).split(".")
    response = client.get("/api/me", headers=bearer(f"{header}.{payload}.{'A' * 43}"))
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_token"


# -- users (admins only) ----------------------------------------------------------------------

def test_create_user_as_admin(client: FlaskClient) -> None:
    admin = login(client)
    response = client.post("/api/users", headers=bearer(admin), json={
        "username": "bob", "email": "bob@example.com", "password": USER_PASSWORD,
    })
    assert response.status_code == 201
    assert response.json == {"username": "bob", "email": "bob@example.com", "roles": ["user"]}
    me = client.get("/api/me", headers=bearer(login(client, "bob", USER_PASSWORD)))
    assert me.json["roles"] == ["user"]


def test_normal_user_cannot_create_users(client: FlaskClient) -> None:
    bob = add_user(client, "bob")
    response = client.post("/api/users", headers=bearer(bob), json={
        "username": "carol", "email": "carol@example.com", "password": USER_PASSWORD,
    })
    assert response.status_code == 403
    assert problem(response)["error"] == "forbidden"


def test_api_key_cannot_reach_the_jwt_only_admin_route(client: FlaskClient) -> None:
    key = new_key(client, login(client))["key"]
    response = client.post("/api/users", headers=api_key(key), json={
        "username": "carol", "email": "carol@example.com", "password": USER_PASSWORD,
    })
    assert response.status_code == 401
    assert problem(response)["error"] == "unauthorized"


def test_common_password_is_refused(client: FlaskClient) -> None:
    response = client.post("/api/users", headers=bearer(login(client)), json={
        "username": "bob", "email": "bob@example.com", "password": "password123456",
    })
    body = problem(response)
    assert response.status_code == 400
    assert body["error"] == "validation_error"
    assert list(body["errors"]) == ["password"]


def test_mass_assignment_of_role_is_refused(client: FlaskClient) -> None:
    response = client.post("/api/users", headers=bearer(login(client)), json={
        "username": "mallory", "email": "mallory@example.com", "password": USER_PASSWORD,
        "role": "admin",
    })
    body = problem(response)
    assert response.status_code == 400
    assert body["error"] == "validation_error"
    assert list(body["errors"]) == ["role"]
    assert bad_login(client, "mallory").status_code == 401  # nothing was created


def test_unknown_role_is_refused(client: FlaskClient) -> None:
    response = client.post("/api/users", headers=bearer(login(client)), json={
        "username": "mallory", "email": "mallory@example.com", "password": USER_PASSWORD,
        "roles": ["superuser"],
    })
    assert response.status_code == 400
    assert "roles" in problem(response)["errors"]


def test_script_tag_in_username_is_refused(client: FlaskClient) -> None:
    response = client.post("/api/users", headers=bearer(login(client)), json={
        "username": "<script>alert(1)</script>", "email": "x@example.com", "password": USER_PASSWORD,
    })
    body = problem(response)
    assert response.status_code == 400
    assert body["error"] == "validation_error"
    assert list(body["errors"]) == ["username"]
    assert "<script>" not in response.get_data(as_text=True)


def test_username_pattern_must_match_the_whole_name(client: FlaskClient) -> None:
    """``Use 3-64 of a-z, 0-9, _ . -`` must hold for the whole name, not just its start."""
    admin = login(client)
    for username in ("bob smith", "bobX", "bob;drop table users", "bob/../admin"):
        response = client.post("/api/users", headers=bearer(admin), json={
            "username": username, "email": "bob@example.com", "password": USER_PASSWORD,
        })
        assert response.status_code == 400, username
        assert list(problem(response)["errors"]) == ["username"]


def test_duplicate_username_is_409(client: FlaskClient) -> None:
    admin = login(client)
    body = {"username": "bob", "email": "bob@example.com", "password": USER_PASSWORD}
    assert client.post("/api/users", headers=bearer(admin), json=body).status_code == 201
    response = client.post("/api/users", headers=bearer(admin), json=body)
    assert response.status_code == 409
    assert problem(response)["detail"] == "That username is taken."


# -- API keys ---------------------------------------------------------------------------------

def test_api_key_is_shown_once_and_never_listed(client: FlaskClient) -> None:
    admin = login(client)
    created = new_key(client, admin, name="ci")
    shape = KEY_SHAPE.fullmatch(created["key"])
    assert shape is not None
    assert shape.group(1) == created["key_id"]
    assert created["owner"] == "admin"
    assert created["scopes"] == ["notes:read", "notes:write"]
    listed = client.get("/api/keys", headers=bearer(admin))
    assert listed.status_code == 200
    [key] = listed.json["keys"]
    assert key["key_id"] == created["key_id"]
    assert "key" not in key
    assert shape.group(2) not in listed.get_data(as_text=True)


def test_key_list_shows_only_the_callers_keys(client: FlaskClient) -> None:
    admin = login(client)
    bob = add_user(client, "bob")
    mine = new_key(client, admin, name="admin-laptop")
    theirs = new_key(client, bob, name="bob-laptop")
    listed = client.get("/api/keys", headers=bearer(bob)).json["keys"]
    assert [k["key_id"] for k in listed] == [theirs["key_id"]]
    assert mine["key_id"] not in json.dumps(listed)


def test_api_key_reads_the_owners_notes(client: FlaskClient) -> None:
    admin = login(client)
    note_id = new_note(client, admin, "from the token")
    key = new_key(client, admin)["key"]
    response = client.get("/api/notes", headers=api_key(key))
    assert response.status_code == 200
    assert [n["id"] for n in response.json["notes"]] == [note_id]
    me = client.get("/api/me", headers=api_key(key)).json
    assert me["method"] == "api_key"
    assert me["subject"] == "admin"
    assert me["roles"] == []  # a key never carries its owner's admin role


def test_read_only_key_cannot_write_notes(client: FlaskClient) -> None:
    key = new_key(client, login(client), scopes=["notes:read"])["key"]
    response = client.post("/api/notes", headers=api_key(key), json={"title": "nope"})
    assert response.status_code == 403
    assert problem(response)["error"] == "forbidden"
    assert client.get("/api/notes", headers=api_key(key)).status_code == 200


def test_a_key_without_an_owner_cannot_write_notes(tmp_path: Path) -> None:
    # A key made with the CLI and no --owner could create notes that no user account owns.
    app = build(example_config(tmp_path, APIGUARD_API_KEY_STORE="memory://"))
    with app.app_context():
        plaintext, _ = app.extensions["apiguard"].api_keys.create(
            "ownerless", scopes=["notes:read", "notes:write"])
    response = app.test_client().post("/api/notes", json={"title": "t"},
                                      headers={"X-API-Key": plaintext})
    assert response.status_code == 403
    assert response.get_json()["error"] == "forbidden"


def test_revoked_key_is_refused(client: FlaskClient) -> None:
    admin = login(client)
    created = new_key(client, admin)
    assert client.get("/api/notes", headers=api_key(created["key"])).status_code == 200
    response = client.delete(f"/api/keys/{created['key_id']}", headers=bearer(admin))
    assert response.status_code == 204
    refused = client.get("/api/notes", headers=api_key(created["key"]))
    assert refused.status_code == 401
    assert problem(refused)["error"] == "invalid_api_key"
    [listed] = client.get("/api/keys", headers=bearer(admin)).json["keys"]
    assert listed["revoked"] is True


def test_revoking_another_users_key_is_404(client: FlaskClient) -> None:
    admin = login(client)
    bob = add_user(client, "bob")
    victim = new_key(client, admin)
    response = client.delete(f"/api/keys/{victim['key_id']}", headers=bearer(bob))
    assert response.status_code == 404
    missing = client.delete("/api/keys/0123456789abcdef", headers=bearer(bob))
    assert problem(response)["detail"] == problem(missing)["detail"]
    assert client.get("/api/notes", headers=api_key(victim["key"])).status_code == 200


@pytest.mark.parametrize("name", ["", "   ", "laptop\u00ad", "\U0001f469\u200d\U0001f4bb"])
def test_key_names_the_store_refuses_are_a_400(client: FlaskClient, name: str) -> None:
    # Found by Schemathesis: SafeString admitted "" (and format characters the key store
    # refuses), so api_keys.create raised ValueError and the answer was a 500.
    response = client.post("/api/keys", headers=bearer(login(client)), json={"name": name})
    assert problem(response)["error"] == "validation_error"
    assert "name" in response.json["errors"]  # type: ignore[index]


def test_key_with_bad_scope_or_lifetime_is_refused(client: FlaskClient) -> None:
    admin = login(client)
    for body in ({"name": "k", "scopes": ["users:write"]}, {"name": "k", "expires_days": 0},
                 {"name": "k", "expires_days": 366}, {"name": "<b>k</b>"}):
        response = client.post("/api/keys", headers=bearer(admin), json=body)
        assert response.status_code == 400, body
        assert problem(response)["error"] == "validation_error"


# -- notes: object-level authorization, sanitising, query parameters ---------------------------

def test_notes_crud(client: FlaskClient) -> None:
    token = login(client)
    note_id = new_note(client, token, "first", "one")
    got = client.get(f"/api/notes/{note_id}", headers=bearer(token))
    assert got.status_code == 200
    assert (got.json["title"], got.json["body"]) == ("first", "one")
    patched = client.patch(f"/api/notes/{note_id}", headers=bearer(token), json={"body": "two"})
    assert patched.status_code == 200
    assert (patched.json["title"], patched.json["body"]) == ("first", "two")
    assert patched.json["updated_at"] >= patched.json["created_at"]
    listed = client.get("/api/notes", headers=bearer(token)).json["notes"]
    assert [n["body"] for n in listed] == ["two"]
    assert client.delete(f"/api/notes/{note_id}", headers=bearer(token)).status_code == 204
    assert client.get(f"/api/notes/{note_id}", headers=bearer(token)).status_code == 404


def test_bola_another_users_note_is_not_found(client: FlaskClient) -> None:
    """OWASP API1: bob cannot read, change or delete admin's note, nor learn that it exists."""
    admin = login(client)
    bob = add_user(client, "bob")
    note_id = new_note(client, admin, "secret plans", "attack at dawn")
    missing = client.get("/api/notes/999999", headers=bearer(bob))
    answers = [
        client.get(f"/api/notes/{note_id}", headers=bearer(bob)),
        client.patch(f"/api/notes/{note_id}", headers=bearer(bob), json={"body": "pwned"}),
        client.delete(f"/api/notes/{note_id}", headers=bearer(bob)),
    ]
    for response in answers:
        assert response.status_code == 404
        assert problem(response)["detail"] == problem(missing)["detail"]
        assert "attack at dawn" not in response.get_data(as_text=True)
    assert client.get("/api/notes", headers=bearer(bob)).json["notes"] == []
    note = client.get(f"/api/notes/{note_id}", headers=bearer(admin)).json
    assert note["body"] == "attack at dawn"


def test_stored_xss_in_note_body_is_sanitized(client: FlaskClient) -> None:
    token = login(client)
    response = client.post("/api/notes", headers=bearer(token), json={
        "title": "hi", "body": "<b>bold</b><script>alert(1)</script>",
    })
    assert response.status_code == 201
    body = response.json["body"]
    assert "<b>bold</b>" in body
    assert "<script" not in body
    patched = client.patch(f"/api/notes/{response.json['id']}", headers=bearer(token),
                           json={"body": '<img src=x onerror="alert(1)"><a href="javascript:alert(1)">x</a>'})
    assert patched.status_code == 200
    assert "onerror" not in patched.json["body"]
    assert "javascript:" not in patched.json["body"]


def test_out_of_range_ids_and_offsets_are_not_server_errors(tmp_path: Path) -> None:
    """A note id or offset beyond SQLite's 64-bit integers must be a 4xx, not a 500."""
    client = build(example_config(tmp_path, TESTING=False)).test_client()
    token = login(client)
    huge = 2**64
    answers = {
        "GET note": client.get(f"/api/notes/{huge}", headers=bearer(token)),
        "PATCH note": client.patch(f"/api/notes/{huge}", headers=bearer(token), json={"title": "x"}),
        "DELETE note": client.delete(f"/api/notes/{huge}", headers=bearer(token)),
        "offset": client.get(f"/api/notes?offset={huge}", headers=bearer(token)),
    }
    for name, response in answers.items():
        assert 400 <= response.status_code < 500, (name, problem(response))


def test_markup_in_note_title_is_refused(client: FlaskClient) -> None:
    response = client.post("/api/notes", headers=bearer(login(client)),
                           json={"title": "<script>alert(1)</script>"})
    assert response.status_code == 400
    assert list(problem(response)["errors"]) == ["title"]


def test_parameter_pollution_repeated_limit_is_refused(client: FlaskClient) -> None:
    response = client.get("/api/notes?limit=1&limit=2", headers=bearer(login(client)))
    assert response.status_code == 400
    assert problem(response)["error"] == "duplicate_parameter"


def test_limit_zero_is_a_validation_error(client: FlaskClient) -> None:
    response = client.get("/api/notes?limit=0", headers=bearer(login(client)))
    body = problem(response)
    assert response.status_code == 400
    assert body["error"] == "validation_error"
    assert list(body["errors"]) == ["limit"]


def test_limit_and_offset_page_through_notes(client: FlaskClient) -> None:
    token = login(client)
    ids = [new_note(client, token, f"note {i}") for i in range(3)]
    page = client.get("/api/notes?limit=1&offset=1", headers=bearer(token)).json["notes"]
    assert [n["id"] for n in page] == [ids[1]]
    response = client.get("/api/notes?sort=id", headers=bearer(token))
    assert response.status_code == 400  # unknown query parameters are refused
    assert list(problem(response)["errors"]) == ["sort"]


# -- every response -----------------------------------------------------------------------------

def test_every_response_carries_request_id_and_security_headers(client: FlaskClient) -> None:
    token = login(client)
    key = new_key(client, token, scopes=["notes:read"])["key"]
    note_id = new_note(client, token)
    responses = {
        "200 health": client.get("/api/health"),
        "201 note": client.post("/api/notes", headers=bearer(token), json={"title": "x"}),
        "204 delete": client.delete(f"/api/notes/{note_id}", headers=bearer(token)),
        "400 validation": client.get("/api/notes?limit=0", headers=bearer(token)),
        "401 no credentials": client.get("/api/notes"),
        "403 scope": client.post("/api/notes", headers=api_key(key), json={"title": "x"}),
        "404 unknown path": client.get("/api/nothing-here"),
        "405 wrong method": client.put("/api/health"),
        "415 not json": client.post("/api/notes", headers=bearer(token), data="title=x",
                                    content_type="application/x-www-form-urlencoded"),
    }
    for _ in range(6):
        responses["429 throttled"] = bad_login(client)
    seen = set()
    for name, response in responses.items():
        assert name.startswith(str(response.status_code)), (name, response.status_code)
        request_id = response.headers.get("X-Request-ID")
        assert request_id and request_id not in seen, name
        seen.add(request_id)
        for header, value in SECURITY_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
        assert response.headers["Strict-Transport-Security"].startswith("max-age="), name
        if response.status_code >= 400:
            assert problem(response)["request_id"] == request_id
            assert response.headers["Cache-Control"] == "no-store", name


# -- a deprecated version ----------------------------------------------------------------------

def test_v1_notes_is_deprecated_in_favour_of_notes(client: FlaskClient) -> None:
    from datetime import UTC, datetime

    from example_app.api import V1_SUNSET

    token = login(client)
    new_note(client, token, title="old client")
    response = client.get("/api/v1/notes", headers=bearer(token))
    sunset = datetime.fromisoformat(V1_SUNSET).replace(tzinfo=UTC)
    if datetime.now(UTC) >= sunset:  # the example's v1 has reached its sunset
        assert problem(response)["error"] == "gone"
    else:
        assert response.status_code == 200
        assert [n["title"] for n in response.json] == ["old client"]  # type: ignore[union-attr]
    assert response.headers["Deprecation"] == f"@{int(datetime(2026, 12, 1, tzinfo=UTC).timestamp())}"
    assert response.headers["Sunset"] == sunset.strftime("%a, %d %b %Y %H:%M:%S GMT")
    assert response.headers["Link"] == '</api/notes>; rel="successor-version"'
    successor = client.get("/api/notes", headers=bearer(token))
    assert "Deprecation" not in successor.headers
    assert [n["title"] for n in successor.json["notes"]] == ["old client"]  # type: ignore[index]


def test_v1_notes_keeps_its_policy(client: FlaskClient) -> None:
    assert problem(client.get("/api/v1/notes"))["error"] == "unauthorized"
    token = login(client)
    key = new_key(client, token, scopes=["notes:write"])["key"]
    assert problem(client.get("/api/v1/notes", headers=api_key(key)))["error"] == "forbidden"


def test_openapi_document_is_served(client: FlaskClient) -> None:
    response = client.get("/api/openapi.json")
    assert response.status_code == 200
    document = response.json
    assert document is not None
    v1 = document["paths"]["/api/v1/notes"]["get"]
    assert v1["deprecated"] is True
    assert v1["security"] == [{"jwt": ["notes:read"]}, {"api_key": ["notes:read"]}]
    assert "deprecated" not in document["paths"]["/api/notes"]["get"]


# -- the command line ---------------------------------------------------------------------------

def test_cli_finds_no_unprotected_route(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("APIGUARD_", "EXAMPLE_", "FLASK_"))}
    env.update(EXAMPLE_DATABASE=str(tmp_path / "cli.sqlite3"), APIGUARD_API_KEY_STORE="memory://",
               APIGUARD_JWT_SECRET=SECRET)
    command = [sys.executable, "-m", "flask", "--app", "example_app", "apiguard", "routes"]
    result = subprocess.run([*command, "--fail-on-unprotected"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "/api/notes/<int:note_id>" in result.stdout
    rows = json.loads(subprocess.run([*command, "--json"], cwd=ROOT, env=env, capture_output=True,
                                     text=True, timeout=60, check=True).stdout)
    public = sorted(r["rule"] for r in rows if r["public"] and r["rule"] != "/static/<path:filename>")
    assert public == ["/api/auth/login", "/api/health", "/api/openapi.json"]
    [login_row] = [r for r in rows if r["rule"] == "/api/auth/login"]
    assert login_row["rate_limits"] == ["5 per 15 minute (key=ip, count=failures)"]


# -- several instances sharing Redis (no code change: one environment variable) -----------------

@pytest.fixture
def twin_apps(tmp_path: Path, redis_url: str, storage_options: dict[str, Any],
              monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Flask, Flask]]:
    """Two instances of the example (two workers, say) sharing a database and a Redis (under
    this test's key prefix: the server may be shared)."""
    monkeypatch.setenv("APIGUARD_STORAGE_URI", redis_url)
    monkeypatch.setenv("APIGUARD_STORAGE_OPTIONS", json.dumps(storage_options))
    config = example_config(tmp_path)
    yield build(config), build(config)


@pytest.mark.redis
def test_token_revoked_on_one_instance_is_refused_by_the_other(twin_apps: tuple[Flask, Flask]) -> None:
    first, second = (app.test_client() for app in twin_apps)
    token = login(first)
    assert second.get("/api/me", headers=bearer(token)).status_code == 200
    assert first.post("/api/auth/logout", headers=bearer(token)).status_code == 204
    response = second.get("/api/me", headers=bearer(token))
    assert response.status_code == 401
    assert problem(response)["error"] == "token_revoked"


@pytest.mark.redis
def test_login_failure_budget_is_shared_between_instances(twin_apps: tuple[Flask, Flask]) -> None:
    first, second = (app.test_client() for app in twin_apps)
    for client in (first, second, first, second, first):
        assert bad_login(client).status_code == 401
    response = bad_login(second)
    assert response.status_code == 429
    assert problem(response)["error"] == "rate_limit_exceeded"


class DurableRedis(PrivateRedis):
    """The private redis-server with its append-only file on, kept in ``folder`` (the later
    command-line options win over the fixture's ``--appendonly no``)."""

    def __init__(self, server: PrivateRedis, folder: Path) -> None:
        super().__init__()
        self.port, self.extra = server.port, ["--appendonly", "yes", "--appendfsync", "everysec",
                                              "--dir", str(folder)]

    def start(self) -> None:
        popen = subprocess.Popen
        with mock.patch.object(subprocess, "Popen",
                               lambda args, **kwargs: popen([*args, *self.extra], **kwargs)):
            super().start()


@pytest.mark.parametrize("append_only", [False, True])
def test_logout_survives_a_redis_restart_only_with_its_append_only_file(
    tmp_path: Path, private_redis: PrivateRedis, append_only: bool
) -> None:
    # The claim of docs/deployment.rst: after kill -9 and a restart, a Redis without persistence
    # gave back the logged-out token (200); with appendonly yes it stays refused (401).
    server = private_redis
    if append_only:
        private_redis.stop()
        server = DurableRedis(private_redis, tmp_path)
        server.start()
    try:
        client = build(example_config(tmp_path, APIGUARD_STORAGE_URI=server.url)).test_client()
        token = login(client)
        assert client.post("/api/auth/logout", headers=bearer(token)).status_code == 204
        assert client.get("/api/me", headers=bearer(token)).status_code == 401
        server.stop()  # SIGKILL
        server.start()
        assert client.get("/api/me", headers=bearer(token)).status_code == (401 if append_only
                                                                             else 200)
    finally:
        server.stop()


def test_memory_storage_is_per_instance(tmp_path: Path) -> None:
    """The control for the Redis tests: with memory:// each instance has its own counters."""
    config = example_config(tmp_path)
    first, second = build(config).test_client(), build(config).test_client()
    for client in (first, second, first, second, first):
        assert bad_login(client).status_code == 401
    assert bad_login(second).status_code == 401


# -- "use your identity provider" mode ----------------------------------------------------------

def test_the_identity_provider_mode_takes_env_vars_only(tmp_path: Path, jwks_server: Any,
                                                        rsa_key: Any,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from .jwks_server import sign

    issuer = jwks_server.url
    jwks_server.publish(("k1", rsa_key))
    jwks_server.answer("/.well-known/openid-configuration",
                       {"issuer": issuer, "jwks_uri": issuer + "/jwks"})
    for name, value in {"APIGUARD_JWT_ISSUER": issuer, "APIGUARD_JWT_AUDIENCE": "notes-api",
                        "APIGUARD_JWT_OIDC_DISCOVERY": "true",
                        "APIGUARD_JWT_ALGORITHMS": '["RS256"]',
                        "APIGUARD_JWT_SCOPES_CLAIM": "permissions"}.items():
        monkeypatch.setenv(name, value)
    config = example_config(tmp_path)
    del config["APIGUARD_JWT_SECRET"]
    app = build(config)
    client = app.test_client()
    token = bearer(sign(rsa_key, "k1", sub="auth0|alice", iss=issuer, aud="notes-api",
                        permissions=["notes:read", "notes:write"]))
    created = client.post("/api/notes", headers=token, json={"title": "t", "body": "b"})
    assert created.status_code == 201, created.data
    assert [n["title"] for n in client.get("/api/notes", headers=token).json["notes"]] == ["t"]
    assert client.get("/api/me", headers=token).json["subject"] == "auth0|alice"
    login = client.post("/api/auth/login", json={"username": "admin", "password": ADMIN_PASSWORD})
    assert login.status_code == 404
    other = bearer(sign(rsa_key, "k1", iss=issuer, aud="another-api", permissions=["notes:read"]))
    assert client.get("/api/notes", headers=other).status_code == 401
