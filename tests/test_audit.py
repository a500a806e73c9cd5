"""``flask_apiguard.audit.findings`` on live configurations, and the start-up warnings."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from flask_apiguard import ApiGuard
from flask_apiguard.audit import Finding, findings, is_documented_secret

from .conftest import SECRET, PrivateRedis, bearer, token_for

ENVIRONMENT = ("FLASK_DEBUG", "SERVER_SOFTWARE", "WEB_CONCURRENCY", "DYNO", "K_SERVICE",
               "FLY_APP_NAME", "RENDER", "RAILWAY_ENVIRONMENT", "WEBSITE_SITE_NAME",
               "GUNICORN_CMD_ARGS", "UWSGI_PROCESSES")
#: The example secret the documentation showed (docs/quickstart.rst and others) before it
#: read the secret from the environment.
DOCUMENTED = "pD4wN8sK2vQ7xL1mZ9rT5yB3hF6jC0gA8eU2iO4nW7kR1tSe3"
#: Nothing for the audit to say about this configuration.
HARDENED = {"APIGUARD_API_KEY_STORE": "sqlite:///keys.sqlite3",
            "APIGUARD_TRUSTED_HOSTS": ["localhost"]}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)


def audit(app: Flask) -> list[Finding]:
    return findings(app, app.extensions["apiguard"])


def by_id(app: Flask) -> dict[str, Finding]:
    return {f.id: f for f in audit(app)}


def hardened(make_app: Any, **config: Any) -> Flask:
    app: Flask = make_app(**{**HARDENED, **config})
    return app


def test_hardened_config_has_no_findings(make_app: Any) -> None:
    assert audit(hardened(make_app)) == []


def test_finding_is_a_small_record(make_app: Any) -> None:
    [finding] = audit(hardened(make_app, APIGUARD_CSP=None))
    assert finding.to_dict() == {"id": "csp-off", "severity": "medium", "key": "APIGUARD_CSP",
                                 "message": finding.message}
    assert finding.message.endswith(".")


@pytest.mark.parametrize(("finding_id", "severity", "key", "config"), [
    ("jwt-secret-short", "low", "APIGUARD_JWT_SECRET", {"APIGUARD_JWT_SECRET": SECRET[:32]}),
    ("jwt-secret-guessable", "high", "APIGUARD_JWT_SECRET",
     {"APIGUARD_JWT_SECRET": "Xy9!" + "password" * 4 + "Qz7#"}),
    ("jwt-secret-reused", "high", "APIGUARD_JWT_SECRET", {"SECRET_KEY": SECRET.encode()}),
    ("cors-unescaped-dot", "medium", "APIGUARD_CORS_ORIGINS",
     {"APIGUARD_CORS_ORIGINS": ["re:https://app.example\\.com"]}),
    ("cors-pattern-too-wide", "medium", "APIGUARD_CORS_ORIGINS",
     {"APIGUARD_CORS_ORIGINS": ["re:https://.*"]}),
    ("revocation-in-memory", "medium", "APIGUARD_STORAGE_URI", {"APIGUARD_JWT_REVOCATION": True}),
    ("no-auth-failure-limit", "medium", "APIGUARD_AUTH_FAILURE_LIMIT",
     {"APIGUARD_AUTH_FAILURE_LIMIT": None}),
    ("no-body-limit", "medium", "APIGUARD_MAX_CONTENT_LENGTH",
     {"APIGUARD_MAX_CONTENT_LENGTH": None}),
    ("csp-off", "medium", "APIGUARD_CSP", {"APIGUARD_CSP": None}),
    ("trace-allowed", "medium", "APIGUARD_ALLOWED_METHODS",
     {"APIGUARD_ALLOWED_METHODS": ["GET", "POST", "TRACE"]}),
    ("large-leeway", "medium", "APIGUARD_JWT_LEEWAY", {"APIGUARD_JWT_LEEWAY": 3600}),
    ("long-tokens", "medium", "APIGUARD_JWT_EXPIRES_IN", {"APIGUARD_JWT_EXPIRES_IN": 7 * 86400}),
    ("api-keys-in-memory", "medium", "APIGUARD_API_KEY_STORE",
     {"APIGUARD_API_KEY_STORE": "memory://"}),
    ("hosts-unchecked", "low", "APIGUARD_TRUSTED_HOSTS", {"APIGUARD_TRUSTED_HOSTS": None}),
    ("request-id-trusted", "low", "APIGUARD_TRUST_REQUEST_ID",
     {"APIGUARD_TRUST_REQUEST_ID": True}),
    ("json-only-off", "low", "APIGUARD_JSON_ONLY", {"APIGUARD_JSON_ONLY": False}),
    ("reject-operator-keys-off", "low", "APIGUARD_REJECT_OPERATOR_KEYS",
     {"APIGUARD_REJECT_OPERATOR_KEYS": False}),
    ("security-log-off", "low", "APIGUARD_SECURITY_LOG", {"APIGUARD_SECURITY_LOG": False}),
    ("duplicate-params-allowed", "low", "APIGUARD_DUPLICATE_PARAMS",
     {"APIGUARD_DUPLICATE_PARAMS": "allow"}),
    ("cache-control-off", "low", "APIGUARD_CACHE_CONTROL", {"APIGUARD_CACHE_CONTROL": None}),
])
def test_one_setting_one_finding(make_app: Any, finding_id: str, severity: str, key: str,
                                 config: dict[str, Any]) -> None:
    [finding] = audit(hardened(make_app, **config))
    assert (finding.id, finding.severity, finding.key) == (finding_id, severity, key)
    assert finding.message


@pytest.mark.parametrize(("finding_id", "config"), [
    ("jwt-secret-guessable", {"APIGUARD_JWT_KEYS": {
        "2026-01": "changeme-changeme-changeme-changeme", "2026-02": SECRET}}),
    ("jwt-secret-reused", {"APIGUARD_JWT_KEYS": {"2026-01": SECRET}, "SECRET_KEY": SECRET}),
])
def test_hmac_keys_of_a_rotation_set_are_audited_like_the_secret(
    make_app: Any, finding_id: str, config: dict[str, Any]
) -> None:
    app = hardened(make_app, APIGUARD_JWT_SECRET=None, **config)
    assert app.test_client().get("/private", headers=bearer(token_for(app))).status_code == 200
    found = by_id(app)
    assert finding_id in found, "an HMAC key in APIGUARD_JWT_KEYS escapes the secret audit"
    assert found[finding_id].severity == "high"


@pytest.mark.parametrize("origin", [
    "https://app.example.com", r"re:https://app\.example\.com",
    r"re:https://[a-z0-9-]+\.example\.com", r"re:https://(www|app)\.example\.com",
])
def test_careful_cors_origins_are_not_findings(make_app: Any, origin: str) -> None:
    assert audit(hardened(make_app, APIGUARD_CORS_ORIGINS=[origin])) == []


# The secret printed in the docs was accepted without a word: anyone who read them could forge.
@pytest.mark.parametrize("config", [
    {"APIGUARD_JWT_SECRET": DOCUMENTED},
    {"APIGUARD_JWT_SECRET": "prod-" + DOCUMENTED + "-2026"},
    {"APIGUARD_JWT_SECRET": None, "APIGUARD_JWT_KEYS": {"2026-01": DOCUMENTED}},
])
def test_a_secret_shown_in_the_docs_is_a_high_finding(make_app: Any,
                                                      config: dict[str, Any]) -> None:
    [finding] = audit(hardened(make_app, **config))
    assert (finding.id, finding.severity) == ("jwt-secret-documented", "high")
    assert finding.key.startswith(("APIGUARD_JWT_SECRET", "APIGUARD_JWT_KEYS["))
    assert DOCUMENTED not in finding.message


def test_documented_secrets_are_matched_exactly() -> None:
    assert is_documented_secret(DOCUMENTED.encode())
    assert is_documented_secret(b"x" + DOCUMENTED.encode())
    assert not is_documented_secret(DOCUMENTED[:-1].encode())
    assert not is_documented_secret(SECRET.encode())


def test_revocation_makes_long_tokens_acceptable(make_app: Any) -> None:
    found = by_id(hardened(make_app, APIGUARD_JWT_EXPIRES_IN=7 * 86400,
                           APIGUARD_JWT_REVOCATION=True))
    assert set(found) == {"revocation-in-memory"}


def test_public_key_algorithms_have_no_secret_findings(make_app: Any) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    app = hardened(make_app, APIGUARD_JWT_SECRET=None, APIGUARD_JWT_PRIVATE_KEY=pem,
                   APIGUARD_JWT_PUBLIC_KEY=public, APIGUARD_JWT_ALGORITHMS=["RS256"],
                   SECRET_KEY=SECRET)
    assert audit(app) == []


@pytest.mark.parametrize(("variable", "value"), [
    ("WEB_CONCURRENCY", "4"), ("SERVER_SOFTWARE", "gunicorn/22.0.0"),
])
def test_several_workers(make_app: Any, monkeypatch: pytest.MonkeyPatch, variable: str,
                         value: str) -> None:
    app = hardened(make_app)
    monkeypatch.setenv(variable, value)
    [finding] = audit(app)
    assert (finding.id, finding.severity) == ("memory-storage-several-workers", "medium")
    revoking = hardened(make_app, APIGUARD_JWT_REVOCATION=True)
    [finding] = audit(revoking)
    assert (finding.id, finding.severity) == ("revocation-in-memory", "high")


def test_one_web_worker_is_not_several(make_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "1")
    assert audit(hardened(make_app)) == []


# Workers started through GUNICORN_CMD_ARGS or uWSGI's environment went unnoticed.
@pytest.mark.parametrize(("variable", "value", "why"), [
    ("GUNICORN_CMD_ARGS", "--bind 0.0.0.0:8000 --workers 4", "GUNICORN_CMD_ARGS asks for 4 workers"),
    ("GUNICORN_CMD_ARGS", "-w3 --threads 2", "GUNICORN_CMD_ARGS asks for 3 workers"),
    ("GUNICORN_CMD_ARGS", "--workers=2", "GUNICORN_CMD_ARGS asks for 2 workers"),
    ("UWSGI_PROCESSES", "8", "UWSGI_PROCESSES is 8"),
    ("WEB_CONCURRENCY", "4", "WEB_CONCURRENCY is 4"),
    ("SERVER_SOFTWARE", "gunicorn/22.0.0", "this runs under gunicorn"),
])
def test_memory_storage_under_several_workers_says_why(
    make_app: Any, monkeypatch: pytest.MonkeyPatch, variable: str, value: str, why: str
) -> None:
    monkeypatch.setenv(variable, value)
    [finding] = audit(hardened(make_app))
    assert (finding.id, finding.severity) == ("memory-storage-several-workers", "medium")
    assert why in finding.message


def test_one_gunicorn_worker_named_in_its_arguments_is_not_several(
    make_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_SOFTWARE", "gunicorn/22.0.0")
    monkeypatch.setenv("GUNICORN_CMD_ARGS", "--workers 1 --threads 8")
    assert audit(hardened(make_app)) == []


@pytest.mark.parametrize(("variable", "platform"), [
    ("DYNO", "Heroku"), ("K_SERVICE", "Cloud Run"), ("FLY_APP_NAME", "Fly.io"),
    ("RENDER", "Render"), ("RAILWAY_ENVIRONMENT", "Railway"),
    ("WEBSITE_SITE_NAME", "Azure App Service"),
])
def test_proxy_platform_without_trusted_proxies(make_app: Any, monkeypatch: pytest.MonkeyPatch,
                                                variable: str, platform: str) -> None:
    monkeypatch.setenv(variable, "1")
    [finding] = audit(hardened(make_app))
    assert (finding.id, finding.severity, finding.key) == \
        ("proxies-untrusted", "medium", "APIGUARD_TRUSTED_PROXIES")
    assert platform in finding.message
    assert audit(hardened(make_app, APIGUARD_TRUSTED_PROXIES=1)) == []


def test_forwarded_requests_without_trusted_proxies(make_app: Any) -> None:
    app = hardened(make_app)
    client = app.test_client()
    assert client.get("/health").status_code == 200
    assert audit(app) == []
    assert client.get("/health", headers={"X-Forwarded-For": "203.0.113.7"}).status_code == 200
    [finding] = audit(app)
    assert finding.id == "proxies-untrusted" and "X-Forwarded-For" in finding.message


def test_trusted_proxies_silence_forwarded_requests(make_app: Any) -> None:
    app = hardened(make_app, APIGUARD_TRUSTED_PROXIES=1)
    app.test_client().get("/health", headers={"X-Forwarded-For": "203.0.113.7"})
    assert audit(app) == []


def test_findings_are_ordered_most_serious_first(make_app: Any) -> None:
    app = make_app(APIGUARD_DUPLICATE_PARAMS="allow", APIGUARD_CSP=None,
                   APIGUARD_DEFAULT_DENY=False, APIGUARD_CACHE_CONTROL=None,
                   APIGUARD_FORCE_HTTPS=False)
    severities = [f.severity for f in audit(app)]
    assert severities == sorted(severities, key=["high", "medium", "low"].index)
    assert severities[:2] == ["high", "high"] and severities[-1] == "low"
    assert {"https-off", "default-deny-off", "csp-off", "duplicate-params-allowed",
            "cache-control-off", "hosts-unchecked"} <= set(by_id(app))


def test_debug_at_audit_time(make_app: Any) -> None:
    app = hardened(make_app)
    app.debug = True
    [finding] = audit(app)
    assert (finding.id, finding.severity, finding.key) == ("debug-on", "high", "DEBUG")


# -- start-up warnings -----------------------------------------------------------------------

def startup_warnings(caplog: pytest.LogCaptureFixture, app_name: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == app_name and r.levelno == logging.WARNING
            and "flask-apiguard check" in r.getMessage()]


def test_startup_logs_each_high_and_medium_finding_once(
    make_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="apiguard_test")
    app = make_app(APIGUARD_FORCE_HTTPS=False, APIGUARD_DEFAULT_DENY=False,
                   APIGUARD_HSTS=None, APIGUARD_CACHE_CONTROL=None)
    assert app.logger.name == "apiguard_test"
    found = audit(app)
    serious = [f for f in found if f.severity != "low"]
    assert {f.id for f in serious} == {"https-off", "default-deny-off", "hsts-off",
                                       "api-keys-in-memory"}
    messages = startup_warnings(caplog, app.logger.name)
    assert len(messages) == len(serious)
    for finding in serious:
        [message] = [m for m in messages if finding.message in m]
        assert finding.key in message and finding.severity in message
    for finding in found:
        if finding.severity == "low":
            assert not any(finding.message in m for m in messages)

    client = app.test_client()
    client.get("/health")
    client.get("/private", headers=bearer(token_for(app)))
    app.test_cli_runner().invoke(args=["apiguard", "routes"])
    assert startup_warnings(caplog, app.logger.name) == messages


def test_startup_warns_about_debug(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="apiguard_test")
    app = make_app(init=False, **HARDENED)
    app.debug = True
    ApiGuard(app)
    [message] = startup_warnings(caplog, app.logger.name)
    assert "[high]" in message and "DEBUG" in message


def test_hardened_startup_is_quiet(make_app: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    app = hardened(make_app, APIGUARD_JWT_SECRET=SECRET[:32], APIGUARD_TRUST_REQUEST_ID=True)
    assert {f.severity for f in audit(app)} == {"low"}
    assert startup_warnings(caplog, app.logger.name) == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- the denylist's Redis keeps revoked tokens through a restart -------------------------------
# A Redis without persistence brought every revoked token back after a restart (a logged-out
# token answered 200 after kill -9), and `check` said nothing about it.

def denylist_on(make_app: Any, url: str, **config: Any) -> Flask:
    return hardened(make_app, APIGUARD_STORAGE_URI=url, APIGUARD_JWT_REVOCATION=True, **config)


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=2)


@pytest.fixture
def redis_in_tmp(private_redis: PrivateRedis, tmp_path: Any,
                 monkeypatch: pytest.MonkeyPatch) -> PrivateRedis:
    """The private Redis restarted in ``tmp_path``, where its AOF and snapshots go (``dir`` is
    a protected setting that CONFIG SET refuses)."""
    monkeypatch.chdir(tmp_path)
    private_redis.stop()
    private_redis.start()
    return private_redis


def test_a_denylist_on_redis_without_persistence_is_reported(make_app: Any,
                                                             private_redis: PrivateRedis) -> None:
    [finding] = audit(denylist_on(make_app, private_redis.url))
    assert (finding.id, finding.severity, finding.key) == \
        ("revocation-not-durable", "medium", "APIGUARD_STORAGE_URI")
    assert "appendonly yes" in finding.message and 'save ""' in finding.message


def test_a_denylist_on_redis_with_snapshots_only_is_reported(make_app: Any,
                                                            redis_in_tmp: PrivateRedis) -> None:
    redis_client(redis_in_tmp.url).config_set("save", "3600 1 300 100")
    [finding] = audit(denylist_on(make_app, redis_in_tmp.url))
    assert finding.id == "revocation-not-durable"
    assert "3600 1 300 100" in finding.message and "snapshot" in finding.message


def test_a_denylist_on_redis_with_an_append_only_file_is_fine(make_app: Any,
                                                              redis_in_tmp: PrivateRedis) -> None:
    redis_client(redis_in_tmp.url).config_set("appendonly", "yes")
    assert audit(denylist_on(make_app, redis_in_tmp.url)) == []


def test_redis_without_persistence_matters_only_for_the_denylist(
    make_app: Any, private_redis: PrivateRedis
) -> None:
    assert audit(hardened(make_app, APIGUARD_STORAGE_URI=private_redis.url)) == []


def test_a_refused_config_get_still_reports_the_missing_append_only_file(
    make_app: Any, private_redis: PrivateRedis
) -> None:
    # As on managed Redis, where CONFIG is disabled: INFO alone shows that AOF is off.
    redis_client(private_redis.url).acl_setuser(
        "app", enabled=True, passwords=["+app-password-0123456789"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"])
    url = f"redis://app:app-password-0123456789@127.0.0.1:{private_redis.port}/0"
    [finding] = audit(denylist_on(make_app, url))
    assert (finding.id, finding.severity) == ("revocation-not-durable", "medium")
    assert "could not be read" in finding.message
    assert "app-password" not in finding.message


def test_a_refused_info_cannot_verify(make_app: Any, private_redis: PrivateRedis) -> None:
    redis_client(private_redis.url).acl_setuser(
        "app", enabled=True, passwords=["+app-password-0123456789"], keys=["*"], channels=["*"],
        commands=["+@all", "-info", "-config"])
    url = f"redis://app:app-password-0123456789@127.0.0.1:{private_redis.port}/0"
    [finding] = audit(denylist_on(make_app, url))
    assert (finding.id, finding.severity, finding.key) == \
        ("revocation-persistence-unverified", "low", "APIGUARD_STORAGE_URI")
    assert "app-password" not in finding.message


def test_an_unreachable_redis_cannot_verify(make_app: Any, private_redis: PrivateRedis) -> None:
    app = denylist_on(make_app, private_redis.url)
    private_redis.stop()
    [finding] = audit(app)
    assert (finding.id, finding.severity) == ("revocation-persistence-unverified", "low")
    assert "ConnectionError" in finding.message


def test_a_url_converter_of_the_apps_own_is_reported(tmp_path: Any) -> None:
    # A converter's to_python runs during routing, before the guard: a lookup there answered
    # 404 or 401 to anonymous callers depending on what exists (an existence oracle).
    from flask import Flask
    from werkzeug.routing import BaseConverter

    from flask_apiguard import ApiGuard
    from flask_apiguard.audit import findings
    from flask_apiguard.state import guard_state

    from .conftest import base_config

    class TenantConverter(BaseConverter):
        pass

    app = Flask("converters", instance_path=str(tmp_path))
    app.config.update(base_config())
    app.url_map.converters["tenant"] = TenantConverter
    ApiGuard(app)
    found = {f.id: f for f in findings(app, guard_state(app))}
    assert found["url-converter-before-guard"].severity == "low"
    assert "tenant" in found["url-converter-before-guard"].message

    plain = Flask("plain", instance_path=str(tmp_path / "plain"))
    plain.config.update(base_config())
    ApiGuard(plain)
    assert "url-converter-before-guard" not in {f.id for f in findings(plain, guard_state(plain))}


# -- APIGUARD_STORAGE_MODE = "leased" ------------------------------------------------------------

def test_leased_mode_states_its_trade_off(make_app: Any, private_redis: PrivateRedis) -> None:
    app = hardened(make_app, APIGUARD_STORAGE_URI=private_redis.url, APIGUARD_STORAGE_MODE="leased")
    [finding] = audit(app)
    assert (finding.id, finding.severity, finding.key) == \
        ("storage-mode-leased", "low", "APIGUARD_STORAGE_MODE")
    assert "no limit is ever exceeded" in finding.message and "fewer" in finding.message
    assert "revoked by another process" in finding.message


def test_leased_mode_on_a_redis_older_than_7_is_reported(make_app: Any,
                                                         private_redis: PrivateRedis,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # no Redis 6 runs here: its INFO answer is the one thing replaced
    import redis

    info = redis.Redis.info

    def older(self: Any, section: Any = None, *args: Any, **kwargs: Any) -> Any:
        found = info(self, section, *args, **kwargs)
        return {**found, "redis_version": "6.2.14"} if section == "server" else found

    monkeypatch.setattr(redis.Redis, "info", older)
    app = hardened(make_app, APIGUARD_STORAGE_URI=private_redis.url, APIGUARD_STORAGE_MODE="leased")
    [finding] = audit(app)
    assert (finding.id, finding.severity) == ("storage-mode-leased-unsupported", "high")
    assert "6.2.14" in finding.message and "Redis 7" in finding.message
