"""``flask apiguard routes / check / keys / token`` through Flask's CLI test runner."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from click.testing import Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Blueprint, Flask
from flask.views import MethodView
from marshmallow import fields

from flask_apiguard import (
    ApiGuard,
    allow_networks,
    concurrency_limit,
    current_identity,
    public,
    rate_limit,
    rate_limit_exempt,
    require_api_key,
    require_jwt,
    roles,
    scopes,
    validate,
)

from .conftest import SECRET, HttpsClient, PrivateRedis, base_config, bearer, problem

ENVIRONMENT = ("FLASK_DEBUG", "SERVER_SOFTWARE", "WEB_CONCURRENCY", "DYNO", "K_SERVICE", "FLY_APP_NAME",
               "RENDER", "RAILWAY_ENVIRONMENT", "WEBSITE_SITE_NAME")
ROW_KEYS = {"rule", "endpoint", "methods", "public", "auth", "roles", "scopes", "rate_limits",
            "validate"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The audit reads the environment (workers, hosting platform): start from none of it."""
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["apiguard", *args])


def rows_of(app: Flask) -> list[dict[str, Any]]:
    result = run(app, "routes", "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def row(rows: list[dict[str, Any]], rule: str, method: str = "GET") -> dict[str, Any]:
    [found] = [r for r in rows if r["rule"] == rule and method in r["methods"]]
    return found


def bare_app(tmp_path: Any, **config: Any) -> Flask:
    app = Flask("apiguard_cli", instance_path=str(tmp_path / "instance"))
    app.test_client_class = HttpsClient
    app.config.update(base_config(**config))
    return app


class Items(MethodView):
    @public
    def get(self) -> Any:
        return {"items": []}

    @require_jwt
    @roles("editor")
    @validate({"title": fields.String(required=True)})
    def post(self, json_data: dict[str, Any]) -> Any:
        return json_data


def policy_app(tmp_path: Any, **config: Any) -> Flask:
    """One view per kind of declaration, a MethodView and a blueprint."""
    app = bare_app(tmp_path, **config)

    @app.get("/api/health")
    @public
    @rate_limit_exempt
    def health() -> Any:
        return {"status": "healthy"}

    @app.post("/api/users")
    @require_jwt
    @roles("admin", "owner", require="all")
    @rate_limit("5 per minute")
    @validate({"name": fields.String(required=True)})
    @validate({"dry_run": fields.Boolean()}, location="query")
    def create_user(json_data: dict[str, Any], query_data: dict[str, Any]) -> Any:
        return json_data

    @app.get("/api/reports")
    @require_api_key(scopes=["reports:read"])
    def reports() -> Any:
        return {"reports": []}

    @app.get("/api/notes")
    @scopes("notes:read")
    @rate_limit("10/hour", key="ip", count="failures", scope="notes")
    def notes() -> Any:
        return {"notes": []}

    @app.get("/api/feed")
    @require_jwt(optional=True)
    def feed() -> Any:
        return {"feed": []}

    @app.get("/api/plain")
    def plain() -> Any:
        return {"plain": True}

    app.add_url_rule("/api/items", view_func=Items.as_view("items"))

    admin = Blueprint("admin", __name__, url_prefix="/admin")

    @admin.get("/stats")
    @roles("ops")
    def stats() -> Any:
        return {"stats": {}}

    app.register_blueprint(admin)
    ApiGuard(app)
    return app


# -- openapi ----------------------------------------------------------------------------------

def test_openapi_prints_the_document(tmp_path: Any) -> None:
    from openapi_spec_validator import validate as validate_spec

    app = policy_app(tmp_path)
    result = run(app, "openapi")
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    validate_spec(document)
    with app.app_context():
        assert document == ApiGuard().openapi()
    assert document["paths"]["/api/health"]["get"]["security"] == []


def test_openapi_output_file_and_yaml(tmp_path: Any) -> None:
    import yaml

    app = policy_app(tmp_path)
    target = tmp_path / "openapi.yaml"
    result = run(app, "openapi", "--yaml", "--output", str(target))
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    document = yaml.safe_load(target.read_text(encoding="utf-8"))
    assert document["openapi"] == "3.1.0"
    assert document == json.loads(run(app, "openapi").stdout)


# -- routes -----------------------------------------------------------------------------------

def test_routes_table_lists_every_rule(tmp_path: Any) -> None:
    app = policy_app(tmp_path)
    result = run(app, "routes")
    assert result.exit_code == 0, result.output
    for rule in ("/api/health", "/api/users", "/api/reports", "/api/notes", "/api/feed",
                 "/api/plain", "/api/items", "/admin/stats"):
        assert rule in result.stdout
    for endpoint in ("create_user", "admin.stats", "items"):
        assert endpoint in result.stdout
    assert "admin" in result.stdout and "ops" in result.stdout and "5 per 1 minute" in result.stdout


def test_routes_json_fields(tmp_path: Any) -> None:
    rows = rows_of(policy_app(tmp_path))
    for item in rows:
        assert set(item) >= ROW_KEYS
        assert "HEAD" not in item["methods"] and "OPTIONS" not in item["methods"]
        assert all(isinstance(limit, str) for limit in item["rate_limits"])

    health = row(rows, "/api/health")
    assert (health["endpoint"], health["methods"], health["public"]) == ("health", ["GET"], True)
    assert (health["auth"], health["roles"], health["scopes"]) == ([], [], [])
    assert health["rate_limits"] == [] and health["validate"] == []
    assert health["unprotected"] is False

    users = row(rows, "/api/users", "POST")
    assert (users["endpoint"], users["methods"], users["public"]) == ("create_user", ["POST"],
                                                                      False)
    assert users["auth"] == ["jwt"]
    assert users["roles"] == ["admin", "owner"]
    assert users["role_rules"] == [{"roles": ["admin", "owner"], "require": "all"}]
    assert users["scopes"] == []
    assert len(users["rate_limits"]) == 1 and users["rate_limits"][0].startswith("5 per")
    assert sorted(users["validate"]) == ["json", "query"]
    assert users["required"] is True and users["unprotected"] is False

    reports = row(rows, "/api/reports")
    assert reports["auth"] == ["api_key"] and reports["scopes"] == ["reports:read"]
    assert len(reports["rate_limits"]) == 1 and "100 per 15" in reports["rate_limits"][0]

    notes = row(rows, "/api/notes")
    assert sorted(notes["auth"]) == ["api_key", "jwt"] and notes["scopes"] == ["notes:read"]
    [limit] = notes["rate_limits"]
    assert limit.startswith("10 per") and "count=failures" in limit and "key=ip" in limit
    assert "scope=notes" in limit

    feed = row(rows, "/api/feed")
    assert feed["auth"] == ["jwt"] and feed["public"] is False
    assert feed["optional"] is True and feed["unprotected"] is False

    plain = row(rows, "/api/plain")
    assert plain["public"] is False and plain["required"] is True
    assert sorted(plain["auth"]) == ["api_key", "jwt"]
    assert all(item["cors"] is False for item in rows)


def plan_limit() -> str:
    return "10/minute"


def is_internal() -> bool:
    return False


def business_app(tmp_path: Any) -> Flask:
    app = bare_app(tmp_path)

    @app.get("/admin/jobs")
    @allow_networks("10.8.0.0/16", "fd00::/8")
    @concurrency_limit(3, key="ip")
    @rate_limit(limit=plan_limit, key="user", exempt_when=is_internal)
    @rate_limit("5/second", exempt_when=is_internal)
    def jobs() -> Any:
        return {"jobs": []}

    ApiGuard(app)
    return app


def test_routes_show_networks_concurrency_and_business_limits(tmp_path: Any) -> None:
    app = business_app(tmp_path)
    jobs = row(rows_of(app), "/admin/jobs")
    assert jobs["networks"] == ["10.8.0.0/16", "fd00::/8"]
    assert jobs["rate_limits"] == [  # in the order they were recorded (bottom up)
        "5 per 1 second (exempt_when=is_internal)",
        "plan_limit (key=user, exempt_when=is_internal)",
    ]
    assert jobs["concurrency"] == ["3 in flight (key=ip)"]
    static = row(rows_of(app), "/static/<path:filename>")
    assert static["networks"] is None and static["concurrency"] == []
    table = run(app, "routes").stdout
    assert "3 in flight (key=ip)" in table
    assert "from=10.8.0.0/16,fd00::/8" in table
    assert "plan_limit (key=user, exempt_when=is_internal)" in table


def test_routes_show_cors_when_origins_are_configured(tmp_path: Any) -> None:
    rows = rows_of(policy_app(tmp_path, APIGUARD_CORS_ORIGINS=["https://app.example.com"]))
    assert all(item["cors"] is True for item in rows)


def test_routes_method_view_methods_are_separate_rows(tmp_path: Any) -> None:
    rows = [r for r in rows_of(policy_app(tmp_path)) if r["rule"] == "/api/items"]
    assert len(rows) == 2
    get, post = row(rows, "/api/items", "GET"), row(rows, "/api/items", "POST")
    assert get["methods"] == ["GET"] and post["methods"] == ["POST"]
    assert get["endpoint"] == post["endpoint"] == "items"
    assert get["public"] is True and get["auth"] == []
    assert post["public"] is False and post["auth"] == ["jwt"] and post["roles"] == ["editor"]
    assert post["validate"] == ["json"] and get["validate"] == []


def test_routes_blueprint_view(tmp_path: Any) -> None:
    stats = row(rows_of(policy_app(tmp_path)), "/admin/stats")
    assert stats["endpoint"] == "admin.stats"
    assert stats["roles"] == ["ops"] and stats["public"] is False and stats["required"] is True


def test_routes_methods_with_one_policy_share_a_row(tmp_path: Any) -> None:
    app = bare_app(tmp_path)

    @app.route("/api/things", methods=["GET", "POST", "DELETE"])
    @require_jwt
    def things() -> Any:
        return {}

    ApiGuard(app)
    assert row(rows_of(app), "/api/things")["methods"] == ["DELETE", "GET", "POST"]


def test_routes_list_a_head_with_its_own_policy(make_app: Any) -> None:
    # routes folded HEAD into GET's row even when HEAD had a policy of its own.
    from flask_apiguard.cli import route_table

    app = make_app(init=False, APIGUARD_DEFAULT_DENY=False)

    @require_jwt
    class Report(MethodView):
        def get(self) -> Any:
            return {}

        @public
        def head(self) -> Any:
            return ""

    app.add_url_rule("/report", view_func=Report.as_view("report"))
    ApiGuard(app)
    with app.app_context():
        rows = [r for r in route_table() if r["endpoint"] == "report"]
    assert sorted(m for r in rows for m in r["methods"]) == ["GET", "HEAD"]
    assert {tuple(r["methods"]): r["public"] for r in rows} == {("GET",): False, ("HEAD",): True}


def test_fail_on_unprotected_passes_under_default_deny(tmp_path: Any) -> None:
    app = policy_app(tmp_path)
    result = run(app, "routes", "--fail-on-unprotected")
    assert result.exit_code == 0, result.output
    assert not any(r["unprotected"] for r in rows_of(app))


def forgetful_app(tmp_path: Any, *, decorate_reports: bool = False, **config: Any) -> Flask:
    """Every view declared except ``/api/reports``, unless ``decorate_reports``."""
    app = bare_app(tmp_path, APIGUARD_PUBLIC_ENDPOINTS=["static", "docs"], **config)

    @app.get("/api/health")
    @public
    def health() -> Any:
        return {"status": "healthy"}

    @app.get("/api/docs")
    def docs() -> Any:
        return {"docs": True}

    @app.get("/api/me")
    @require_jwt
    def me() -> Any:
        return {"subject": current_identity.subject}

    @app.get("/api/feed")
    @require_jwt(optional=True)
    def feed() -> Any:
        return {"feed": []}

    @app.get("/api/admin")
    @roles("admin")
    def admin() -> Any:
        return {"admin": True}

    def reports() -> Any:
        return {"reports": ["q3-salaries"]}

    app.add_url_rule("/api/reports", view_func=require_jwt(reports) if decorate_reports
                     else reports)
    ApiGuard(app)
    return app


def test_fail_on_unprotected_finds_the_forgotten_decorator(tmp_path: Any) -> None:
    app = forgetful_app(tmp_path, APIGUARD_DEFAULT_DENY=False)
    assert app.test_client().get("/api/reports").status_code == 200  # really open
    result = run(app, "routes", "--fail-on-unprotected")
    assert result.exit_code == 1
    assert "/api/reports" in result.stderr
    for declared in ("/api/health", "/api/docs", "/api/me", "/api/feed", "/api/admin"):
        assert declared not in result.stderr
    unprotected = [r["rule"] for r in rows_of(app) if r["unprotected"]]
    assert unprotected == ["/api/reports"]


def test_without_the_flag_unprotected_routes_do_not_fail(tmp_path: Any) -> None:
    result = run(forgetful_app(tmp_path, APIGUARD_DEFAULT_DENY=False), "routes")
    assert result.exit_code == 0
    assert "/api/reports" in result.stdout


def test_fail_on_unprotected_passes_once_the_decorator_is_added(tmp_path: Any) -> None:
    app = forgetful_app(tmp_path, decorate_reports=True, APIGUARD_DEFAULT_DENY=False)
    result = run(app, "routes", "--fail-on-unprotected")
    assert result.exit_code == 0, result.output
    assert app.test_client().get("/api/reports").status_code == 401


def test_default_deny_protects_the_forgotten_view(tmp_path: Any) -> None:
    app = forgetful_app(tmp_path)
    assert run(app, "routes", "--fail-on-unprotected").exit_code == 0
    reports = row(rows_of(app), "/api/reports")
    assert reports["required"] is True and reports["unprotected"] is False
    assert app.test_client().get("/api/reports").status_code == 401


def test_public_endpoints_setting_counts_as_declared_open(tmp_path: Any) -> None:
    docs = row(rows_of(forgetful_app(tmp_path, APIGUARD_DEFAULT_DENY=False)), "/api/docs")
    assert docs["public"] is True and docs["unprotected"] is False


def test_fail_on_unprotected_finds_a_method_view_method(tmp_path: Any) -> None:
    app = bare_app(tmp_path, APIGUARD_DEFAULT_DENY=False)

    class Notes(MethodView):
        @public
        def get(self) -> Any:
            return {"notes": []}

        def delete(self) -> Any:
            return {"deleted": True}

    app.add_url_rule("/api/notes", view_func=Notes.as_view("notes"))
    ApiGuard(app)
    result = run(app, "routes", "--fail-on-unprotected")
    assert result.exit_code == 1
    assert "/api/notes" in result.stderr and "DELETE" in result.stderr
    [unprotected] = [r for r in rows_of(app) if r["unprotected"]]
    assert unprotected["methods"] == ["DELETE"]


def test_fail_on_unprotected_finds_a_blueprint_view(tmp_path: Any) -> None:
    app = bare_app(tmp_path, APIGUARD_DEFAULT_DENY=False)
    billing = Blueprint("billing", __name__, url_prefix="/billing")

    @billing.get("/invoices")
    def invoices() -> Any:
        return {"invoices": []}

    app.register_blueprint(billing)
    ApiGuard(app)
    result = run(app, "routes", "--fail-on-unprotected")
    assert result.exit_code == 1
    assert "/billing/invoices" in result.stderr
    assert row(rows_of(app), "/billing/invoices")["endpoint"] == "billing.invoices"


# -- check ------------------------------------------------------------------------------------

def check_json(app: Flask) -> tuple[int, list[dict[str, Any]]]:
    result = run(app, "check", "--json")
    findings: list[dict[str, Any]] = json.loads(result.stdout)
    return result.exit_code, findings


def ids(findings: list[dict[str, Any]], severity: str | None = None) -> set[str]:
    return {f["id"] for f in findings if severity is None or f["severity"] == severity}


def test_check_json_shape_and_clean_exit(make_app: Any) -> None:
    code, findings = check_json(make_app())
    assert code == 0
    assert findings, "the memory API key store of the test config is a finding"
    for finding in findings:
        assert set(finding) == {"id", "severity", "key", "message"}
        assert finding["severity"] in ("high", "medium", "low")
        assert finding["key"] and finding["message"] and re.fullmatch(r"[a-z0-9-]+", finding["id"])
    assert not ids(findings, "high")
    order = {"high": 0, "medium": 1, "low": 2}
    assert [order[f["severity"]] for f in findings] == sorted(order[f["severity"]]
                                                              for f in findings)


def test_check_text_output_names_each_finding(make_app: Any) -> None:
    app = make_app(APIGUARD_FORCE_HTTPS=False, APIGUARD_HSTS=None)
    result = run(app, "check")
    assert result.exit_code == 1
    for finding_id in ("https-off", "hsts-off", "api-keys-in-memory"):
        assert finding_id in result.stdout
    assert "APIGUARD_FORCE_HTTPS" in result.stdout


def test_check_hardened_config_has_no_findings(make_app: Any) -> None:
    app = make_app(APIGUARD_API_KEY_STORE="sqlite:///keys.sqlite3",
                   APIGUARD_TRUSTED_HOSTS=["api.example.com"])
    result = run(app, "check")
    assert result.exit_code == 0
    assert check_json(app) == (0, [])


@pytest.mark.parametrize(("finding_id", "key", "config"), [
    ("https-off", "APIGUARD_FORCE_HTTPS", {"APIGUARD_FORCE_HTTPS": False}),
    ("default-deny-off", "APIGUARD_DEFAULT_DENY", {"APIGUARD_DEFAULT_DENY": False}),
    ("jwt-secret-reused", "APIGUARD_JWT_SECRET", {"SECRET_KEY": SECRET}),
    ("jwt-secret-guessable", "APIGUARD_JWT_SECRET",
     {"APIGUARD_JWT_SECRET": "changeme-changeme-changeme-changeme-42"}),
    ("jwt-secret-guessable", "APIGUARD_JWT_SECRET", {"APIGUARD_JWT_SECRET": "ab" * 24}),
    # the secret docs/quickstart.rst used to print passed the audit
    ("jwt-secret-documented", "APIGUARD_JWT_SECRET",
     {"APIGUARD_JWT_SECRET": "pD4wN8sK2vQ7xL1mZ9rT5yB3hF6jC0gA8eU2iO4nW7kR1tSe3"}),
])
def test_check_high_findings_exit_1(make_app: Any, finding_id: str, key: str,
                                    config: dict[str, Any]) -> None:
    code, findings = check_json(make_app(**config))
    assert code == 1
    [finding] = [f for f in findings if f["id"] == finding_id]
    assert finding["severity"] == "high" and finding["key"] == key
    assert ids(findings, "high") == {finding_id}


def test_check_debug_on(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    assert "debug-on" not in ids(check_json(app)[1])
    monkeypatch.setenv("FLASK_DEBUG", "1")  # as `flask --debug apiguard check` (the CLI sets it)
    code, findings = check_json(app)
    assert code == 1
    [finding] = [f for f in findings if f["id"] == "debug-on"]
    assert finding["severity"] == "high" and finding["key"] == "DEBUG"


def test_check_revocation_in_memory_under_several_workers(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(APIGUARD_JWT_REVOCATION=True)
    code, findings = check_json(app)
    assert code == 0 and "revocation-in-memory" in ids(findings, "medium")
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/22.0.0")
    code, findings = check_json(app)
    assert code == 1 and "revocation-in-memory" in ids(findings, "high")


@pytest.mark.parametrize(("finding_id", "config"), [
    ("cors-wildcard", {"APIGUARD_CORS_ORIGINS": ["*"]}),
    ("hsts-off", {"APIGUARD_HSTS": None}),
    ("no-default-limit", {"APIGUARD_RATELIMIT_DEFAULT": None}),
])
def test_check_medium_findings_do_not_fail(make_app: Any, finding_id: str,
                                           config: dict[str, Any]) -> None:
    code, findings = check_json(make_app(**config))
    assert code == 0
    assert finding_id in ids(findings, "medium")
    assert finding_id not in ids(check_json(make_app())[1])


def test_check_memory_storage_under_gunicorn(make_app: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app()
    assert "memory-storage-several-workers" not in ids(check_json(app)[1])
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/22.0.0")
    code, findings = check_json(app)
    assert code == 0
    assert "memory-storage-several-workers" in ids(findings, "medium")


@pytest.mark.redis
def test_check_redis_storage_under_gunicorn_is_fine(make_app: Any, redis_config: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/22.0.0")
    app = make_app(**redis_config(APIGUARD_JWT_REVOCATION=True))
    found = ids(check_json(app)[1])
    assert "memory-storage-several-workers" not in found and "revocation-in-memory" not in found


# A Redis without persistence gave revoked tokens back after a restart; check was silent.
def test_check_reports_a_denylist_redis_without_persistence(make_app: Any,
                                                           private_redis: PrivateRedis) -> None:
    app = make_app(APIGUARD_STORAGE_URI=private_redis.url, APIGUARD_JWT_REVOCATION=True)
    code, findings = check_json(app)
    assert code == 0 and "revocation-not-durable" in ids(findings, "medium")
    private_redis.stop()
    result = run(app, "check")
    assert result.exit_code == 0 and result.exception is None
    assert "revocation-persistence-unverified" in result.stdout
    assert "Traceback" not in result.output


def test_check_heroku_without_trusted_proxies(make_app: Any,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNO", "web.1")
    code, findings = check_json(make_app())
    assert code == 0
    [finding] = [f for f in findings if f["id"] == "proxies-untrusted"]
    assert finding["severity"] == "medium" and finding["key"] == "APIGUARD_TRUSTED_PROXIES"
    assert "Heroku" in finding["message"]
    assert "proxies-untrusted" not in ids(check_json(make_app(APIGUARD_TRUSTED_PROXIES=1))[1])


# -- keys -------------------------------------------------------------------------------------

def keyed_app(tmp_path: Any) -> Flask:
    """A fresh app on the SQLite key store in the shared instance folder (as a new process)."""
    app = bare_app(tmp_path, APIGUARD_API_KEY_STORE="sqlite:///keys.sqlite3")

    @app.get("/api/reports")
    @require_api_key(scopes=["reports:read"])
    def reports() -> Any:
        return {"subject": current_identity.subject, "key_id": current_identity.key_id,
                "roles": sorted(current_identity.roles)}

    ApiGuard(app)
    return app


def test_keys_create_list_revoke_end_to_end(tmp_path: Any) -> None:
    created = run(keyed_app(tmp_path), "keys", "create", "reporting-bot", "--scope",
                  "reports:read", "--role", "reporter", "--role", "auditor", "--owner", "svc-bi")
    assert created.exit_code == 0, created.output
    plaintext = created.stdout.strip()
    assert "\n" not in plaintext
    match = re.fullmatch(r"agk_([A-Za-z0-9]+)_([A-Za-z0-9_-]{43,})", plaintext)
    assert match, plaintext
    key_id = match.group(1)

    app = keyed_app(tmp_path)
    client = app.test_client()
    response = client.get("/api/reports", headers={"X-API-Key": plaintext})
    assert response.status_code == 200
    assert response.get_json() == {"subject": "svc-bi", "key_id": key_id,
                                   "roles": ["auditor", "reporter"]}

    listed = run(app, "keys", "list", "--json")
    assert listed.exit_code == 0
    [entry] = json.loads(listed.stdout)
    assert entry["key_id"] == key_id and entry["name"] == "reporting-bot"
    assert entry["scopes"] == ["reports:read"] and entry["roles"] == ["auditor", "reporter"]
    assert entry["owner"] == "svc-bi" and entry["revoked"] is False
    table = run(app, "keys", "list")
    assert table.exit_code == 0 and key_id in table.stdout and "reporting-bot" in table.stdout
    for output in (listed.output, table.output):
        assert plaintext not in output and match.group(2) not in output
        assert "hash" not in output.lower()

    revoked = run(app, "keys", "revoke", key_id)
    assert revoked.exit_code == 0, revoked.output
    response = keyed_app(tmp_path).test_client().get("/api/reports",
                                                     headers={"X-API-Key": plaintext})
    assert response.status_code == 401
    assert problem(response)["error"] == "invalid_api_key"
    assert json.loads(run(app, "keys", "list", "--json").stdout)[0]["revoked"] is True
    assert "revoked" in run(app, "keys", "list").stdout


def test_keys_create_prints_only_the_key_on_stdout(tmp_path: Any) -> None:
    result = run(keyed_app(tmp_path), "keys", "create", "ci")
    assert result.exit_code == 0
    assert result.stdout.count("\n") == 1 and result.stdout.startswith("agk_")
    assert result.stdout.strip() not in result.stderr


def test_key_without_the_scope_is_forbidden(tmp_path: Any) -> None:
    created = run(keyed_app(tmp_path), "keys", "create", "other", "--scope", "notes:read")
    response = keyed_app(tmp_path).test_client().get(
        "/api/reports", headers={"X-API-Key": created.stdout.strip()})
    assert response.status_code == 403


def test_keys_create_with_expiry(tmp_path: Any) -> None:
    app = keyed_app(tmp_path)
    assert run(app, "keys", "create", "temp", "--expires-days", "3").exit_code == 0
    [entry] = json.loads(run(app, "keys", "list", "--json").stdout)
    expires = datetime.fromisoformat(str(entry["expires_at"]).replace("Z", "+00:00"))
    assert abs(expires - (datetime.now(UTC) + timedelta(days=3))) < timedelta(minutes=5)
    assert run(app, "keys", "create", "bad", "--expires-days", "0").exit_code != 0


def test_keys_revoke_unknown_or_twice_fails(tmp_path: Any) -> None:
    app = keyed_app(tmp_path)
    assert run(app, "keys", "revoke", "doesnotexist").exit_code != 0
    plaintext = run(app, "keys", "create", "once").stdout.strip()
    key_id = plaintext.split("_")[1]
    assert run(app, "keys", "revoke", key_id).exit_code == 0
    assert run(app, "keys", "revoke", key_id).exit_code != 0


def test_keys_list_empty(tmp_path: Any) -> None:
    app = keyed_app(tmp_path)
    result = run(app, "keys", "list", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []


# -- token ------------------------------------------------------------------------------------

def token_app(make_app: Any) -> Flask:
    app = make_app(init=False)

    @app.get("/api/admin")
    @roles("admin")
    def admin() -> Any:
        return {"subject": current_identity.subject, "roles": sorted(current_identity.roles),
                "scopes": sorted(current_identity.scopes)}

    ApiGuard(app)
    return app


def test_token_authenticates_and_carries_roles(make_app: Any) -> None:
    app = token_app(make_app)
    result = run(app, "token", "alice", "--role", "admin", "--role", "ops", "--scope",
                 "notes:read", "--expires-in", "120")
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    response = app.test_client().get("/api/admin", headers=bearer(token))
    assert response.status_code == 200
    assert response.get_json() == {"subject": "alice", "roles": ["admin", "ops"],
                                   "scopes": ["notes:read"]}
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 120


def test_token_without_the_role_is_forbidden(make_app: Any) -> None:
    app = token_app(make_app)
    token = run(app, "token", "bob").stdout.strip()
    client = app.test_client()
    assert client.get("/private", headers=bearer(token)).status_code == 200
    assert client.get("/api/admin", headers=bearer(token)).status_code == 403
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 900


def test_token_is_not_accepted_by_an_app_with_another_secret(make_app: Any) -> None:
    token = run(token_app(make_app), "token", "alice").stdout.strip()
    other = make_app(APIGUARD_JWT_SECRET="Hq7Zp2Lx9Wc4Nb8Vm1Kd6Fs3Gy0Rt5Ue8Io2Pa7Sj4Xl1Qz")
    assert other.test_client().get("/private", headers=bearer(token)).status_code == 401


def test_keys_commands_fail_cleanly_when_the_store_is_down(tmp_path: Any, dead_port: int) -> None:
    app = bare_app(tmp_path, APIGUARD_API_KEY_STORE=f"redis://127.0.0.1:{dead_port}/0")
    ApiGuard(app)
    for args in (("keys", "list"), ("keys", "create", "bot"), ("keys", "revoke", "0123456789abcdef")):
        result = run(app, *args)
        assert result.exit_code == 1
        assert isinstance(result.exception, SystemExit)
        assert "unavailable" in result.output and "Traceback" not in result.output


def test_token_without_a_signing_key_fails_cleanly(tmp_path: Any) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    app = bare_app(tmp_path, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_PUBLIC_KEY=public_pem,
                   APIGUARD_JWT_ALGORITHMS=["RS256"])
    ApiGuard(app)
    result = run(app, "token", "alice")
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.stdout == "" and "APIGUARD_JWT_PRIVATE_KEY" in result.stderr


# -- routes --baseline: the policy lockfile ------------------------------------------------------

def client_tier() -> str:
    return "gold"


def lock_app(tmp_path: Any, *, admin: bool = True, limit: str = "5 per minute",
             extra: str | None = None, **config: Any) -> Flask:
    """A small app whose policy each test changes: ``admin=False`` drops a role, ``limit``
    changes a rate limit, ``extra`` adds a route (``"public"`` or ``"undeclared"``)."""
    app = bare_app(tmp_path, **config)

    @app.post("/api/users")
    @require_jwt
    @rate_limit(limit, key=client_tier)
    def create_user() -> Any:
        return {}

    if admin:
        app.view_functions["create_user"] = roles("admin")(create_user)

    @app.get("/api/notes")
    @scopes("notes:read")
    def notes() -> Any:
        return {"notes": []}

    if extra == "public":
        app.add_url_rule("/api/status", "status", public(lambda: {}))
    elif extra == "undeclared":
        app.add_url_rule("/api/debug", "debug", lambda: {})
    ApiGuard(app)
    return app


def baseline_of(app: Flask, path: Any) -> str:
    result = run(app, "routes", "--baseline", str(path), "--update")
    assert result.exit_code == 0, result.output
    text: str = path.read_text(encoding="utf-8")
    return text


def test_routes_json_rows_split_token_and_api_key_scopes(tmp_path: Any) -> None:
    rows = rows_of(policy_app(tmp_path))
    reports, notes = row(rows, "/api/reports"), row(rows, "/api/notes")
    assert (reports["scope_rules"], reports["api_key_scopes"]) == ([], ["reports:read"])
    assert (notes["scope_rules"], notes["api_key_scopes"]) == ([["notes:read"]], [])


def test_routes_json_is_stable_and_names_callable_keys(tmp_path: Any) -> None:
    # a callable key used to show as its repr, with a memory address that changed every run
    first = run(lock_app(tmp_path / "a"), "routes", "--json").stdout
    second = run(lock_app(tmp_path / "b"), "routes", "--json").stdout
    assert first == second
    assert "0x" not in first
    assert row(json.loads(first), "/api/users", "POST")["rate_limits"] == \
        ["5 per 1 minute (key=client_tier)"]


def test_update_writes_the_lockfile(tmp_path: Any) -> None:
    from flask_apiguard.lockfile import loads

    path = tmp_path / "apiguard.lock"
    text = baseline_of(lock_app(tmp_path), path)
    assert text.endswith("}\n")
    lock = loads(text)
    assert [r["rule"] for r in lock.routes] == ["/api/notes", "/api/users", "/static/<path:filename>"]
    assert lock.cors == {"origins": [], "credentials": False}
    # the same policy writes the same bytes
    assert baseline_of(lock_app(tmp_path), path) == text


def test_an_unchanged_policy_passes_the_baseline(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    result = run(lock_app(tmp_path), "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 0, result.output
    assert f"No changes since {path}." in result.stdout


def test_fail_on_loosen_names_a_lost_role(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    result = run(lock_app(tmp_path, admin=False), "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 1, result.output
    assert "loosened: POST /api/users (create_user): no longer requires role admin" in result.stdout
    assert "--update" in result.stdout


def test_fail_on_loosen_names_a_raised_limit(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    result = run(lock_app(tmp_path, limit="50 per minute"), "routes", "--baseline", str(path),
                 "--fail-on-loosen")
    assert result.exit_code == 1, result.output
    assert "rate limit raised: 5 per 1 minute (key=client_tier) -> 50 per 1 minute" in result.stdout


def test_fail_on_loosen_names_a_new_undeclared_route(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path, APIGUARD_DEFAULT_DENY=False), path)
    result = run(lock_app(tmp_path, extra="undeclared", APIGUARD_DEFAULT_DENY=False),
                 "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 1, result.output
    assert "loosened: GET /api/debug (debug): new route, reachable without authentication" in result.stdout


def test_fail_on_loosen_names_a_new_cors_origin(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    result = run(lock_app(tmp_path, APIGUARD_CORS_ORIGINS=["https://app.example.com"]),
                 "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 1, result.output
    assert "loosened: (app-wide): CORS origin added: https://app.example.com" in result.stdout


def test_tightening_and_added_routes_pass_and_are_listed(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path, admin=False, limit="50 per minute"), path)
    result = run(lock_app(tmp_path, extra="public"), "routes", "--baseline", str(path),
                 "--fail-on-loosen")
    assert result.exit_code == 0, result.output
    assert "tightened: POST /api/users (create_user): now requires any of admin" in result.stdout
    assert "tightened: POST /api/users (create_user): rate limit lowered" in result.stdout
    assert "added: GET /api/status (status): new route (public)" in result.stdout
    assert "none loosening" in result.stdout


def test_a_removed_route_is_listed_and_passes(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path, extra="public"), path)
    result = run(lock_app(tmp_path), "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 0, result.output
    assert "removed: GET /api/status (status): route removed" in result.stdout


def test_without_fail_on_loosen_a_loosening_change_is_reported_only(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    result = run(lock_app(tmp_path, admin=False), "routes", "--baseline", str(path))
    assert result.exit_code == 0, result.output
    assert "no longer requires role admin" in result.stdout


def test_baseline_json_lists_the_changes(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    result = run(lock_app(tmp_path, admin=False), "routes", "--baseline", str(path), "--json",
                 "--fail-on-loosen")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == [{
        "kind": "loosened", "rule": "/api/users", "methods": ["POST"], "endpoint": "create_user",
        "what": "no longer requires role admin", "loosens": True,
    }]


def test_update_accepts_a_loosening_change(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    baseline_of(lock_app(tmp_path), path)
    loose = lock_app(tmp_path, admin=False)
    result = run(loose, "routes", "--baseline", str(path), "--fail-on-loosen", "--update")
    assert result.exit_code == 0, result.output
    assert "no longer requires role admin" in result.stdout and f"Wrote {path}" in result.stdout
    assert run(loose, "routes", "--baseline", str(path), "--fail-on-loosen").exit_code == 0


def test_a_missing_baseline_is_exit_2_with_a_sentence(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    result = run(lock_app(tmp_path), "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 2
    assert f"{path} does not exist. Create it from the current policy with" in result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("content", ["", "{oops", '{"version": 7, "routes": []}', "[1, 2]"])
def test_a_corrupt_baseline_is_exit_2_with_a_sentence(tmp_path: Any, content: str) -> None:
    path = tmp_path / "apiguard.lock"
    path.write_text(content, encoding="utf-8")
    result = run(lock_app(tmp_path), "routes", "--baseline", str(path), "--fail-on-loosen")
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {path} ")
    assert "--update" in result.output and "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def test_update_replaces_a_corrupt_baseline(tmp_path: Any) -> None:
    path = tmp_path / "apiguard.lock"
    path.write_text("{oops", encoding="utf-8")
    result = run(lock_app(tmp_path), "routes", "--baseline", str(path), "--update")
    assert result.exit_code == 0, result.output
    assert "Replacing an unreadable baseline" in result.stderr
    assert json.loads(path.read_text(encoding="utf-8"))["version"] == 1


@pytest.mark.parametrize("flag", ["--fail-on-loosen", "--update"])
def test_baseline_flags_without_a_baseline_are_a_usage_error(tmp_path: Any, flag: str) -> None:
    result = run(lock_app(tmp_path), "routes", flag)
    assert result.exit_code == 2
    assert "need --baseline FILE" in result.output
