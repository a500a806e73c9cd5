"""``flask_apiguard.testing``: the pytest plugin's fixtures, and proof that it stays inert in a
suite that does not use it."""

from __future__ import annotations

import re
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from marshmallow import fields

from flask_apiguard import (
    ApiGuard,
    current_identity,
    public,
    rate_limit,
    require_api_key,
    require_jwt,
    roles,
    scopes,
    validate,
)
from flask_apiguard.cli import current_lock, route_table
from flask_apiguard.lockfile import LockfileError, dumps
from flask_apiguard.state import guard_state
from flask_apiguard.testing import (
    CONVERTER_SAMPLES,
    FOREIGN_ORIGIN,
    FrozenClock,
    GuardClient,
    create_api_key,
    mint_token,
    reset_limits,
    sample_path,
    security_cases,
)

from .conftest import base_config, problem

pytest_plugins = ["pytester"]


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    """This module's own ``app``: the plugin's fixtures use it, as they use a user's."""
    app = Flask("apiguard_testing", instance_path=str(tmp_path / "instance"))
    app.config.update(base_config(APIGUARD_RATELIMIT_DEFAULT=None))

    @app.get("/whoami")
    @require_jwt
    @require_api_key
    def whoami() -> Any:
        return {"subject": current_identity.subject, "roles": sorted(current_identity.roles),
                "scopes": sorted(current_identity.scopes), "method": current_identity.method}

    @app.get("/admin")
    @roles("admin")
    def admin() -> Any:
        return {"ok": True}

    @app.get("/reports")
    @require_api_key(scopes=["reports:read"])
    def reports() -> Any:
        return {"reports": []}

    @app.get("/notes")
    @scopes("notes:read")
    def notes() -> Any:
        return {"notes": []}

    @app.get("/limited")
    @public
    @rate_limit("2 per minute")
    def limited() -> Any:
        return {"ok": True}

    ApiGuard(app)
    return app


# -- the entry point ----------------------------------------------------------------------------

def test_the_plugin_is_registered_under_pytest11(pytester: pytest.Pytester) -> None:
    [plugin] = [e for e in entry_points(group="pytest11") if e.name == "apiguard"]
    assert plugin.value == "flask_apiguard.testing"
    # a suite of its own (this one loads it from conftest.py): the entry point loads it
    pytester.makepyfile(test_loaded="""
def test_loaded(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("apiguard")
""")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


UNRELATED = '''
import pytest

@pytest.fixture
def client():
    return "my own client"

@pytest.fixture
def app():
    return "my own app"

def test_own_fixtures_win(client, app):
    assert (client, app) == ("my own client", "my own app")

def test_fixture_closure(request):
    print("FIXTURES", sorted(request.fixturenames))

@pytest.mark.parametrize("n", [1, 2])
def test_param(n):
    assert n

def test_fails():
    assert False
'''


def test_the_plugin_changes_nothing_in_an_unrelated_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_unrelated=UNRELATED)
    runs = {}
    for name, args in (("with", ()), ("without", ("-p", "no:apiguard"))):
        result = pytester.runpytest_subprocess("-s", "-p", "no:cacheprovider", *args)
        result.assert_outcomes(passed=4, failed=1)
        collected = pytester.runpytest_subprocess("--collect-only", "-q", *args)
        help_text = pytester.runpytest_subprocess("--help", *args)
        fixtures = re.findall(r"FIXTURES (\[.*?\])", result.stdout.str())
        items = [line for line in collected.outlines if " collected in " not in line]
        runs[name] = (fixtures, items, help_text.outlines)
    assert runs["with"][0] == ["['request']"]
    # loaded, yet the same fixtures reach the tests (no autouse), the same items are
    # collected, and no option or ini key is added
    assert runs["with"] == runs["without"]
    loaded = pytester.runpytest_subprocess("--trace-config", "--collect-only", "-q")
    assert any("flask_apiguard" in line and "apiguard" in line for line in loaded.outlines)


# -- tokens, keys and the client ----------------------------------------------------------------

def test_as_user_sends_a_real_token(apiguard_client: GuardClient) -> None:
    response = apiguard_client.as_user("alice", roles=["admin"], scopes=["notes:read"]).get("/whoami")
    assert response.status_code == 200, response.data
    assert response.get_json() == {"subject": "alice", "roles": ["admin"], "scopes": ["notes:read"],
                                   "method": "jwt"}


