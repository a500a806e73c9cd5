"""The policy lockfile (``apiguard.lock``) and what changed since it was written.

A lock is the rows of ``flask apiguard routes --json`` plus the app-wide CORS settings the
rows only summarise (``cors`` is a yes/no per row; the origins are config). The file is
JSON, sorted and pretty-printed with a trailing newline, so it diffs well in review::

    {"cors": {"credentials": false, "origins": [...]}, "routes": [...], "version": 1}

:func:`compare` is a pure function over two locks: it reads no app and no file. Each
difference is a :class:`Change` whose ``kind`` is ``loosened`` (the check of
``--fail-on-loosen`` fails on these), ``tightened``, ``added``, ``removed`` or ``changed``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from limits import parse

#: The format written by :func:`dumps`; :func:`loads` refuses newer ones.
LOCK_VERSION = 1

_UPDATE_HINT = (
    "write it again with `flask apiguard routes --baseline FILE --update` and review the diff"
)
_ROW_KEYS = ("rule", "endpoint", "methods")


class LockfileError(ValueError):
    """A lockfile that cannot be read; the message is a sentence naming the file and the fix."""


@dataclass(frozen=True, slots=True)
class Lock:
    """What a lockfile holds: the route rows, and the app-wide CORS settings (``None`` when
    unknown, as in a bare ``routes --json`` list)."""

    routes: list[dict[str, Any]]
    cors: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One difference between the baseline and the app. ``rule`` is ``None`` for app-wide
    settings (CORS)."""

    kind: str
    rule: str | None
    methods: tuple[str, ...]
    endpoint: str
    what: str

    @property
    def loosens(self) -> bool:
        return self.kind == "loosened"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "rule": self.rule, "methods": list(self.methods),
                "endpoint": self.endpoint, "what": self.what, "loosens": self.loosens}

    def __str__(self) -> str:
        if self.rule is None:
            return f"{self.kind}: (app-wide): {self.what}"
        return f"{self.kind}: {','.join(self.methods)} {self.rule} ({self.endpoint}): {self.what}"


# -- the file -----------------------------------------------------------------------------------

def _sort_key(row: Mapping[str, Any]) -> tuple[str, str, list[str]]:
    return (str(row["rule"]), str(row["endpoint"]), list(row["methods"]))


def dumps(lock: Lock) -> str:
    """The text of a lockfile: sorted, two-space indented, one trailing newline."""
    document = {
        "version": LOCK_VERSION,
        "cors": lock.cors,
        "routes": sorted(lock.routes, key=_sort_key),
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def loads(text: str, source: str = "the lockfile") -> Lock:
    """Read a lockfile (or a bare ``routes --json`` list, which has no CORS settings).

    :raises LockfileError: with a sentence naming ``source`` and the fix.
    """
    def fail(problem: str) -> LockfileError:
        return LockfileError(f"{source} {problem}; {_UPDATE_HINT}.")

    if not text.strip():
        raise fail("is empty")
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise fail(f"is not valid JSON (line {getattr(exc, 'lineno', '?')})") from None
    except RecursionError:
        raise fail("is nested too deeply to be a lockfile") from None
    cors: dict[str, Any] | None = None
    routes: Any
    if isinstance(document, list):
        routes = document
    elif isinstance(document, dict):
        version = document.get("version")
        if version != LOCK_VERSION:
            raise fail(f"has version {version!r}, and this flask-apiguard reads version "
                               f"{LOCK_VERSION}")
        routes = document.get("routes")
        if not isinstance(routes, list):
            raise fail('has no "routes" list')
        raw_cors = document.get("cors")
        if raw_cors is not None and not (isinstance(raw_cors, dict)
                                         and isinstance(raw_cors.get("origins"), list)):
            raise fail('has a "cors" entry without an "origins" list')
        cors = raw_cors
    else:
        raise fail("is not a flask-apiguard lockfile (expected a JSON object)")
    for index, row in enumerate(routes):
        if not isinstance(row, dict) or not all(k in row for k in _ROW_KEYS):
            raise fail(f"entry {index} is not a route row (it needs rule, endpoint and "
                       "methods)")
        for name, value in row.items():
            check = _FIELDS.get(name)
            if check is not None and not check(value):
                raise fail(f"entry {index} has a {name!r} that is not what routes --json writes")
    return Lock(routes, cors)


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _valid_role_rules(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(rule, dict) and _strings(rule.get("roles"))
        and rule.get("require") in ("any", "all") for rule in value)


#: The type of every field ``routes --json`` writes (others are ignored when compared).
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "rule": lambda v: isinstance(v, str),
    "endpoint": lambda v: isinstance(v, str),
    "methods": _strings,
    **dict.fromkeys(("public", "optional", "required", "unprotected", "deprecated", "cors"),
                    lambda v: isinstance(v, bool)),
    **dict.fromkeys(("auth", "roles", "scopes", "api_key_scopes", "rate_limits", "validate"),
                    _strings),
    "role_rules": _valid_role_rules,
    "scope_rules": lambda v: isinstance(v, list) and all(_strings(group) for group in v),
    "sunset": lambda v: v is None or isinstance(v, str),
}


