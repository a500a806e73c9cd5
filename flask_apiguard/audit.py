"""``flask apiguard check``: audit the live configuration, and warn once at start-up.

Each finding names the key, how serious it is (``high``, ``medium``, ``low``) and the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from . import limiter_keys
from .ratelimit.shared import redacted

if TYPE_CHECKING:
    from flask import Flask

    from .state import GuardState

SEVERITIES = ("high", "medium", "low")
_WEAK_SECRETS = ("secret", "changeme", "password", "example", "default", "test", "12345")
#: Environment variables that say the app runs behind a TLS-terminating proxy.
_PROXY_PLATFORMS = {
    "DYNO": "Heroku",
    "K_SERVICE": "Cloud Run",
    "FLY_APP_NAME": "Fly.io",
    "RENDER": "Render",
    "RAILWAY_ENVIRONMENT": "Railway",
    "WEBSITE_SITE_NAME": "Azure App Service",
}
#: Every HMAC secret that flask-apiguard's documentation (README, docs/, example_app/) shows or
#: has shown, as (length in bytes, SHA-256): a secret printed in public docs forges tokens for
#: anyone who read them. Kept as digests so that the package itself carries no secret-looking
#: string; tests/test_docs.py checks that every secret in the docs is listed here.
DOCUMENTED_SECRETS: frozenset[tuple[int, str]] = frozenset({
    # docs/index.rst, docs/quickstart.rst and docs/deployment.rst, before they read it from
    # the environment
    (49, "71e6c36a5489bd23961b9b7ffa8104a8e2d13d320a9492985da6bb939972104c"),
})
_WORKERS_ARG = re.compile(r"(?:^|\s)(?:-w\s*|--workers(?:\s+|=))(\d+)")


@dataclass(frozen=True, slots=True)
class Finding:
    id: str
    severity: str
    key: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def _several_workers() -> str | None:
    """Why this process is likely one of several serving the app, or ``None``.

    A worker count in ``GUNICORN_CMD_ARGS`` decides (only gunicorn's command line outranks it);
    otherwise ``WEB_CONCURRENCY`` or ``UWSGI_PROCESSES`` above 1, or running under gunicorn or
    uWSGI at all (their configuration file may set the count; one worker is rare in production).
    """
    workers = _WORKERS_ARG.search(os.environ.get("GUNICORN_CMD_ARGS", ""))
    if workers:
        count = int(workers.group(1))
        return f"GUNICORN_CMD_ARGS asks for {count} workers" if count > 1 else None
    for variable in ("WEB_CONCURRENCY", "UWSGI_PROCESSES"):
        value = os.environ.get(variable, "").strip()
        if value.isdigit() and int(value) > 1:
            return f"{variable} is {value}"
    if "gunicorn" in os.environ.get("SERVER_SOFTWARE", "").lower() or "gunicorn" in sys.modules:
        return "this runs under gunicorn"
    if "uwsgi" in sys.modules:
        return "this runs under uWSGI"
    return None


def is_documented_secret(secret: bytes) -> bool:
    """True when ``secret`` is, or contains, a secret shown in flask-apiguard's documentation."""
    for length, digest in DOCUMENTED_SECRETS:
        for start in range(len(secret) - length + 1):
            if hashlib.sha256(secret[start:start + length]).hexdigest() == digest:
                return True
    return False


def _hmac_secrets(state: GuardState) -> list[tuple[str, bytes]]:
    """Every HMAC secret the app verifies with, named by the key that configures it."""
    jwt = state.jwt
    found: list[tuple[str, bytes]] = []
    if jwt.default_key is not None and isinstance(jwt.default_key.verify, bytes):
        found.append(("APIGUARD_JWT_SECRET", jwt.default_key.verify))
    for kid, key in jwt.keys.items():
        if isinstance(key.verify, bytes):
            found.append((f"APIGUARD_JWT_KEYS[{kid!r}]", key.verify))
    return found


def _secret_findings(app: Flask, state: GuardState) -> list[Finding]:
    found: list[Finding] = []
    app_secret = app.config.get("SECRET_KEY")
    if isinstance(app_secret, str):
        app_secret = app_secret.encode()
    for key, secret in _hmac_secrets(state):
        if app_secret and app_secret == secret:
            found.append(Finding(
                "jwt-secret-reused", "high", key,
                "The JWT secret is the app's SECRET_KEY: a leak of one forges the other. Generate "
                "a separate secret: python -c \"import secrets; print(secrets.token_urlsafe(48))\".",
            ))
        text = secret.decode("utf-8", "replace").lower()
        if is_documented_secret(secret):
            found.append(Finding(
                "jwt-secret-documented", "high", key,
                "The JWT secret is the example secret printed in flask-apiguard's documentation: "
                "anyone who read it can forge tokens. Generate your own, keep it out of the code "
                "and read it from the environment: "
                "python -c \"import secrets; print(secrets.token_urlsafe(48))\".",
            ))
        elif len(set(secret)) < 12 or any(word in text for word in _WEAK_SECRETS):
            found.append(Finding(
                "jwt-secret-guessable", "high", key,
                "The JWT secret looks guessable (few distinct characters or a common word). Use "
                "48 random bytes: python -c \"import secrets; print(secrets.token_urlsafe(48))\".",
            ))
        elif len(secret) < 48:
            found.append(Finding(
                "jwt-secret-short", "low", key,
                f"The JWT secret is {len(secret)} bytes; 48 or more random bytes leave more margin.",
            ))
    return found


_PERSISTENCE_FIX = ("Run it with the append-only file on (appendonly yes, appendfsync everysec; "
                    "see the deployment guide).")


def _revocation_persistence(state: GuardState) -> Finding | None:
    """Whether the Redis that holds the token denylist keeps it through a restart.

    Asks Redis: ``INFO persistence`` (``aof_enabled``) and, for the message, ``CONFIG GET save``
    (RDB snapshots), which managed services often refuse. An unreachable server or a refused
    ``INFO`` gives a low "could not verify" finding; the audit never fails because of Redis.
    """
    shared = state.shared
    where = redacted(shared.uri)
    try:
        client = cast(Any, shared.primary.storage).get_connection()
        # A cluster answers INFO from one node unless asked for every primary.
        cluster = {"target_nodes": "primaries"} if hasattr(client, "get_primaries") else {}
        info = client.info("persistence", **cluster)
    except Exception as exc:  # unreachable, INFO refused by an ACL, a cluster still down...
        return Finding(
            "revocation-persistence-unverified", "low", "APIGUARD_STORAGE_URI",
            f"Could not ask the Redis at {where} whether it keeps revoked tokens through a "
            f"restart ({type(exc).__name__}); without persistence a restart brings every revoked "
            f"token back until it expires. {_PERSISTENCE_FIX}",
        )
    nodes = [info] if "aof_enabled" in info else [v for v in info.values() if isinstance(v, dict)]
    if nodes and all(str(node.get("aof_enabled")) == "1" for node in nodes):
        return None
    if not nodes:
        return Finding(
            "revocation-persistence-unverified", "low", "APIGUARD_STORAGE_URI",
            f"The Redis at {where} did not report its persistence settings. {_PERSISTENCE_FIX}",
        )
    try:
        answer = client.config_get("save")
        replies = [answer] if "save" in answer else [v for v in answer.values() if isinstance(v, dict)]
        saves: set[str] | None = {str(reply.get("save", "")) for reply in replies}
    except Exception:  # CONFIG is often disabled on managed Redis: only the wording changes
        saves = None
    if saves is None:
        how = ("its snapshot schedule could not be read (CONFIG GET refused), and snapshots alone "
               "miss every revocation made since the last one")
    elif saves - {""}:
        how = (f"its snapshots (save {sorted(saves - {''})[0]!r}) miss every revocation made since "
               "the last one")
    else:
        how = 'it keeps nothing on disk (save "")'
    return Finding(
        "revocation-not-durable", "medium", "APIGUARD_STORAGE_URI",
        f"The Redis at {where} holds the revoked-token denylist without an append-only file "
        f"(appendonly no); {how}. After a restart, revoked and logged-out tokens are accepted "
        f"again until they expire. {_PERSISTENCE_FIX} On a managed Redis that cannot turn it on, "
        "keep token lifetimes short (APIGUARD_JWT_EXPIRES_IN).",
    )


def _leased_finding(state: GuardState) -> Finding:
    """``APIGUARD_STORAGE_MODE = "leased"``: its trade-off, or why it cannot work here (the
    lease script needs Redis 7's ``PEXPIRETIME``, the cache ``CLIENT TRACKING``)."""
    from .ratelimit.leases import LEASE_MAX, SHARE

    where = redacted(state.shared.uri)
    try:
        client = cast(Any, state.shared.primary.storage).get_connection()
        version = str(client.info("server").get("redis_version", ""))
    except Exception:  # unreachable now: the trade-off is still worth stating
        version = ""
    major = version.split(".", 1)[0]
    if major.isdigit() and int(major) < 7:
        return Finding(
            "storage-mode-leased-unsupported", "high", "APIGUARD_STORAGE_MODE",
            f"'leased' needs Redis 7 or later; the Redis at {where} is {version}, so requests "
            "that need a lease fail and APIGUARD_RATELIMIT_ON_STORAGE_ERROR applies. Upgrade "
            "Redis or use APIGUARD_STORAGE_MODE = 'exact'.",
        )
    return Finding(
        "storage-mode-leased", "low", "APIGUARD_STORAGE_MODE",
        "Leased mode: most requests make no Redis round trip, and no limit is ever exceeded, "
        "but each process may hold leased units it does not spend (at most "
        f"{LEASE_MAX} per limit and client, and one {SHARE}th of what is left of the window), "
        "so a client may get fewer requests than its limit when its traffic moves between "
        "processes; a token revoked by another process is refused here once Redis's "
        "invalidation arrives (about a millisecond on one host), at once when revoked here. "
        "Use 'exact' when every request must see Redis's count of that instant.",
    )


def _cors_findings(origins: tuple[str, ...]) -> list[Finding]:
    found: list[Finding] = []
    for origin in origins:
        if origin == "*":
            found.append(Finding(
                "cors-wildcard", "medium", "APIGUARD_CORS_ORIGINS",
                "'*' lets every website read your API's responses from a visitor's browser. "
                "List the origins of your own front ends instead.",
            ))
        elif origin.startswith("re:"):
            pattern = origin[3:]
            if re.search(r"(?<!\\)\.(?![*+?])", pattern):
                found.append(Finding(
                    "cors-unescaped-dot", "medium", "APIGUARD_CORS_ORIGINS",
                    f"In {origin!r} an unescaped '.' matches any character "
                    "('https://appXexample.com' passes). Escape dots as '\\.'.",
                ))
            if pattern.startswith((".*", ".+")) or "://.*" in pattern or "://.+" in pattern:
                found.append(Finding(
                    "cors-pattern-too-wide", "medium", "APIGUARD_CORS_ORIGINS",
                    f"{origin!r} admits any host name. Anchor it to your domain, e.g. "
                    "'re:https://[a-z0-9-]+\\.example\\.com'.",
                ))
    return found


def findings(app: Flask, state: GuardState) -> list[Finding]:
    """Every finding for ``app``'s live configuration, most serious first."""
    config = state.config
    found: list[Finding] = []
    add = found.append
    several = _several_workers()
    if app.debug:
        add(Finding("debug-on", "high", "DEBUG",
                    "Debug mode is on: the Werkzeug debugger runs code for anyone who reaches it. "
                    "Never run with --debug or FLASK_DEBUG=1 in production."))
    if not config.force_https:
        add(Finding("https-off", "high", "APIGUARD_FORCE_HTTPS",
                    "Plain HTTP is accepted: tokens and keys cross the network in clear text. "
                    "Set APIGUARD_FORCE_HTTPS = True (terminate TLS at your proxy and set "
                    "APIGUARD_TRUSTED_PROXIES)."))
    if not config.default_deny:
        add(Finding("default-deny-off", "high", "APIGUARD_DEFAULT_DENY",
                    "Views without a decorator are open to anyone. Set APIGUARD_DEFAULT_DENY = True "
                    "and mark open views with @public."))
    found.extend(_secret_findings(app, state))
    if config.jwt_revocation and state.shared.is_memory:
        add(Finding("revocation-in-memory", "high" if several else "medium", "APIGUARD_STORAGE_URI",
                    "Revoked tokens are kept in this process's memory: other workers"
                    f"{f' ({several})' if several else ''} still accept them and a restart "
                    "forgets them. Use APIGUARD_STORAGE_URI = 'redis://…'."))
    elif state.shared.is_memory and several:
        add(Finding("memory-storage-several-workers", "medium", "APIGUARD_STORAGE_URI",
                    f"Rate-limit and auth-failure counters are per process and {several}, so N "
                    "workers allow N times the limit. Use APIGUARD_STORAGE_URI = 'redis://…'."))
    elif config.jwt_revocation:
        durable = _revocation_persistence(state)
        if durable is not None:
            add(durable)
    if config.storage_mode == "leased":
        add(_leased_finding(state))
    found.extend(_cors_findings(config.cors_origins))
    if config.hsts is None:
        add(Finding("hsts-off", "medium", "APIGUARD_HSTS",
                    "Without Strict-Transport-Security a browser can be downgraded to HTTP. "
                    "Remove the None to use the default."))
    if config.trusted_proxies == 0:
        platform = next((name for var, name in _PROXY_PLATFORMS.items() if var in os.environ), None)
        if platform or state.saw_forwarded:
            why = f"This runs on {platform}, behind its proxy" if platform else \
                "Requests arrive with X-Forwarded-For"
            add(Finding("proxies-untrusted", "medium", "APIGUARD_TRUSTED_PROXIES",
                        f"{why}, but APIGUARD_TRUSTED_PROXIES is 0: every client shares the "
                        "proxy's address in rate limits and logs, and HTTPS is not detected. "
                        "Set it to the number of proxies in front of the app (usually 1)."))
    for key in limiter_keys.keys_without_effect(app.config, state.adopter is not None
                                                or state.pending_limiter is not None):
        add(Finding("ratelimit-key-without-effect", "low", key,
                    f"{key} has no effect under flask-apiguard. Remove it, or set its "
                    "APIGUARD_* equivalent (see the flask-limiter keys in docs/config.rst)."))
    if config.ratelimit_default is None and state.adopter is None \
            and state.pending_limiter is None:  # an adopted limiter's defaults apply
        add(Finding("no-default-limit", "medium", "APIGUARD_RATELIMIT_DEFAULT",
                    "Views without @rate_limit are unlimited. Set a default such as "
                    "'100 per 15 minutes'."))
    if config.auth_failure_limit is None:
        add(Finding("no-auth-failure-limit", "medium", "APIGUARD_AUTH_FAILURE_LIMIT",
                    "Credential guessing is not throttled. Set e.g. '20 per 15 minutes'."))
    if config.max_content_length is None:
        add(Finding("no-body-limit", "medium", "APIGUARD_MAX_CONTENT_LENGTH",
                    "Request bodies are unbounded. Set a limit in bytes."))
    if config.csp is None:
        add(Finding("csp-off", "medium", "APIGUARD_CSP",
                    "No Content-Security-Policy: a response rendered by a browser may run scripts."))
    if {"TRACE", "CONNECT"} & config.allowed_methods:
        add(Finding("trace-allowed", "medium", "APIGUARD_ALLOWED_METHODS",
                    "TRACE/CONNECT are allowed; remove them (cross-site tracing, proxy abuse)."))
    if config.jwt_leeway > 300:
        add(Finding("large-leeway", "medium", "APIGUARD_JWT_LEEWAY",
                    f"A leeway of {config.jwt_leeway:g} s keeps expired tokens alive; 30 s is plenty."))
    if config.jwt_expires_in > 86400 and not config.jwt_revocation:
        add(Finding("long-tokens", "medium", "APIGUARD_JWT_EXPIRES_IN",
                    "Tokens live longer than a day and cannot be revoked. Shorten them, or turn "
                    "on APIGUARD_JWT_REVOCATION."))
    if config.api_key_store == "memory://":
        add(Finding("api-keys-in-memory", "medium", "APIGUARD_API_KEY_STORE",
                    "API keys are kept in memory and lost on restart. Use the SQLite default "
                    "or redis://."))
    if config.trusted_hosts is None:
        add(Finding("hosts-unchecked", "low", "APIGUARD_TRUSTED_HOSTS",
                    "Any Host header is accepted (cache poisoning, poisoned redirects). List your "
                    "host names."))
    if config.trust_request_id:
        add(Finding("request-id-trusted", "low", "APIGUARD_TRUST_REQUEST_ID",
                    "Clients choose their request ids; only trust them behind your own proxy."))
    for key, on, what in (
        ("APIGUARD_JSON_ONLY", config.json_only, "non-JSON bodies reach your views"),
        ("APIGUARD_REJECT_OPERATOR_KEYS", config.reject_operator_keys,
         "'$' keys (NoSQL operators) reach your views"),
        ("APIGUARD_SECURITY_LOG", config.security_log, "security events are not logged"),
    ):
        if not on:
            add(Finding(key.lower().replace("apiguard_", "").replace("_", "-") + "-off", "low",
                        key, f"It is off: {what}."))
    if config.duplicate_params == "allow":
        add(Finding("duplicate-params-allowed", "low", "APIGUARD_DUPLICATE_PARAMS",
                    "Repeated query parameters reach your views (HTTP parameter pollution)."))
    if config.cache_control is None:
        add(Finding("cache-control-off", "low", "APIGUARD_CACHE_CONTROL",
                    "Responses to authenticated requests may be stored by caches."))
    found.extend(_sunset_findings(app, config.sunset_enforce))
    found.extend(_converter_findings(app))
    found.extend(_provider_findings(state))
    order = {s: i for i, s in enumerate(SEVERITIES)}
    return sorted(found, key=lambda f: order[f.severity])


#: How long before a sunset ``check`` starts to mention it.
SUNSET_NOTICE = timedelta(days=7)


def _sunset_findings(app: Flask, enforce: bool) -> list[Finding]:
    """A ``@deprecated`` view whose sunset is within a week (low) or has passed (medium).

    Read from the declared policies (nothing is compiled): this also runs at start-up."""
    from .policy import declared_policy

    now = datetime.now(UTC)
    found: list[Finding] = []
    seen: set[tuple[str, datetime]] = set()
    for rule in sorted(app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        view = app.view_functions.get(rule.endpoint)
        if view is None:
            continue
        for method in sorted((rule.methods or set()) - {"OPTIONS", "HEAD"}):
            deprecation = declared_policy(view, method).deprecation
            sunset = deprecation.sunset if deprecation is not None else None
            if sunset is None or (rule.endpoint, sunset) in seen or now < sunset - SUNSET_NOTICE:
                continue
            seen.add((rule.endpoint, sunset))
            day = sunset.date().isoformat()
            if now < sunset:
                found.append(Finding(
                    "sunset-soon", "low", rule.endpoint,
                    f"{rule.rule} is deprecated and its sunset ({day}) is less than a week away. "
                    "Tell the callers still using it (signal deprecated_called), or move the "
                    "sunset in @deprecated.",
                ))
            elif enforce:
                found.append(Finding(
                    "sunset-passed", "medium", rule.endpoint,
                    f"{rule.rule} passed its sunset ({day}) and answers 410 gone. Remove the "
                    "route, or move the sunset in @deprecated if it must come back.",
                ))
            else:
                found.append(Finding(
                    "sunset-passed", "medium", rule.endpoint,
                    f"{rule.rule} passed its sunset ({day}) but still answers, because "
                    "APIGUARD_SUNSET_ENFORCE is False. Remove the route, or move its sunset.",
                ))
    return found


def _provider_findings(state: GuardState) -> list[Finding]:
    """An identity provider whose keys could not be fetched (a wrong URL, a provider down, a
    discovery document naming another issuer): its tokens get 503 until it is reached."""
    config = state.config
    key = "APIGUARD_JWT_ISSUERS" if config.jwt_issuers is not None else \
        "APIGUARD_JWT_JWKS_URL" if config.jwt_jwks_url is not None else "APIGUARD_JWT_ISSUER"
    found = []
    if config.jwt_issuers is None and state.jwt.sources and \
            (config.jwt_issuer is None or config.jwt_audience is None):
        found.append(Finding("provider-audience-unset", "medium",
                             "APIGUARD_JWT_AUDIENCE" if config.jwt_issuer else "APIGUARD_JWT_ISSUER",
                             "Tokens come from an identity provider, but its issuer or this API's "
                             "audience is not checked: a token it issued for another API would "
                             "be accepted. Set APIGUARD_JWT_ISSUER and APIGUARD_JWT_AUDIENCE."))
    for source in state.jwt.sources:
        if source.last_attempt is None:  # not tried yet (init_app tries at start-up)
            source.refresh()
        if source.last_error is not None:
            kept = "the last good keys are kept" if source.ever_fetched else \
                "no keys were ever fetched, so its tokens get 503 until it is reached"
            found.append(Finding("jwks-unavailable", "high", key,
                                 f"The identity provider's keys could not be fetched: "
                                 f"{source.last_error} ({kept}). Check the URL and the issuer."))
    return found


def warn_at_startup(app: Flask, state: GuardState) -> None:
    """Log the high and medium findings once, on ``app.logger``."""
    for finding in findings(app, state):
        if finding.severity != "low":
            app.logger.warning("flask-apiguard check [%s] %s: %s", finding.severity, finding.key,
                               finding.message)


def as_json(items: list[Finding]) -> list[dict[str, Any]]:
    return [item.to_dict() for item in items]


def _converter_findings(app: Flask) -> list[Finding]:
    """URL converters of the app's own run during routing, before the guard: a lookup in one
    runs for requests the guard then refuses (and a 404 from it tells who may not ask)."""
    own = sorted(name for name, converter in app.url_map.converters.items()
                 if not converter.__module__.startswith("werkzeug."))
    if not own:
        return []
    return [Finding(
        "url-converter-before-guard", "low", "url_map.converters",
        f"URL converter(s) {', '.join(own)} run while routing, before the guard: a lookup in "
        "one (a tenant, an object) runs for requests the guard refuses, and its 404 answers "
        "anonymous callers. Keep lookups in a url_value_preprocessor or the view, which run "
        "only for admitted requests.")]