def test_the_client_is_anonymous_until_told(apiguard_client: GuardClient) -> None:
    assert apiguard_client.get("/whoami").status_code == 401
    alice = apiguard_client.as_user("alice")
    assert alice.get("/whoami").status_code == 200
    assert alice.anonymous().get("/whoami").status_code == 401
    assert apiguard_client.get("/whoami").status_code == 401  # as_user returned a new client


def test_requests_go_over_https(apiguard_client: GuardClient) -> None:
    # APIGUARD_FORCE_HTTPS is on: plain HTTP would be redirected
    assert apiguard_client.get("/limited").status_code == 200
    assert apiguard_client.get("/limited", base_url="http://localhost").status_code == 301


def test_roles_and_scopes_are_enforced_for_the_user(apiguard_client: GuardClient) -> None:
    assert apiguard_client.as_user("bob").get("/admin").status_code == 403
    assert apiguard_client.as_user("ann", roles=["admin"]).get("/admin").status_code == 200
    assert problem(apiguard_client.as_user("bob").get("/notes"))["error"] == "forbidden"
    assert apiguard_client.as_user("bob", scopes=["notes:read"]).get("/notes").status_code == 200


def test_api_key_fixture_creates_a_real_key(app: Flask, apiguard_api_key: Any,
                                            apiguard_client: GuardClient) -> None:
    plaintext = apiguard_api_key(scopes=["reports:read"], owner="svc")
    assert plaintext.startswith("agk_")
    with app.app_context():
        [key] = guard_state(app).api_keys.list()
    assert (key.scopes, key.owner) == (frozenset({"reports:read"}), "svc")
    assert apiguard_client.as_api_key(plaintext).get("/reports").status_code == 200
    assert apiguard_client.as_api_key(scopes=[]).get("/reports").status_code == 403
    whoami = apiguard_client.as_api_key(scopes=["x"], owner="svc").get("/whoami").get_json()
    assert (whoami["subject"], whoami["method"]) == ("svc", "api_key")


