"""``flask apiguard``: ``routes`` (and its lockfile check), ``openapi``, ``check``, ``keys`` and
``token``."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from .audit import as_json, findings
from .errors import ServiceUnavailable
from .lockfile import Change, Lock, LockfileError, compare, dumps, loads
from .policy import Route
from .ratelimit.probes import CompiledLimit
from .state import guard_state

apiguard_cli = AppGroup("apiguard", help="Audit and manage flask-apiguard.")
#: OPTIONS never reaches a view (the guard answers it); HEAD is shown only where its policy
#: differs from GET's (a MethodView may declare a ``head`` method of its own).
_HIDDEN_METHODS = frozenset({"OPTIONS"})


def _key_name(key: str | Callable[[], str]) -> str:
    """A limit's ``key=`` as the rows show it: its kind, or a callable's qualified name (never
    its ``repr``, whose memory address would change the rows on every run)."""
    if isinstance(key, str):
        return key
    name = getattr(key, "__qualname__", None) or getattr(key, "__name__", None)
    return str(name) if name else type(key).__qualname__


@dataclass(frozen=True, slots=True)
class _Shown:
    """A limit as the rows show it when it is decided per request."""

    item: Any
    limit: Any
    key: Any
    failures_only: bool
    counter: str
    cost: int
    exempt_when: Any


def _sources(route: Route) -> list[CompiledLimit | _Shown]:
    """The limits of a route with ``limit=``/``exempt_when=`` callables, as declared."""
    assert route.limit_sources is not None
    out: list[CompiledLimit | _Shown] = []
    for source in route.limit_sources:
        items = source.compiled or (None,)
        for compiled in items:
            out.append(_Shown(compiled.item if compiled is not None else None, source.limit,
                              source.key, source.failures_only, source.counter, source.cost,
                              source.exempt_when))
    return out


def _concurrency_text(limit: CompiledLimit) -> str:
    key = _key_name(limit.key)
    return f"{limit.item.amount} in flight" + (f" (key={key})" if key != "auto" else "")


def _describe(route: Route) -> dict[str, Any]:
    declared = route.declared
    auth = [m for m in ("jwt", "api_key") if getattr(route, m)]
    roles = sorted({name for names, _ in route.role_rules for name in names})
    scopes = sorted({name for names in route.scope_rules for name in names} | route.api_key_scopes)
    limits = []
    for limit in route.limits if route.limit_sources is None else _sources(route):
        notes = []
        key = _key_name(limit.key)
        if key != "auto":
            notes.append(f"key={key}")
        if limit.failures_only:
            notes.append("count=failures")
        if limit.counter.startswith("scope:"):
            notes.append(f"scope={limit.counter[6:]}")
        if limit.cost != 1:
            notes.append(f"cost={limit.cost}")
        exempt_when = getattr(limit, "exempt_when", None)
        if exempt_when is not None:
            notes.append(f"exempt_when={_key_name(exempt_when)}")
        text = str(limit.item) if limit.item is not None \
            else _key_name(getattr(limit, "limit", None) or "?")
        limits.append(text + (f" ({', '.join(notes)})" if notes else ""))
    return {
        "public": route.public,
        "optional": declared.optional and not route.public and not route.required,
        "required": route.required,
        "auth": auth,
        "roles": roles,
        "role_rules": sorted(({"roles": sorted(n), "require": r} for n, r in route.role_rules),
                             key=lambda rule: (rule["roles"], rule["require"])),
        "scopes": scopes,
        "scope_rules": sorted(sorted(names) for names in route.scope_rules),
        "api_key_scopes": sorted(route.api_key_scopes),
        "rate_limits": limits,
        "validate": [spec.location for spec in route.validations],
        "networks": route.networks.texts() if route.networks is not None else None,
        "concurrency": [_concurrency_text(limit) for limit in route.concurrency],
        "deprecated": route.deprecation is not None,
        "sunset": _iso(route.deprecation.sunset) if route.deprecation is not None else None,
    }


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat().replace("+00:00", "Z") if moment is not None else None


def _marker(row: dict[str, Any]) -> str:
    """The table's note on a deprecated route: its sunset, and whether it has passed."""
    if not row["deprecated"]:
        return ""
    if row["sunset"] is None:
        return " [deprecated]"
    sunset = datetime.fromisoformat(row["sunset"])
    passed = "gone since" if sunset <= datetime.now(UTC) else "sunset"
    return f" [deprecated, {passed} {row['sunset'][:10]}]"