# -- rate limits as the rows write them ---------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LimitText:
    """One ``rate_limits`` entry of a row, read back: ``"5 per 15 minute (key=ip, cost=2)"``."""

    text: str
    amount: int
    seconds: int
    key: str = "auto"
    count: str = "all"
    scope: str | None = None
    cost: int = 1

    @property
    def burst(self) -> float:
        """Requests admitted at once (in one window)."""
        return self.amount / self.cost

    @property
    def rate(self) -> float:
        """Requests admitted per second, sustained."""
        return self.burst / self.seconds


_LIMIT_TEXT = re.compile(r"(?P<item>[^()]+?)(?: \((?P<notes>[^()]*)\))?")


def parse_limit(text: str) -> LimitText | None:
    """Read a row's rate limit back, or ``None`` when it is not in the rows' format."""
    match = _LIMIT_TEXT.fullmatch(text.strip())
    if match is None:
        return None
    try:
        item = parse(match["item"])
    except ValueError:
        return None
    notes: dict[str, str] = {}
    for note in filter(None, (match["notes"] or "").split(", ")):
        name, _, value = note.partition("=")
        notes[name] = value
    try:
        cost = int(notes.get("cost", "1"))
    except ValueError:
        return None
    return LimitText(text, item.amount, item.get_expiry(), notes.get("key", "auto"),
                     notes.get("count", "all"), notes.get("scope"), max(cost, 1))


# -- the comparison -----------------------------------------------------------------------------

def compare(baseline: Lock, current: Lock) -> list[Change]:
    """Every difference between ``baseline`` and ``current``, app-wide ones first, then by
    rule and method. Rows are compared per (rule, method); the same change on several methods
    of one rule is one :class:`Change`."""
    changes = _compare_cors(baseline.cors, current.cors)
    old, new = _by_method(baseline.routes), _by_method(current.routes)
    found: dict[tuple[str, str, str, str], list[str]] = {}
    for key in sorted(old.keys() | new.keys()):
        rule, method = key
        before, after = old.get(key), new.get(key)
        if after is None:
            assert before is not None
            items = [("removed", str(before["endpoint"]), "route removed")]
        elif before is None:
            items = [_added(after)]
        else:
            items = [(kind, str(after["endpoint"]), what) for kind, what in _compare_row(before, after)]
        for kind, endpoint, what in items:
            found.setdefault((rule, endpoint, kind, what), []).append(method)
    order = {"loosened": 0, "tightened": 1, "changed": 2, "added": 3, "removed": 4}
    for (rule, endpoint, kind, what), methods in sorted(
            found.items(), key=lambda item: (item[0][0], item[1], order[item[0][2]])):
        changes.append(Change(kind, rule, tuple(methods), endpoint, what))
    return changes


def _by_method(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Mapping[str, Any]]:
    table: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        for method in row["methods"]:
            table.setdefault((str(row["rule"]), str(method)), row)
    return table


def _access(row: Mapping[str, Any]) -> str:
    if row.get("public"):
        return "public"
    if row.get("required"):
        return "required"
    if row.get("optional"):
        return "optional"
    return "open"


def _summary(row: Mapping[str, Any]) -> str:
    access = _access(row)
    if access == "public":
        return "public"
    parts = [" | ".join(row.get("auth") or ()) or "no credential"]
    if access == "optional":
        parts.append("optional")
    if row.get("roles"):
        parts.append("roles " + ", ".join(row["roles"]))
    if row.get("scopes"):
        parts.append("scopes " + ", ".join(row["scopes"]))
    return ", ".join(parts)


def _added(row: Mapping[str, Any]) -> tuple[str, str, str]:
    endpoint = str(row["endpoint"])
    if _access(row) == "open":
        return ("loosened", endpoint,
                "new route, reachable without authentication and not declared open")
    return ("added", endpoint, f"new route ({_summary(row)})")


