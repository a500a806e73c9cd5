"""The policy lockfile: its format, and every kind of change ``compare`` tells apart."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flask_apiguard.lockfile import (
    LOCK_VERSION,
    Change,
    Lock,
    LockfileError,
    compare,
    dumps,
    loads,
    parse_limit,
)


def route(rule: str = "/api/things", methods: tuple[str, ...] = ("GET",), **policy: Any) -> dict[str, Any]:
    """A ``routes --json`` row: a JWT-protected route with no roles, scopes, limits or schema,
    changed by ``policy``."""
    row: dict[str, Any] = {
        "rule": rule, "endpoint": rule.strip("/").replace("/", "."), "methods": list(methods),
        "public": False, "optional": False, "required": True, "auth": ["jwt"],
        "roles": [], "role_rules": [], "scopes": [], "scope_rules": [], "api_key_scopes": [],
        "rate_limits": ["100 per 15 minute"], "validate": [], "cors": False, "unprotected": False,
    }
    row.update(policy)
    if "role_rules" in policy and "roles" not in policy:
        row["roles"] = sorted({n for r in row["role_rules"] for n in r["roles"]})
    if "scope_rules" in policy and "scopes" not in policy:
        row["scopes"] = sorted({n for r in row["scope_rules"] for n in r} | set(row["api_key_scopes"]))
    return row


def diff(old: dict[str, Any] | list[dict[str, Any]], new: dict[str, Any] | list[dict[str, Any]],
         **cors: Any) -> list[Change]:
    olds = old if isinstance(old, list) else [old]
    news = new if isinstance(new, list) else [new]
    return compare(Lock(olds, cors.get("old_cors")), Lock(news, cors.get("new_cors")))


def loosened(changes: list[Change]) -> list[str]:
    return [c.what for c in changes if c.loosens]


def tightened(changes: list[Change]) -> list[str]:
    return [c.what for c in changes if c.kind == "tightened"]


def test_an_unchanged_policy_has_no_changes() -> None:
    assert diff(route(), route()) == []


# -- access -----------------------------------------------------------------------------------

def test_becoming_public_loosens() -> None:
    changes = diff(route(), route(public=True, required=False, auth=[], rate_limits=[]))
    assert any("became public" in w for w in loosened(changes))
    [change] = [c for c in changes if "became public" in c.what]
    assert (change.rule, change.methods, change.endpoint) == ("/api/things", ("GET",), "api.things")
    assert str(change).startswith("loosened: GET /api/things (api.things): became public")


def test_becoming_optional_loosens() -> None:
    changes = diff(route(), route(optional=True, required=False))
    assert loosened(changes) == ["became optional: anonymous callers are allowed"]


def test_becoming_undeclared_open_loosens() -> None:
    changes = diff(route(), route(required=False, unprotected=True))
    assert loosened(changes) == ["became reachable without authentication and is not declared open"]


def test_requiring_authentication_again_tightens() -> None:
    changes = diff(route(optional=True, required=False), route())
    assert loosened(changes) == [] and tightened(changes) == ["now requires authentication"]
    changes = diff(route(public=True, required=False, auth=[]), route())
    assert loosened(changes) == [] and tightened(changes) == ["no longer public"]


def test_accepting_another_credential_loosens_and_dropping_one_tightens() -> None:
    assert loosened(diff(route(), route(auth=["api_key", "jwt"]))) == ["now also accepts api_key"]
    assert tightened(diff(route(auth=["api_key", "jwt"]), route())) == ["no longer accepts api_key"]


# -- roles and scopes -------------------------------------------------------------------------

def rule(*names: str, require: str = "any") -> dict[str, Any]:
    return {"roles": sorted(names), "require": require}


def test_losing_a_role_loosens() -> None:
    changes = diff(route(role_rules=[rule("admin")]), route())
    assert loosened(changes) == ["no longer requires role admin"]


def test_losing_one_role_of_an_all_rule_loosens() -> None:
    changes = diff(route(role_rules=[rule("admin", "owner", require="all")]),
                   route(role_rules=[rule("admin", require="all")]))
    assert loosened(changes) == ["no longer requires role owner"]


def test_require_all_becoming_any_loosens() -> None:
    changes = diff(route(role_rules=[rule("admin", "owner", require="all")]),
                   route(role_rules=[rule("admin", "owner", require="any")]))
    assert loosened(changes) == ['roles admin, owner: require changed from "all" to "any"']


def test_an_any_rule_admitting_more_roles_loosens() -> None:
    changes = diff(route(role_rules=[rule("admin")]), route(role_rules=[rule("admin", "user")]))
    assert loosened(changes) == ["role rule any of admin is no longer enforced (now: any of admin, user)"]


def test_narrower_role_rules_tighten() -> None:
    changes = diff(route(role_rules=[rule("admin", "user")]), route(role_rules=[rule("admin")]))
    assert loosened(changes) == [] and tightened(changes) == ["now requires any of admin"]
    changes = diff(route(role_rules=[rule("admin", "owner")]),
                   route(role_rules=[rule("admin", "owner", require="all")]))
    assert loosened(changes) == [] and tightened(changes) == ["now requires all of admin, owner"]


def test_moving_a_role_into_an_all_rule_keeps_it_enforced() -> None:
    assert loosened(diff(route(role_rules=[rule("admin")]),
                         route(role_rules=[rule("admin", "ops", require="all")]))) == []


def test_losing_a_scope_loosens() -> None:
    changes = diff(route(scope_rules=[["notes:read", "notes:write"]]), route(scope_rules=[["notes:read"]]))
    assert loosened(changes) == ["no longer requires scope notes:write"]
    assert tightened(diff(route(), route(scope_rules=[["notes:read"]]))) == ["now requires scope notes:read"]


def test_a_scope_left_only_to_api_keys_loosens_for_tokens() -> None:
    changes = diff(route(auth=["api_key", "jwt"], scope_rules=[["reports:read"]]),
                   route(auth=["api_key", "jwt"], api_key_scopes=["reports:read"],
                         scopes=["reports:read"]))
    assert loosened(changes) == ["tokens no longer need scope reports:read (API keys still do)"]


def test_losing_an_api_key_scope_loosens() -> None:
    changes = diff(route(auth=["api_key"], api_key_scopes=["reports:read"], scopes=["reports:read"]),
                   route(auth=["api_key"]))
    assert loosened(changes) == ["API keys no longer need scope reports:read"]


def test_rows_of_an_older_lock_without_scope_rules_compare_by_scopes() -> None:
    old = route(scopes=["notes:read"])
    del old["scope_rules"], old["api_key_scopes"]
    assert loosened(diff(old, route())) == ["no longer requires scope notes:read"]


# -- rate limits ------------------------------------------------------------------------------

def limited(*limits: str) -> dict[str, Any]:
    return route(rate_limits=list(limits))


def test_parse_limit_reads_the_row_text() -> None:
    parsed = parse_limit("5 per 15 minute (key=ip, count=failures, scope=login, cost=2)")
    assert parsed is not None
    assert (parsed.amount, parsed.seconds, parsed.key, parsed.count, parsed.scope, parsed.cost) == \
        (5, 900, "ip", "failures", "login", 2)
    plain = parse_limit("10 per 1 hour")
    assert plain is not None
    assert (plain.amount, plain.seconds, plain.key, plain.count) == (10, 3600, "auto", "all")
    assert parse_limit("not a limit") is None


@pytest.mark.parametrize(("old", "new"), [
    ("10 per 1 minute", "20 per 1 minute"),   # higher amount
    ("10 per 1 hour", "10 per 1 minute"),     # the same amount in a shorter window: a higher rate
    ("10 per 1 minute", "100 per 1 hour"),    # a lower rate, but bursts of 100 instead of 10
    ("10 per 1 minute (cost=5)", "10 per 1 minute (cost=2)"),  # cost lowered
])
def test_a_raised_limit_loosens(old: str, new: str) -> None:
    [what] = loosened(diff(limited(old), limited(new)))
    assert what.startswith(f"rate limit raised: {old} -> {new}")


@pytest.mark.parametrize(("old", "new"), [
    ("20 per 1 minute", "10 per 1 minute"),
    ("10 per 1 minute", "10 per 1 hour"),     # the same amount in a longer window: a lower rate
    ("10 per 1 minute", "10 per 1 minute (cost=2)"),
])
def test_a_lowered_limit_tightens(old: str, new: str) -> None:
    changes = diff(limited(old), limited(new))
    assert loosened(changes) == [] and tightened(changes) == [f"rate limit lowered: {old} -> {new}"]


def test_cost_lowered_is_named() -> None:
    [what] = loosened(diff(limited("10 per 1 minute (cost=5)"), limited("10 per 1 minute")))
    assert "cost lowered from 5 to 1" in what


def test_a_removed_limit_loosens_and_an_added_one_tightens() -> None:
    assert loosened(diff(limited("5 per 1 minute", "100 per 1 day"), limited("100 per 1 day"))) == \
        ["rate limit removed: 5 per 1 minute"]
    assert loosened(diff(limited("5 per 1 minute"), limited())) == ["rate limit removed: 5 per 1 minute"]
    assert tightened(diff(limited("100 per 1 day"), limited("5 per 1 minute", "100 per 1 day"))) == \
        ["rate limit added: 5 per 1 minute"]


def test_counting_only_failures_loosens_and_counting_all_tightens() -> None:
    assert loosened(diff(limited("5 per 1 minute"), limited("5 per 1 minute (count=failures)"))) == \
        ["rate limit 5 per 1 minute now counts only failed requests (count=failures)"]
    assert tightened(diff(limited("5 per 1 minute (count=failures)"), limited("5 per 1 minute"))) == \
        ["rate limit 5 per 1 minute (count=failures) now counts every request"]


def test_a_changed_limit_key_loosens_as_a_removal() -> None:
    changes = diff(limited("5 per 1 minute (key=ip)"), limited("5 per 1 minute (key=user)"))
    assert loosened(changes) == ["rate limit removed: 5 per 1 minute (key=ip)"]
    assert tightened(changes) == ["rate limit added: 5 per 1 minute (key=user)"]


# -- validation, routes, CORS -----------------------------------------------------------------

def test_dropping_a_schema_loosens() -> None:
    assert loosened(diff(route(validate=["json"]), route())) == ["no longer validates json"]
    assert tightened(diff(route(), route(validate=["query"]))) == ["now validates query"]


def test_a_new_undeclared_route_loosens() -> None:
    new = route("/api/debug", required=False, unprotected=True)
    changes = diff([route()], [route(), new])
    assert [(c.rule, c.what) for c in changes if c.loosens] == \
        [("/api/debug", "new route, reachable without authentication and not declared open")]


def test_a_new_declared_route_is_listed_without_failing() -> None:
    changes = diff([route()], [route(), route("/api/admin", role_rules=[rule("admin")])])
    assert [(c.kind, c.rule, c.what) for c in changes] == \
        [("added", "/api/admin", "new route (jwt, roles admin)")]
    changes = diff([route()], [route(), route("/api/open", public=True, required=False, auth=[])])
    assert [(c.kind, c.what) for c in changes] == [("added", "new route (public)")]


def test_a_removed_route_is_listed_without_failing() -> None:
    changes = diff([route(), route("/api/old")], [route()])
    assert [(c.kind, c.rule, c.loosens) for c in changes] == [("removed", "/api/old", False)]


def test_methods_of_one_row_are_compared_one_by_one() -> None:
    old = route(methods=("GET", "POST"), role_rules=[rule("admin")])
    new = [route(methods=("GET",), role_rules=[rule("admin")]), route(methods=("POST",))]
    [change] = diff(old, new)
    assert (change.methods, change.what) == (("POST",), "no longer requires role admin")


def test_the_same_change_on_several_methods_is_one_line() -> None:
    [change] = diff(route(methods=("GET", "POST"), role_rules=[rule("admin")]),
                    route(methods=("GET", "POST")))
    assert change.methods == ("GET", "POST")


def test_a_renamed_endpoint_is_listed_without_failing() -> None:
    [change] = diff(route(endpoint="old"), route(endpoint="new"))
    assert (change.kind, change.what) == ("changed", "endpoint renamed from old to new")


def test_a_new_cors_origin_loosens() -> None:
    old = {"origins": ["https://app.example.com"], "credentials": False}
    new = {"origins": ["https://app.example.com", "re:https://.*\\.example\\.com"], "credentials": False}
    changes = diff(route(), route(), old_cors=old, new_cors=new)
    assert [(c.rule, c.what) for c in changes if c.loosens] == \
        [(None, "CORS origin added: re:https://.*\\.example\\.com")]
    assert str(changes[0]).startswith("loosened: (app-wide): CORS origin added")
    assert tightened(diff(route(), route(), old_cors=new, new_cors=old)) == \
        ["CORS origin removed: re:https://.*\\.example\\.com"]


def test_allowing_cors_credentials_loosens() -> None:
    changes = diff(route(), route(), old_cors={"origins": ["https://a.example"], "credentials": False},
                   new_cors={"origins": ["https://a.example"], "credentials": True})
    assert loosened(changes) == ["CORS credentials are now allowed"]


def test_an_old_bare_list_lock_skips_the_cors_comparison() -> None:
    assert diff(route(), route(), old_cors=None, new_cors={"origins": ["*"], "credentials": False}) == []


# -- the file -----------------------------------------------------------------------------------

def test_dumps_is_sorted_pretty_and_ends_with_a_newline() -> None:
    rows = [route("/b"), route("/a", methods=("POST",)), route("/a")]
    text = dumps(Lock(rows, {"origins": [], "credentials": False}))
    assert text.endswith("}\n") and not text.endswith("\n\n")
    document = json.loads(text)
    assert document["version"] == LOCK_VERSION
    assert [(r["rule"], r["methods"]) for r in document["routes"]] == \
        [("/a", ["GET"]), ("/a", ["POST"]), ("/b", ["GET"])]
    assert text == json.dumps(document, indent=2, sort_keys=True) + "\n"
    assert loads(text) == Lock(document["routes"], {"origins": [], "credentials": False})


def test_a_bare_list_of_rows_is_a_lock_without_cors() -> None:
    assert loads(json.dumps([route()])) == Lock([route()], None)


@pytest.mark.parametrize(("text", "message"), [
    ("", "is empty"),
    ("{not json", "is not valid JSON"),
    ('{"version": 99, "routes": []}', "version 99"),
    ('{"version": 1}', 'has no "routes" list'),
    ('{"version": 1, "routes": [{"rule": "/x"}]}', "is not a route row"),
    ('"text"', "is not a flask-apiguard lockfile"),
])
def test_loads_refuses_a_corrupt_file_with_a_sentence(text: str, message: str) -> None:
    with pytest.raises(LockfileError, match=message) as info:
        loads(text, "apiguard.lock")
    assert str(info.value).startswith("apiguard.lock ")
    assert "--update" in str(info.value)


@pytest.mark.parametrize(("field", "value"), [
    ("role_rules", [5]), ("role_rules", [{"roles": ["a"], "require": "some"}]),
    ("scope_rules", [None]), ("auth", 7), ("validate", 3), ("rate_limits", [5]),
    ("roles", "admin"), ("public", "yes"), ("methods", "GET"),
])
def test_loads_refuses_a_row_field_of_the_wrong_type(field: str, value: Any) -> None:
    # A crafted baseline crashed compare() with a traceback (exit 1, read as "loosened").
    row = {"rule": "/b", "endpoint": "b", "methods": ["GET"], field: value}
    with pytest.raises(LockfileError, match=repr(field)):
        loads(json.dumps({"version": 1, "routes": [row]}))


def test_loads_refuses_a_document_nested_too_deeply() -> None:
    with pytest.raises(LockfileError, match="nested too deeply"):
        loads("[" * 100_000 + "]" * 100_000)


# -- @allow_networks ----------------------------------------------------------------------------

def test_lifting_allow_networks_loosens() -> None:
    assert loosened(diff(route(networks=["10.8.0.0/16"]), route(networks=None))) == [
        "no longer restricted to networks 10.8.0.0/16"]
    # a row of a lock written before the field existed is unrestricted
    assert diff(route(), route(networks=None)) == []


def test_adding_allow_networks_tightens() -> None:
    assert tightened(diff(route(), route(networks=["10.8.0.0/16"]))) == [
        "now restricted to networks 10.8.0.0/16"]


def test_a_wider_network_list_loosens_and_a_narrower_one_tightens() -> None:
    narrow, wide = route(networks=["10.8.0.0/16"]), route(networks=["10.8.0.0/16", "0.0.0.0/0"])
    assert loosened(diff(narrow, wide)) == ["now also reachable from 0.0.0.0/0"]
    assert tightened(diff(wide, narrow)) == ["no longer reachable from 0.0.0.0/0"]


def test_losing_a_concurrency_limit_loosens() -> None:
    held, free = route(concurrency=["2 in flight (key=ip)"]), route(concurrency=[])
    assert loosened(diff(held, free)) == ["no longer limits concurrency to 2 in flight (key=ip)"]
    assert tightened(diff(free, held)) == ["now limits concurrency to 2 in flight (key=ip)"]