def route_table() -> list[dict[str, Any]]:
    """Every rule with its methods and the policy the pipeline enforces for them."""
    state = guard_state(current_app)
    rows: list[dict[str, Any]] = []
    for rule in sorted(current_app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
        methods = sorted((rule.methods or set()) - _HIDDEN_METHODS) or sorted(rule.methods or ())
        groups: dict[str, dict[str, Any]] = {}
        for method in methods:
            info = _describe(state.route(rule.endpoint, method))
            signature = json.dumps(info, sort_keys=True)
            if signature in groups:
                groups[signature]["methods"].append(method)
            else:
                groups[signature] = {"rule": rule.rule, "endpoint": rule.endpoint,
                                     "methods": [method], **info}
        for row in groups.values():
            if "HEAD" in row["methods"] and "GET" in row["methods"]:
                row["methods"].remove("HEAD")
            row["cors"] = bool(state.config.cors_origins)
            row["unprotected"] = not row["required"] and not row["public"] and not row["optional"]
            rows.append(row)
    return rows


def current_lock() -> Lock:
    """The current app's :class:`~flask_apiguard.lockfile.Lock`: :func:`route_table` and the
    app-wide CORS settings."""
    config = guard_state(current_app).config
    return Lock(route_table(), {"origins": list(config.cors_origins),
                                "credentials": config.cors_credentials})


def _access(row: dict[str, Any]) -> str:
    if row["public"]:
        return "public"
    text = " | ".join(row["auth"])
    if row["optional"]:
        text += " (optional)"
    elif not row["required"]:
        text = "OPEN (undeclared)"
    if row["roles"]:
        text += " roles=" + ",".join(row["roles"])
    if row["scopes"]:
        text += " scopes=" + ",".join(row["scopes"])
    if row.get("networks") is not None:
        text += " from=" + (",".join(row["networks"]) or "nowhere")
    return text


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*headers), line.format(*("-" * w for w in widths))]
    out.extend(line.format(*map(str, r)) for r in rows)
    return "\n".join(s.rstrip() for s in out)


class BaselineError(click.ClickException):
    """A baseline file that is missing or cannot be read: exit 2, like a usage error."""

    exit_code = 2


def _read_baseline(path: Path) -> Lock:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineError(
            f"{path} does not exist. Create it from the current policy with "
            f"`flask apiguard routes --baseline {path} --update`, review it and commit it."
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{path} cannot be read ({type(exc).__name__}); check the path "
                            "and its permissions.") from None
    try:
        return loads(text, str(path))
    except LockfileError as exc:
        raise BaselineError(str(exc)) from None


def _write_baseline(path: Path, lock: Lock) -> None:
    try:
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            handle.write(dumps(lock))
    except OSError as exc:
        raise BaselineError(f"{path} cannot be written ({type(exc).__name__}); check the "
                            "directory and its permissions.") from None


def _report(changes: Sequence[Change], as_json_output: bool, path: Path, update: bool) -> None:
    if as_json_output:
        click.echo(json.dumps([c.to_dict() for c in changes], indent=2))
        return
    for change in changes:
        click.echo(str(change))
    loose = sum(c.loosens for c in changes)
    if update:
        click.echo(f"Wrote {path} ({len(changes)} change(s) since the previous baseline).")
    elif not changes:
        click.echo(f"No changes since {path}.")
    elif loose:
        click.echo(f"{loose} loosening change(s) since {path}. If they are intended, review "
                   f"them and accept them with `flask apiguard routes --baseline {path} "
                   "--update`.")
    else:
        click.echo(f"{len(changes)} change(s) since {path}, none loosening.")