def _compare_row(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if old["endpoint"] != new["endpoint"]:
        out.append(("changed", f"endpoint renamed from {old['endpoint']} to {new['endpoint']}"))
    out += _compare_access(old, new)
    out += _compare_roles(_role_rules(old), _role_rules(new))
    out += _compare_scopes(old, new)
    out += _compare_limits(old.get("rate_limits") or [], new.get("rate_limits") or [])
    out += _compare_networks(old.get("networks"), new.get("networks"))
    lost_places = sorted(set(old.get("concurrency") or ()) - set(new.get("concurrency") or ()))
    new_places = sorted(set(new.get("concurrency") or ()) - set(old.get("concurrency") or ()))
    out += [("loosened", f"no longer limits concurrency to {text}") for text in lost_places]
    out += [("tightened", f"now limits concurrency to {text}") for text in new_places]
    lost = [loc for loc in old.get("validate") or () if loc not in (new.get("validate") or ())]
    gained = [loc for loc in new.get("validate") or () if loc not in (old.get("validate") or ())]
    out += [("loosened", f"no longer validates {loc}") for loc in lost]
    out += [("tightened", f"now validates {loc}") for loc in gained]
    return out


def _compare_networks(old: list[str] | None, new: list[str] | None) -> list[tuple[str, str]]:
    """``@allow_networks``: lifted loosens, added tightens, changed is reviewed."""
    if old == new:
        return []
    if new is None:
        return [("loosened", "no longer restricted to networks " + ", ".join(old or ()))]
    if old is None:
        return [("tightened", "now restricted to networks " + ", ".join(new))]
    gained = sorted(set(new) - set(old))
    if gained:
        return [("loosened", "now also reachable from " + ", ".join(gained))]
    return [("tightened", "no longer reachable from " + ", ".join(sorted(set(old) - set(new))))]


def _compare_access(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    before, after = _access(old), _access(new)
    out: list[tuple[str, str]] = []
    if before != after:
        if after == "public":
            # an undeclared open route declared @public opens nothing new
            kind = "changed" if before == "open" else "loosened"
            out.append((kind, "became public: credentials are no longer checked"))
        elif after == "optional" and before == "required":
            out.append(("loosened", "became optional: anonymous callers are allowed"))
        elif after == "open":
            out.append(("loosened",
                        "became reachable without authentication and is not declared open"))
        elif after == "required":
            out.append(("tightened", "no longer public" if before == "public"
                        else "now requires authentication"))
        else:  # public or open -> optional: credentials are now checked when sent
            out.append(("tightened", "now checks credentials when they are sent"))
    if "public" not in (before, after):
        old_auth, new_auth = set(old.get("auth") or ()), set(new.get("auth") or ())
        out += [("loosened", f"now also accepts {m}") for m in sorted(new_auth - old_auth)]
        out += [("tightened", f"no longer accepts {m}") for m in sorted(old_auth - new_auth)]
    return out


RoleRule = tuple[frozenset[str], str]


def _role_rules(row: Mapping[str, Any]) -> list[RoleRule]:
    rules = row.get("role_rules")
    if rules is None:  # a row without role_rules: its roles, any of them
        return [(frozenset(row.get("roles") or ()), "any")] if row.get("roles") else []
    return [(frozenset(r["roles"]), str(r.get("require", "any"))) for r in rules]


def _required_names(rules: Sequence[RoleRule]) -> set[str]:
    """Roles an identity must certainly hold to satisfy ``rules``."""
    names: set[str] = set()
    for group, require in rules:
        if require == "all" or len(group) == 1:
            names |= group
    return names


def _implied(rule: RoleRule, by: Sequence[RoleRule]) -> bool:
    """Does satisfying every rule of ``by`` guarantee ``rule``?"""
    group, require = rule
    if require == "all" or len(group) == 1:
        return group <= _required_names(by)
    return any((r == "any" and g <= group) or (r == "all" and g & group) for g, r in by)


def _names(group: Iterable[str]) -> str:
    return ", ".join(sorted(group))


def _compare_roles(old: Sequence[RoleRule], new: Sequence[RoleRule]) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    required_now = _required_names(new)
    mentioned = {name for group, _ in new for name in group}
    for rule in old:
        if _implied(rule, new):
            continue
        group, require = rule
        if require == "all" and len(group) > 1 and (group, "any") in new:
            out.append(("loosened", f'roles {_names(group)}: require changed from "all" to "any"'))
        elif (require == "all" or len(group) == 1) and not (group - required_now) & mentioned:
            missing = group - required_now
            word = "role" if len(missing) == 1 else "roles"
            out.append(("loosened", f"no longer requires {word} {_names(missing)}"))
        else:  # the names are still there, in a rule more roles satisfy
            now = "; ".join(f"{r} of {_names(g)}" for g, r in new)
            out.append(("loosened", f"role rule {require} of {_names(group)} is no longer "
                        f"enforced (now: {now})"))
    for rule in new:
        if not _implied(rule, old):
            group, require = rule
            word = "all" if require == "all" and len(group) > 1 else "any"
            out.append(("tightened", f"now requires {word} of {_names(group)}"))
    return out


def _scope_sets(row: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """The scopes a token must hold, and those an API key must hold."""
    if "scope_rules" not in row:  # an older row: one list for both
        scopes = set(row.get("scopes") or ())
        return scopes, scopes
    token = {name for group in row["scope_rules"] for name in group}
    return token, token | set(row.get("api_key_scopes") or ())


def _compare_scopes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[tuple[str, str]]:
    old_token, old_key = _scope_sets(old)
    new_token, new_key = _scope_sets(new)
    out: list[tuple[str, str]] = []
    for scope in sorted(old_token - new_token):
        if scope in new_key:
            out.append(("loosened", f"tokens no longer need scope {scope} (API keys still do)"))
        else:
            out.append(("loosened", f"no longer requires scope {scope}"))
    for scope in sorted(old_key - new_key - old_token):
        out.append(("loosened", f"API keys no longer need scope {scope}"))
    for scope in sorted(new_token - old_token):
        out.append(("tightened", f"now requires scope {scope}"))
    for scope in sorted(new_key - old_key - new_token):
        out.append(("tightened", f"API keys now need scope {scope}"))
    return out


def _compare_limits(old_texts: Sequence[str], new_texts: Sequence[str]) -> list[tuple[str, str]]:
    old = [parse_limit(t) or t for t in old_texts]
    new = [parse_limit(t) or t for t in new_texts]
    out: list[tuple[str, str]] = []
    # Unreadable entries compare as text.
    old_raw = [t for t in old if isinstance(t, str)]
    new_raw = [t for t in new if isinstance(t, str)]
    out += [("loosened", f"rate limit removed: {t}") for t in old_raw if t not in new_raw]
    out += [("tightened", f"rate limit added: {t}") for t in new_raw if t not in old_raw]
    # A limit is matched with one of the same counter (key and scope): one with the same
    # window first, then the nearest window.
    unmatched_old = [t for t in old if isinstance(t, LimitText)]
    unmatched_new = [t for t in new if isinstance(t, LimitText)]
    pairs: list[tuple[LimitText, LimitText]] = []
    for nearest in (False, True):
        for limit in sorted(unmatched_old, key=lambda t: t.seconds):
            same = [n for n in unmatched_new if (n.key, n.scope) == (limit.key, limit.scope)
                    and (nearest or n.seconds == limit.seconds)]
            if same:
                partner = min(same, key=lambda n: abs(n.seconds - limit.seconds))
                unmatched_old.remove(limit)
                unmatched_new.remove(partner)
                pairs.append((limit, partner))
    out += [("loosened", f"rate limit removed: {t.text}") for t in unmatched_old]
    out += [("tightened", f"rate limit added: {t.text}") for t in unmatched_new]
    for before, after in pairs:
        out += _compare_limit(before, after)
    return out


def _compare_limit(old: LimitText, new: LimitText) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    # More requests at once, or more per second sustained, is looser.
    looser = new.burst > old.burst or new.rate > old.rate
    tighter = new.burst < old.burst or new.rate < old.rate
    if looser:
        notes = []
        if new.cost < old.cost:
            notes.append(f"cost lowered from {old.cost} to {new.cost}")
        if new.burst > old.burst:
            notes.append(f"up to {new.burst:g} requests per window instead of {old.burst:g}")
        else:
            notes.append("a higher sustained rate")
        out.append(("loosened", f"rate limit raised: {old.text} -> {new.text} ({'; '.join(notes)})"))
    elif tighter:
        out.append(("tightened", f"rate limit lowered: {old.text} -> {new.text}"))
    if old.count == "all" and new.count == "failures":
        out.append(("loosened", f"rate limit {old.text} now counts only failed requests "
                    "(count=failures)"))
    elif old.count == "failures" and new.count == "all":
        out.append(("tightened", f"rate limit {old.text} now counts every request"))
    return out


def _compare_cors(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> list[Change]:
    if old is None or new is None:
        return []
    out: list[Change] = []
    before, after = list(old.get("origins") or ()), list(new.get("origins") or ())
    out += [Change("loosened", None, (), "", f"CORS origin added: {o}") for o in after if o not in before]
    if new.get("credentials") and not old.get("credentials"):
        out.append(Change("loosened", None, (), "", "CORS credentials are now allowed"))
    out += [Change("tightened", None, (), "", f"CORS origin removed: {o}") for o in before if o not in after]
    if old.get("credentials") and not new.get("credentials"):
        out.append(Change("tightened", None, (), "", "CORS credentials are no longer allowed"))
    return out