def test_helpers_work_without_pytest_fixtures(app: Flask) -> None:
    token = mint_token(app, "carol", roles=["admin"])
    client = GuardClient(app, app.response_class)
    assert client.get("/admin", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    key = create_api_key(app, scopes=["reports:read"])
    assert client.get("/reports", headers={"X-API-Key": key}).status_code == 200


# -- counters and the clock -------------------------------------------------------------------

def spend(client: GuardClient) -> None:
    assert [client.get("/limited").status_code for _ in range(3)] == [200, 200, 429]


def test_reset_limits_starts_the_counters_afresh(app: Flask, apiguard_client: GuardClient) -> None:
    spend(apiguard_client)
    reset_limits(app)
    spend(apiguard_client)


@pytest.mark.parametrize("round_", [1, 2])
def test_the_client_starts_every_test_with_fresh_counters(apiguard_client: GuardClient,
                                                           round_: int) -> None:
    # the app fixture is per test here; apiguard_reset is what a session-wide app relies on
    spend(apiguard_client)


def test_frozen_clock_moves_only_when_told(apiguard_clock: FrozenClock,
                                           apiguard_client: GuardClient) -> None:
    assert apiguard_clock.start % 86400 == 0  # midnight UTC: every window starts with it
    spend(apiguard_client)
    apiguard_clock.advance(30)
    assert apiguard_client.get("/limited").status_code == 429
    apiguard_clock.advance(91)  # the sliding window's previous minute no longer weighs
    assert apiguard_client.get("/limited").status_code == 200
    assert apiguard_clock.now == pytest.approx(apiguard_clock.start + 121)


def test_frozen_clock_leaves_time_itself_alone(apiguard_clock: FrozenClock) -> None:
    before = time.time()
    apiguard_clock.set(1_000_000_000)
    assert apiguard_clock.now == 1_000_000_000
    assert 0 <= time.time() - before < 60


SESSION_APP = '''
import pytest
from flask import Flask
from flask_apiguard import ApiGuard, public, rate_limit

@pytest.fixture(scope="session")
def app():
    app = Flask("session_app")
    app.config.update(APIGUARD_JWT_SECRET="kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx",
                      APIGUARD_API_KEY_STORE="memory://", APIGUARD_STORAGE_URI=__URI__,
                      APIGUARD_STORAGE_OPTIONS=__OPTIONS__)

    @app.get("/limited")
    @public
    @rate_limit("2 per minute")
    def limited():
        return {"ok": True}

    ApiGuard(app)
    return app

@pytest.mark.parametrize("n", [1, 2, 3])
def test_each_test_gets_the_whole_budget(apiguard_client, n):
    assert [apiguard_client.get("/limited").status_code for _ in range(3)] == [200, 200, 429]
'''


@pytest.mark.parametrize("storage", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
def test_reset_between_tests_with_one_app_for_the_session(pytester: pytest.Pytester, storage: str,
                                                          request: pytest.FixtureRequest) -> None:
    if storage == "redis":
        url = request.getfixturevalue("redis_url")
        source = SESSION_APP.replace("__URI__", repr(url)).replace(
            "__OPTIONS__", repr({"key_prefix": f"pytester-{time.monotonic_ns()}"}))
    else:
        source = SESSION_APP.replace("__URI__", repr("memory://")).replace("__OPTIONS__", "{}")
    pytester.makepyfile(test_session=source)
    pytester.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=3)


# -- generated security tests -------------------------------------------------------------------

def test_sample_path_uses_converter_types_and_overrides() -> None:
    assert sample_path("/notes/<int:note_id>") == "/notes/1"
    assert sample_path("/files/<path:name>/<name2>") == "/files/x/x"
    assert sample_path("/p/<float:f>/<uuid:u>") == f"/p/1.5/{CONVERTER_SAMPLES['uuid']}"
    assert sample_path("/lang/<any(en, fr):lang>") == "/lang/en"
    assert sample_path("/notes/<int:note_id>", {"note_id": 7}) == "/notes/7"
    assert sample_path("/notes/<int:note_id>", {"api.note": {"note_id": 9}, "note_id": 7},
                       "api.note") == "/notes/9"
    assert sample_path("/u/<name>", {"name": "a b/c"}) == "/u/a%20b%2Fc"


def policy_app(tmp_path: Path, *, broken: bool = False, **config: Any) -> Flask:
    """One route per kind of rule; ``broken=True`` drops the role check of ``/admin``."""
    app = Flask("apiguard_generated", instance_path=str(tmp_path / "instance"))
    app.config.update(base_config(APIGUARD_RATELIMIT_DEFAULT="100 per 15 minutes", **config))

    def admin(user_id: int, json_data: dict[str, Any]) -> Any:
        return {"ok": True}

    admin_view = validate({"name": fields.String(required=True)})(require_jwt(admin))
    app.add_url_rule("/admin/<int:user_id>", "admin", admin_view if broken else roles("admin")(admin_view),
                     methods=["POST"])

    @app.get("/both/<uuid:item>")
    @roles("admin", "owner", require="all")
    def both(item: Any) -> Any:
        return {}

    @app.get("/reports")
    @require_api_key(scopes=["reports:read"])
    def reports() -> Any:
        return {}

    @app.get("/notes")
    @require_jwt
    @scopes("notes:read")
    @rate_limit("3 per minute")
    def notes() -> Any:
        return {}

    @app.post("/login")
    @public
    @rate_limit("2 per 15 minutes", key="ip", count="failures")
    @validate({"user": fields.String()})
    def login(json_data: dict[str, Any]) -> Any:
        return {}

    @app.get("/feed")
    @require_jwt(optional=True)
    def feed() -> Any:
        return {}

    ApiGuard(app)
    return app


def test_security_cases_cover_every_rule(tmp_path: Path) -> None:
    ids = [case.id for case in security_cases(policy_app(tmp_path))]
    for expected in [
        "POST /admin/<int:user_id>: no credential -> 401",
        "POST /admin/<int:user_id>: token without role admin -> 403",
        "POST /admin/<int:user_id>: text/plain body -> 415",
        "POST /admin/<int:user_id>: $ key in the JSON body -> 400",
        "GET /both/<uuid:item>: token without role owner -> 403",
        "GET /reports: API key without scope reports:read -> 403",
        "GET /notes: token without scope notes:read -> 403",
        "GET /notes: over 3 per 1 minute -> 429",
        "POST /login: over 2 per 15 minute (key=ip, count=failures) -> 429",
        "POST /login: text/plain body -> 415",
        f"GET /feed: preflight from {FOREIGN_ORIGIN} -> no CORS grant",
    ]:
        assert expected in ids
    # no 401 case for open routes; no limit case past limit_requests (50 unless told)
    assert not [i for i in ids if i.startswith(("POST /login: no credential", "GET /feed: no credential"))]
    assert not [i for i in ids if "100 per 15 minute" in i]
    more = security_cases(policy_app(tmp_path / "more"), limit_requests=100)
    assert "GET /reports: over 100 per 15 minute -> 429" in [c.id for c in more]


def test_generated_cases_pass_on_a_sound_app(tmp_path: Path) -> None:
    app = policy_app(tmp_path, APIGUARD_CORS_ORIGINS=["https://app.example.com"])
    cases = security_cases(app, samples={"user_id": 5})
    assert len(cases) >= 15
    for case in cases:
        case.run(app)


def test_no_preflight_case_when_cors_admits_any_origin(tmp_path: Path) -> None:
    app = policy_app(tmp_path, APIGUARD_CORS_ORIGINS=["re:https://.*"])
    assert not [c for c in security_cases(app) if c.check == "foreign_preflight"]


def failures(app: Flask, **options: Any) -> list[str]:
    failed = []
    for case in security_cases(app, **options):
        try:
            case.run(app)
        except AssertionError as exc:
            failed.append(str(exc))
    return failed


def test_cases_from_a_baseline_catch_a_removed_role(tmp_path: Path) -> None:
    sound = policy_app(tmp_path / "sound")
    with sound.app_context():
        lock = current_lock()
    broken = policy_app(tmp_path / "broken", broken=True)
    assert failures(broken) == []  # from its own policy, the broken app proves nothing
    [failure] = failures(broken, baseline=lock)
    assert failure.startswith("POST /admin/<int:user_id>: token without role admin -> 403: "
                              "expected 403, got 400 validation_error")


def test_a_baseline_file_is_read(tmp_path: Path) -> None:
    app = policy_app(tmp_path)
    path = tmp_path / "apiguard.lock"
    with app.app_context():
        path.write_text(dumps(current_lock()), encoding="utf-8")
    assert [c.id for c in security_cases(app, baseline=path)] == [c.id for c in security_cases(app)]
    with pytest.raises(LockfileError, match="does not exist"):
        security_cases(app, baseline=tmp_path / "missing.lock")


def test_a_rate_limit_case_fails_when_the_limit_is_not_enforced(tmp_path: Path) -> None:
    app = policy_app(tmp_path)
    rows = [{**row, "rate_limits": ["2 per 1 minute"]} for row in route_table_of(app)
            if row["rule"] == "/notes"]
    [limit_case] = [c for c in security_cases(app, baseline=rows) if c.check == "rate_limit"]
    expected = r"GET /notes: over 2 per 1 minute -> 429: expected 429, got 415"
    with pytest.raises(AssertionError, match=expected):
        limit_case.run(app)


def route_table_of(app: Flask) -> list[dict[str, Any]]:
    with app.app_context():
        return route_table()


GENERATED = '''
from flask import Flask
from flask_apiguard import ApiGuard, public, roles

def create_app():
    app = Flask("generated")
    app.config.update(APIGUARD_JWT_SECRET="kT3vQ9xLm2Zr7Wb1Hc5Jp8Nd4Fs6Gy0Aq3Ue9Ri2Ol7Mk1Vx",
                      APIGUARD_API_KEY_STORE="memory://")

    @app.get("/health")
    @public
    def health():
        return {}

    @app.delete("/users/<int:user_id>")
    @roles("admin")
    def delete_user(user_id):
        return "", 204

    ApiGuard(app)
    return app
'''


def test_one_line_gives_a_parametrised_test_per_rule(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(myapp=GENERATED, test_security="""
from flask_apiguard.testing import apiguard_security_tests
from myapp import create_app

test_security = apiguard_security_tests(create_app)
""")
    result = pytester.runpytest_subprocess("-v", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines([
        "*test_security*DELETE /users/<int:user_id>: no credential -> 401* PASSED*",
        "*test_security*DELETE /users/<int:user_id>: token without role admin -> 403* PASSED*",
    ])


def test_a_rate_limit_case_gives_the_clock_back(tmp_path: Path) -> None:
    import limits.storage.memory

    from flask_apiguard.ratelimit import memory as storage

    app = policy_app(tmp_path)
    before = storage.time, limits.storage.memory.time  # the suite's own counter clock, if any
    [limit_case] = [c for c in security_cases(app) if c.check == "rate_limit" and c.rule == "/notes"]
    limit_case.run(app)
    assert (storage.time, limits.storage.memory.time) == before