@apiguard_cli.command("routes")
@click.option("--json", "as_json_output", is_flag=True, help="Print JSON for machines.")
@click.option("--fail-on-unprotected", is_flag=True,
              help="Exit 1 when a route is reachable without authentication and not declared open.")
@click.option("--baseline", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Compare with this lockfile (apiguard.lock) instead of listing the routes.")
@click.option("--fail-on-loosen", is_flag=True,
              help="With --baseline: exit 1 when a change loosens the policy.")
@click.option("--update", is_flag=True,
              help="With --baseline: write the current policy to the lockfile.")
def routes_command(as_json_output: bool, fail_on_unprotected: bool, baseline: Path | None,
                   fail_on_loosen: bool, update: bool) -> None:
    """Every route with its methods and security policy.

    With --baseline FILE, the changes since that lockfile instead: loosening ones (a route
    became public or optional, lost a role or scope, had a limit raised or removed, a CORS
    origin was added, a new route is undeclared), tightening ones, added and removed routes.
    """
    if baseline is None and (fail_on_loosen or update):
        raise click.UsageError("--fail-on-loosen and --update need --baseline FILE.")
    lock = current_lock()
    rows = lock.routes
    changes: list[Change] = []
    if baseline is not None:
        try:
            previous = _read_baseline(baseline)
        except BaselineError as exc:
            if not update:
                raise
            if baseline.exists():
                click.echo(f"Replacing an unreadable baseline: {exc.message}", err=True)
            previous = Lock([], lock.cors)
        changes = compare(previous, lock)
        if update:
            _write_baseline(baseline, lock)
        _report(changes, as_json_output, baseline, update)
    elif as_json_output:
        click.echo(json.dumps(rows, indent=2))
    else:
        click.echo(_table(
            ("RULE", "METHODS", "ENDPOINT", "ACCESS", "RATE LIMITS", "VALIDATE"),
            [(r["rule"], ",".join(r["methods"]), r["endpoint"] + _marker(r), _access(r),
              "; ".join([*r["rate_limits"], *r.get("concurrency", ())]) or "-",
              ",".join(r["validate"]) or "-") for r in rows],
        ))
    unprotected = [r for r in rows if r["unprotected"]]
    if unprotected and fail_on_unprotected:
        for row in unprotected:
            click.echo(
                f"unprotected: {row['rule']} [{','.join(row['methods'])}] ({row['endpoint']}) is "
                "reachable without authentication; add @require_jwt/@require_api_key, or declare "
                "it open with @public.", err=True,
            )
        sys.exit(1)
    if fail_on_loosen and not update and any(c.loosens for c in changes):
        sys.exit(1)


@apiguard_cli.command("openapi")
@click.option("--output", "-o", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the document to FILE instead of standard output.")
@click.option("--yaml", "as_yaml", is_flag=True, help="YAML instead of JSON (needs PyYAML).")
def openapi_command(output: str | None, as_yaml: bool) -> None:
    """Print the OpenAPI 3.1 document of the enforced policies."""
    from .openapi import document_for

    document = document_for(current_app, guard_state(current_app))
    if as_yaml:
        try:
            import yaml
        except ImportError:
            raise click.ClickException('--yaml needs PyYAML: pip install pyyaml') from None
        text = yaml.safe_dump(document, sort_keys=False, allow_unicode=True)
    else:
        text = json.dumps(document, indent=2) + "\n"
    if output is None:
        click.echo(text, nl=False)
    else:
        with open(output, "w", encoding="utf-8") as handle:
            handle.write(text)
        click.echo(f"Wrote {output}.", err=True)


@apiguard_cli.command("check")
@click.option("--json", "as_json_output", is_flag=True, help="Print JSON for machines.")
def check_command(as_json_output: bool) -> None:
    """Audit the live configuration; exit 1 on any high finding."""
    found = findings(current_app, guard_state(current_app))
    if as_json_output:
        click.echo(json.dumps(as_json(found), indent=2))
    elif not found:
        click.echo("No findings.")
    else:
        for finding in found:
            click.echo(f"[{finding.severity.upper():6}] {finding.key} ({finding.id})")
            click.echo(f"         {finding.message}")
    if any(f.severity == "high" for f in found):
        sys.exit(1)


@apiguard_cli.group("keys")
def keys_group() -> None:
    """Create, list and revoke API keys."""


def _store_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ServiceUnavailable as exc:
        raise click.ClickException(exc.detail) from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None


@keys_group.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, help="A scope of the key (repeatable).")
@click.option("--role", "roles", multiple=True, help="A role of the key (repeatable).")
@click.option("--owner", default=None, help="The subject the key acts for.")
@click.option("--expires-days", type=click.IntRange(min=1), default=None,
              help="Days until the key expires.")
def keys_create(name: str, scopes: tuple[str, ...], roles: tuple[str, ...], owner: str | None,
                expires_days: int | None) -> None:
    """Create a key and print it once (it is not stored in plaintext)."""
    store = guard_state(current_app).api_keys
    plaintext, key = _store_call(
        store.create, name, scopes=scopes, roles=roles, owner=owner,
        expires_in=expires_days * 86400 if expires_days else None,
    )
    click.echo(plaintext)
    expires = key.expires_at.isoformat(timespec="seconds") if key.expires_at else "never"
    click.echo(f"key_id={key.key_id} name={key.name} expires={expires}", err=True)
    click.echo("Store it now: it cannot be shown again.", err=True)


@keys_group.command("list")
@click.option("--json", "as_json_output", is_flag=True, help="Print JSON for machines.")
def keys_list(as_json_output: bool) -> None:
    """List keys (never their secrets)."""
    keys = _store_call(guard_state(current_app).api_keys.list)
    if as_json_output:
        click.echo(json.dumps([k.to_dict() for k in keys], indent=2))
        return
    def status(k: Any) -> str:
        return "revoked" if k.revoked else "expired" if k.is_expired else "active"

    click.echo(_table(
        ("KEY_ID", "NAME", "OWNER", "SCOPES", "ROLES", "CREATED", "EXPIRES", "STATUS"),
        [(k.key_id, k.name, k.owner or "-", ",".join(sorted(k.scopes)) or "-",
          ",".join(sorted(k.roles)) or "-", k.created_at.strftime("%Y-%m-%d %H:%M"),
          k.expires_at.strftime("%Y-%m-%d %H:%M") if k.expires_at else "never", status(k))
         for k in keys],
    ))


@keys_group.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id."""
    if not _store_call(guard_state(current_app).api_keys.revoke, key_id):
        raise click.ClickException(f"No active key with id {key_id!r}.")
    click.echo(f"Revoked {key_id}.")


@apiguard_cli.command("token")
@click.argument("subject")
@click.option("--role", "roles", multiple=True, help="A role (repeatable).")
@click.option("--scope", "scopes", multiple=True, help="A scope (repeatable).")
@click.option("--expires-in", type=click.IntRange(min=1), default=None,
              help="Lifetime in seconds (default APIGUARD_JWT_EXPIRES_IN).")
def token_command(subject: str, roles: tuple[str, ...], scopes: tuple[str, ...],
                  expires_in: int | None) -> None:
    """Print a signed token for SUBJECT (for development)."""
    state = guard_state(current_app)
    try:
        token = state.jwt.issue(subject, roles=roles, scopes=scopes, expires_in=expires_in)
    except (RuntimeError, ValueError, TypeError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(token)
