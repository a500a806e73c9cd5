"""Security tests generated from the policy: one request per route and rule."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from ..lockfile import Lock, LockfileError, loads, parse_limit
from ..state import guard_state
from .helpers import TEST_SUBJECT, GuardClient, reset_limits, stopped_clock

#: The value each URL converter gets when ``samples`` does not name the argument.
CONVERTER_SAMPLES: dict[str, str] = {
    "default": "x", "string": "x", "path": "x", "int": "1", "float": "1.5",
    "uuid": "8f2e4c1a-3b5d-4e6f-9a7b-0c1d2e3f4a5b",
}
_ARGUMENT = re.compile(
    r"<(?:(?P<converter>[a-zA-Z_][a-zA-Z0-9_]*)(?:\((?P<args>[^)]*)\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>"
)
#: The origin of the preflight that must get no CORS grant.
FOREIGN_ORIGIN = "https://apiguard-foreign.invalid"


def sample_path(rule: str, samples: Mapping[str, Any] | None = None, endpoint: str = "") -> str:
    """A URL for ``rule``: each argument gets ``samples[endpoint][name]``, or
    ``samples[name]``, or a value of its converter's type (:data:`CONVERTER_SAMPLES`; ``any``
    takes its first choice)."""
    samples = samples or {}
    own = samples.get(endpoint)
    own = own if isinstance(own, Mapping) else {}

    def value(match: re.Match[str]) -> str:
        name = match["name"]
        if name in own:
            return quote(str(own[name]), safe="")
        shared = samples.get(name)
        if shared is not None and not isinstance(shared, Mapping):
            return quote(str(shared), safe="")
        converter = match["converter"] or "default"
        if converter == "any" and match["args"]:
            return quote(match["args"].split(",")[0].strip().strip("'\""), safe="")
        return CONVERTER_SAMPLES.get(converter, "x")

    return _ARGUMENT.sub(value, rule)


@dataclass(frozen=True, slots=True)
class _Credential:
    kind: str  # "jwt" or "api_key"
    roles: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class SecurityCase:
    """One request (or, for a rate limit, a run of them) proving one rule of one route.

    ``check`` is ``unauthenticated``, ``missing_role``, ``missing_scope``,
    ``missing_api_key_scope``, ``rate_limit``, ``content_type``, ``operator_key`` or
    ``foreign_preflight``; ``expect`` the status (0 for the preflight: no CORS grant).
    """

    rule: str
    method: str
    endpoint: str
    check: str
    expect: int
    path: str
    why: str
    credential: _Credential | None = None
    #: For ``rate_limit``: the requests admitted before the refused one.
    admitted: int = 0
    #: For ``rate_limit``: how each request is refused after being counted (before the view).
    refusal: str = ""
    #: For ``foreign_preflight``: the origin asking.
    origin: str = FOREIGN_ORIGIN

    @property
    def id(self) -> str:
        return f"{self.method} {self.rule}: {self.why} -> {self.expect or 'no CORS grant'}"

    def run(self, app: Flask) -> None:
        """Send the request(s) to ``app`` (counters reset first). A rate-limit case with
        ``memory://`` storage runs with the storage's clock stopped at a window start, so no
        window boundary falls between its requests.

        :raises AssertionError: naming the route, the rule and what came back.
        """
        reset_limits(app)
        client = GuardClient(app, app.response_class)
        if self.credential is not None:
            given = self.credential
            if given.kind == "jwt":
                client = client.as_user(TEST_SUBJECT, roles=given.roles, scopes=given.scopes)
            else:
                client = client.as_api_key(scopes=given.scopes, roles=given.roles,
                                           owner=TEST_SUBJECT)
        if self.check == "foreign_preflight":
            response = client.options(self.path, headers={
                "Origin": self.origin, "Access-Control-Request-Method": self.method})
            granted = response.headers.get("Access-Control-Allow-Origin")
            assert granted is None, (
                f"{self.id}: the preflight from {self.origin} was granted "
                f"(Access-Control-Allow-Origin: {granted})")
            return
        stopped = self.check == "rate_limit" and guard_state(app).shared.is_memory
        with stopped_clock() if stopped else nullcontext():
            for number in range(1, self.admitted + 1):
                response = self._send(client)
                assert response.status_code != 429, (
                    f"{self.id}: request {number} of {self.admitted} was already refused "
                    f"({_described(response)})")
            response = self._send(client)
        assert response.status_code == self.expect, (
            f"{self.id}: expected {self.expect}, got {_described(response)}")
        if self.check == "rate_limit":
            assert response.headers.get("Retry-After"), f"{self.id}: the 429 has no Retry-After"

    def _send(self, client: GuardClient) -> TestResponse:
        if self.check == "content_type" or self.refusal == "content_type":
            return client.open(self.path, method=self.method, data=b'{"probe": 1}',
                               content_type="text/plain")
        if self.check == "operator_key":
            return client.open(self.path, method=self.method, json={"$where": "1"})
        if self.refusal == "duplicate_parameter":
            return client.open(self.path, method=self.method,
                               query_string="apiguard-probe=1&apiguard-probe=2")
        return client.open(self.path, method=self.method)


def _described(response: TestResponse) -> str:
    error = ""
    if response.is_json or response.mimetype == "application/problem+json":
        body = response.get_json(silent=True, force=True)
        if isinstance(body, dict) and body.get("error"):
            error = f" {body['error']}"
    return f"{response.status_code}{error}"


def _rows(app: Flask, baseline: str | Path | Lock | Sequence[Mapping[str, Any]] | None
          ) -> list[Mapping[str, Any]]:
    if baseline is None:
        from ..cli import route_table

        with app.app_context():
            return list(route_table())
    if isinstance(baseline, Lock):
        return list(baseline.routes)
    if isinstance(baseline, (str, Path)):
        path = Path(baseline)
        try:
            return list(loads(path.read_text(encoding="utf-8"), str(path)).routes)
        except FileNotFoundError:
            raise LockfileError(f"{path} does not exist; write it with `flask apiguard routes "
                                f"--baseline {path} --update`.") from None
    return list(baseline)


def security_cases(app: Flask, *, baseline: str | Path | Lock | Sequence[Mapping[str, Any]] | None = None,
                   samples: Mapping[str, Any] | None = None, limit_requests: int = 50,
                   foreign_origin: str | None = None) -> list[SecurityCase]:
    """The generated cases for ``app``, one per route, method and rule.

    :param baseline: where the expected policy comes from: ``None`` for ``app``'s own routes
        (the cases prove the pipeline enforces what the code declares), or a lockfile path,
        :class:`~flask_apiguard.lockfile.Lock` or rows (they also prove the code still
        declares what was reviewed: a ``@roles`` removed since fails its 403 case).
    :param samples: URL argument values: ``{"note_id": 7}``, or per endpoint
        ``{"api.get_note": {"note_id": 7}}``; otherwise by converter type
        (:data:`CONVERTER_SAMPLES`).
    :param limit_requests: the largest number of requests a rate-limit case may send; routes
        whose tightest limit admits more get no rate-limit case.
    :param foreign_origin: the origin of the preflight case (:data:`FOREIGN_ORIGIN`); when
        the app's CORS origins admit it (``*``, a catch-all pattern), no preflight case.
    """
    state = guard_state(app)
    config = state.config
    origin = foreign_origin or FOREIGN_ORIGIN
    cors_grants = state.cors is not None and bool(state.cors.headers_for(origin))
    cases: list[SecurityCase] = []
    for row in sorted(_rows(app, baseline), key=lambda r: (str(r["rule"]), list(r["methods"]))):
        rule, endpoint = str(row["rule"]), str(row["endpoint"])
        path = sample_path(rule, samples, endpoint)
        for method in row["methods"]:
            cases += _cases_for(row, rule, method, endpoint, path, config, limit_requests)
        if not cors_grants:
            cases.append(SecurityCase(rule, row["methods"][0], endpoint, "foreign_preflight", 0,
                                      path, f"preflight from {origin}", origin=origin))
    return cases


def _cases_for(row: Mapping[str, Any], rule: str, method: str, endpoint: str, path: str,
               config: Any, limit_requests: int) -> list[SecurityCase]:
    def case(check: str, expect: int, why: str, credential: _Credential | None = None,
             **more: Any) -> SecurityCase:
        return SecurityCase(rule, method, endpoint, check, expect, path, why, credential, **more)

    auth = list(row.get("auth") or ())
    role_rules = [(tuple(sorted(r["roles"])), str(r.get("require", "any")))
                  for r in row.get("role_rules") or ()]
    if "role_rules" not in row and row.get("roles"):
        role_rules = [(tuple(row["roles"]), "any")]
    all_roles = tuple(sorted({n for names, _ in role_rules for n in names}))
    if "scope_rules" in row:
        scope_rules = [tuple(sorted(group)) for group in row["scope_rules"]]
        key_only = tuple(sorted(row.get("api_key_scopes") or ()))
    else:
        scope_rules = [tuple(row.get("scopes") or ())] if row.get("scopes") else []
        key_only = ()
    token_scopes = tuple(sorted({s for group in scope_rules for s in group}))
    kind = "jwt" if "jwt" in auth else "api_key" if "api_key" in auth else None
    full: _Credential | None = None
    if kind is not None and not row.get("public"):
        scopes = token_scopes if kind == "jwt" else tuple(sorted(set(token_scopes) | set(key_only)))
        full = _Credential(kind, all_roles, scopes)
    out: list[SecurityCase] = []
    if row.get("required"):
        out.append(case("unauthenticated", 401, "no credential"))
    if full is not None and row.get("required"):
        for names, require in role_rules:
            lacking = {names[-1]} if require == "all" else set(names)
            held = tuple(r for r in all_roles if r not in lacking)
            if _holds(held, names, require):
                continue  # another rule's roles satisfy this one: nothing to prove alone
            out.append(case("missing_role", 403, f"{_kind_name(full.kind)} without role "
                            f"{', '.join(sorted(lacking))}", _Credential(full.kind, held, full.scopes)))
        for group in scope_rules:
            held_scopes = tuple(s for s in full.scopes if s not in group)
            out.append(case("missing_scope", 403, f"{_kind_name(full.kind)} without scope "
                            f"{', '.join(group)}", _Credential(full.kind, full.roles, held_scopes)))
        if key_only and "api_key" in auth:
            out.append(case("missing_api_key_scope", 403,
                            f"API key without scope {', '.join(key_only)}",
                            _Credential("api_key", all_roles, token_scopes)))
    refusal = ""
    if config.json_only and "form" not in (row.get("validate") or ()):
        refusal = "content_type"
    elif config.duplicate_params == "reject":
        refusal = "duplicate_parameter"
    admitted = _admitted(row.get("rate_limits") or ())
    if refusal and admitted is not None and admitted <= limit_requests:
        limits = "; ".join(row.get("rate_limits") or ())
        out.append(case("rate_limit", 429, f"over {limits}", full, admitted=admitted,
                        refusal=refusal))
    if "json" in (row.get("validate") or ()):
        if config.json_only:
            out.append(case("content_type", 415, "text/plain body", full))
        if config.reject_operator_keys:
            out.append(case("operator_key", 400, "$ key in the JSON body", full))
    return out


def _kind_name(kind: str) -> str:
    return "token" if kind == "jwt" else "API key"


def _holds(held: Sequence[str], names: Sequence[str], require: str) -> bool:
    if require == "all":
        return set(names) <= set(held)
    return bool(set(names) & set(held))


def _admitted(limits: Sequence[str]) -> int | None:
    """How many requests the route's tightest limit admits before refusing (``None``: no
    readable limit)."""
    counts = [p.amount // p.cost for p in map(parse_limit, limits) if p is not None]
    return min(counts) if counts else None


def apiguard_security_tests(app: Flask | Callable[[], Flask], **options: Any) -> Callable[..., None]:
    """A parametrised test function proving every route's policy by requests::

        # tests/test_security.py
        from flask_apiguard.testing import apiguard_security_tests
        from myapp import create_app

        test_security = apiguard_security_tests(create_app, baseline="apiguard.lock")

    ``app`` is a Flask app or a zero-argument factory (called once, when the module is
    collected). Each case resets the app's counters, then sends its request(s). The options
    are those of :func:`security_cases`.
    """
    target = app if isinstance(app, Flask) else app()
    cases = security_cases(target, **options)

    @pytest.mark.parametrize("apiguard_case", cases, ids=[c.id for c in cases])
    def test_apiguard_security(apiguard_case: SecurityCase) -> None:
        apiguard_case.run(target)

    return test_apiguard_security
