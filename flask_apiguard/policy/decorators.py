"""The decorators. Each only records: it gives the view (or class) a new :class:`Policy`, a
copy of what it declared with its own declaration added, and checks it for contradictions.
Never the object in place: ``functools.wraps`` copies ``__dict__``, so a wrapper and the view
it wraps start out holding the same object."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any, overload

from limits import parse_many

from ..errors import ApiGuardConfigError
from ..networks import NetworkSet, parse_networks
from .declared import (
    KEY_KINDS,
    LOCATIONS,
    POLICY_ATTR,
    Deprecation,
    F,
    Policy,
    RateLimitSpec,
    T,
    ValidationSpec,
    get_policy,
    own_policy,
)

if TYPE_CHECKING:
    pass

def _view_name(target: Any) -> str:
    """How a view is named in an error message: its qualified name."""
    return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target)))


def _editable(target: Any) -> Policy:
    """A new copy of the policy ``target`` declares (or inherits), for a decorator to change
    and :func:`_record`. Never the object in place: ``functools.wraps`` copies ``__dict__``, so
    a wrapper and the view it wraps start out holding the same object, and a subclass sees its
    base's; changing it in place would change what the other function or class declares."""
    if not isinstance(target, type) and not callable(target):
        raise TypeError(f"flask-apiguard decorators apply to views, not to {target!r}.")
    # A class keeps only its own declarations (its bases' are merged when it is read); a
    # function starts from what it stands for (its own, or the function it wraps).
    current = own_policy(target) if isinstance(target, type) else get_policy(target)
    return current.copy() if current is not None else Policy()


def _record(target: T, policy: Policy) -> T:
    """Check ``policy`` for contradictions, then make it what ``target`` declares.

    :raises TypeError: when ``target`` is a proxy that keeps its attributes on the function it
        wraps (wrapt's ``FunctionWrapper`` and the like): recording there would change what
        that other function declares.
    """
    _check(policy, target)
    if not isinstance(target, type):
        _refuse_shared_attributes(target)
    setattr(target, POLICY_ATTR, policy)
    return target


def _refuse_shared_attributes(target: Any) -> None:
    try:
        own = vars(target)
    except TypeError:
        return
    inner = getattr(target, "__wrapped__", None)
    for _ in range(32):
        if inner is None:
            return
        try:
            shared = vars(inner) is own
        except TypeError:
            shared = False
        if shared:
            raise TypeError(
                f"{_view_name(target)}: this wrapper keeps its attributes on the function it "
                "wraps (a wrapt-style proxy), so a decorator here would change that function's "
                "policy too. Decorate the inner function, or wrap it with functools.wraps."
            )
        inner = getattr(inner, "__wrapped__", None)


def _check(policy: Policy, target: Any) -> None:
    name = _view_name(target)
    if policy.public and (policy.needs_identity or policy.methods or policy.optional):
        raise TypeError(
            f"{name}: @public cannot be combined with @require_jwt, @require_api_key, @roles "
            "or @scopes. Remove @public, or remove the authentication requirements."
        )
    if policy.optional and (policy.role_rules or policy.scope_rules or policy.api_key_scopes):
        raise TypeError(
            f"{name}: @require_jwt(optional=True) admits anonymous callers, so @roles/@scopes "
            "cannot apply. Drop optional=True, or check roles inside the view."
        )
    if policy.optional and "api_key" in policy.methods:
        raise TypeError(
            f"{name}: @require_jwt(optional=True) cannot be combined with @require_api_key."
        )


def public(view: F) -> F:
    """Declare ``view`` open to anonymous callers (exempt from default-deny).

    Credentials sent to a public view are ignored: not checked, not counted.
    """
    policy = _editable(view)
    policy.public = True
    return _record(view, policy)


@overload
def require_jwt(view: F, /) -> F: ...
@overload
def require_jwt(*, optional: bool = False) -> Callable[[F], F]: ...


def require_jwt(view: Any = None, /, *, optional: bool = False) -> Any:
    """Require a valid JWT bearer token.

    ``@require_jwt(optional=True)`` admits anonymous callers too: no token gives an anonymous
    identity, a valid token an authenticated one, an invalid token is still refused (401).
    """

    def record(target: F) -> F:
        policy = _editable(target)
        policy.methods.add("jwt")
        policy.optional = policy.optional or optional
        return _record(target, policy)

    return record(view) if view is not None else record


@overload
def require_api_key(view: F, /) -> F: ...
@overload
def require_api_key(*, scopes: Iterable[str] = ()) -> Callable[[F], F]: ...


def require_api_key(view: Any = None, /, *, scopes: Iterable[str] = ()) -> Any:
    """Require a valid API key (header ``APIGUARD_API_KEY_HEADER``) holding all ``scopes``.

    Stacked with ``@require_jwt``, either credential is accepted.
    """
    wanted = frozenset(_checked_names("require_api_key", scopes))

    def record(target: F) -> F:
        policy = _editable(target)
        policy.methods.add("api_key")
        policy.api_key_scopes |= wanted
        return _record(target, policy)

    return record(view) if view is not None else record


def roles(*names: str, require: str = "any") -> Callable[[F], F]:
    """Require any (or with ``require="all"``, all) of the role ``names``; implies authentication."""
    if require not in ("any", "all"):
        raise TypeError(f'@roles(require=...) must be "any" or "all", not {require!r}.')
    wanted = frozenset(_checked_names("roles", names))
    if not wanted:
        raise TypeError("@roles needs at least one role name.")

    def record(target: F) -> F:
        policy = _editable(target)
        policy.role_rules.append((wanted, require))
        return _record(target, policy)

    return record


def scopes(*names: str) -> Callable[[F], F]:
    """Require all the scope ``names`` (API key scopes or the JWT ``scope`` claim)."""
    wanted = frozenset(_checked_names("scopes", names))
    if not wanted:
        raise TypeError("@scopes needs at least one scope name.")

    def record(target: F) -> F:
        policy = _editable(target)
        policy.scope_rules.append(wanted)
        return _record(target, policy)

    return record


def rate_limit(
    limit: str | Callable[[], str],
    key: str | Callable[[], str] = "auto",
    count: str = "all",
    scope: str | None = None,
    cost: int = 1,
    exempt_when: Callable[[], object] | None = None,
) -> Callable[[F], F]:
    """Limit how often the view may be called. Stackable.

    :param limit: ``"10/minute"``, ``"5 per 15 minutes"``, or several joined by ``;``; or a
        zero-argument callable returning such a string per request (it may read
        ``current_identity``: a limit per plan or tenant). Each distinct string is parsed
        once. A callable that raises or returns anything but a limit string answers 500.
    :param key: ``"auto"`` (the subject when authenticated, else the client IP), ``"ip"``,
        ``"user"``, ``"api_key"`` or a zero-argument callable returning a string.
    :param count: ``"all"``, or ``"failures"`` to count only responses with status >= 400.
    :param scope: a name that shares one counter between every view that uses it.
    :param cost: how much one request uses up.
    :param exempt_when: a zero-argument callable; when it returns true this limit is skipped
        for the request. One that raises answers 500 (never a silent exemption).
    """
    from ..readers import check_limit_string

    if isinstance(limit, str):
        check_limit_string(limit, f"@rate_limit({limit!r})")
        items = tuple(parse_many(limit))
    elif callable(limit):
        items = ()
    else:
        raise ApiGuardConfigError(
            f"@rate_limit({limit!r}): use a limit string such as \"10/minute\" or a "
            "zero-argument callable returning one."
        )
    if exempt_when is not None and not callable(exempt_when):
        raise ApiGuardConfigError(
            f"@rate_limit(exempt_when={exempt_when!r}): use a zero-argument callable."
        )
    if not (callable(key) or key in KEY_KINDS):
        raise ApiGuardConfigError(
            f"@rate_limit(key={key!r}): use one of {', '.join(KEY_KINDS)} or a callable."
        )
    if count not in ("all", "failures"):
        raise ApiGuardConfigError(f'@rate_limit(count={count!r}): use "all" or "failures".')
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1:
        raise ApiGuardConfigError(f"@rate_limit(cost={cost!r}): use a whole number >= 1.")
    if scope is not None and (not isinstance(scope, str) or not scope or "/" in scope):
        raise ApiGuardConfigError(
            f"@rate_limit(scope={scope!r}): use a non-empty name without '/'."
        )
    spec = RateLimitSpec(limit, items, key, count, scope, cost, exempt_when)

    def record(target: F) -> F:
        policy = _editable(target)
        policy.rate_limits.append(spec)
        return _record(target, policy)

    return record


def allow_networks(*cidrs: str) -> Callable[[F], F]:
    """Admit only clients whose address is in one of the networks ``cidrs`` (``"10.0.0.0/8"``,
    ``"192.0.2.7"``, ``"2001:db8::/32"``); others get 403 ``forbidden`` right after routing,
    before any credential is read. The address is the one every layer uses
    (``APIGUARD_TRUSTED_PROXIES``). On a class and one of its methods both must admit.

    :raises TypeError: at import, for no network or one that is not a network.
    """
    if not cidrs:
        raise TypeError("@allow_networks needs at least one network, such as '10.0.0.0/8'.")
    try:
        networks = NetworkSet(parse_networks(list(cidrs), "@allow_networks"))
    except ValueError as exc:
        raise TypeError(str(exc)) from None

    def record(target: F) -> F:
        policy = _editable(target)
        if policy.networks and _declared_here(target):
            raise TypeError(f"{_view_name(target)}: @allow_networks is declared twice; list "
                            "every network in one @allow_networks(...).")
        policy.networks.append(networks)
        return _record(target, policy)

    return record


def concurrency_limit(n: int, key: str | Callable[[], str] = "auto") -> Callable[[F], F]:
    """Allow at most ``n`` requests of one client in flight on the view at once (nginx's
    ``limit_conn``); one more gets 429 ``rate_limit_exceeded`` with ``Retry-After: 1``.

    A request holds its place from step 9 until its response starts (or it fails, or its
    client goes away); with Redis the places are shared by every worker, and a place a dead
    worker never gave back expires after 60 seconds.

    :param n: how many requests at once, a whole number >= 1.
    :param key: whose requests share the places, as ``@rate_limit``'s ``key``: ``"auto"``,
        ``"ip"``, ``"user"``, ``"api_key"`` or a zero-argument callable returning a string.
    :raises TypeError: at import, for a bad ``n`` or ``key``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TypeError(f"@concurrency_limit({n!r}): use a whole number >= 1.")
    if not (callable(key) or key in KEY_KINDS):
        raise TypeError(
            f"@concurrency_limit(key={key!r}): use one of {', '.join(KEY_KINDS)} or a callable."
        )

    def record(target: F) -> F:
        policy = _editable(target)
        policy.concurrency.append((n, key))
        return _record(target, policy)

    return record


def _declared_here(target: Any) -> bool:
    """Whether ``target`` itself (not a base class) holds its policy."""
    if isinstance(target, type):
        return POLICY_ATTR in vars(target)
    return True


def rate_limit_exempt(view: F) -> F:
    """Exempt ``view`` from every rate limit, the default one included."""
    policy = _editable(view)
    policy.rate_limit_exempt = True
    return _record(view, policy)


def validate(schema: Any, location: str = "json", arg_name: str | None = None) -> Callable[[F], F]:
    """Load and validate request data with a marshmallow schema before the view runs.

    :param schema: a ``Schema`` class, a ``Schema`` instance or a dict of fields (the schema is
        built once, here).
    :param location: ``json``, ``query``, ``form``, ``headers`` or ``path``.
    :param arg_name: the keyword the loaded data is passed as (default ``<location>_data``).

    Like every decorator here it only records: the pipeline loads the data and passes it to the
    view as a keyword argument (through the request's view arguments), so it works above or
    below the route decorator and on async views. Unknown fields are refused in every location
    but ``headers`` (a schema's own ``Meta.unknown`` wins). Failures answer 400
    ``validation_error`` with ``errors`` per field.
    """
    from ..layers.validation import build_schema

    if location not in LOCATIONS:
        raise TypeError(f"@validate(location={location!r}): use one of {', '.join(LOCATIONS)}.")
    name = arg_name or f"{location}_data"
    if not name.isidentifier():
        raise TypeError(f"@validate(arg_name={name!r}) must be a valid Python identifier.")
    built, list_fields = build_schema(schema, location)
    spec = ValidationSpec(location, built, name, list_fields)

    def record(view: F) -> F:
        if isinstance(view, type):
            raise TypeError(
                f"@validate applies to a view function or a MethodView method, not to the class "
                f"{view.__qualname__}."
            )
        policy = _editable(view)
        if location in policy.validations:
            raise TypeError(f"{_view_name(view)}: @validate(location={location!r}) is declared twice.")
        if any(v.arg_name == name for v in policy.validations.values()):
            raise TypeError(f"{_view_name(view)}: two @validate use the argument name {name!r}.")
        policy.validations[location] = spec
        return _record(view, policy)

    return record


@overload
def deprecated(view: F, /) -> F: ...
@overload
def deprecated(sunset: datetime | date | str | None = None, link: str | None = None,
               replacement: str | None = None, *,
               since: datetime | date | str | None = None) -> Callable[[F], F]: ...


def deprecated(sunset: Any = None, link: str | None = None, replacement: str | None = None, *,
               since: datetime | date | str | None = None) -> Any:
    """Declare the view deprecated: its responses say so, and after ``sunset`` it answers 410.

    Every response of the view carries ``Deprecation: @<since>`` (RFC 9745; ``@0``, "already
    deprecated", without ``since``), ``Sunset: <HTTP-date>`` (RFC 8594) when ``sunset`` is
    given, and a ``Link`` with ``rel="deprecation"`` (``link``) and ``rel="successor-version"``
    (``replacement``). From the sunset on, the pipeline answers 410 ``gone`` before
    authentication (unless ``APIGUARD_SUNSET_ENFORCE`` is False), and the OpenAPI document
    marks the operation ``deprecated: true``. Each call is announced on the
    :data:`~flask_apiguard.signals.deprecated_called` signal.

    :param sunset: when the view stops answering: an aware :class:`~datetime.datetime`, or
        an ISO 8601 date (``"2026-06-30"``, midnight UTC) or date-time with an offset.
    :param link: a URL documenting the deprecation.
    :param replacement: the URL (or path) of the successor.
    :param since: when the deprecation took (or takes) effect, as ``sunset``; not after it.
    :raises TypeError: at import, for a naive datetime, a malformed date or URL, or a
        ``since`` after the ``sunset``.

    ``@deprecated`` without arguments works too.
    """
    if callable(sunset):  # bare @deprecated
        return deprecated()(sunset)
    declared = Deprecation(
        sunset=_aware("sunset", sunset),
        link=_uri("link", link),
        replacement=_uri("replacement", replacement),
        since=_aware("since", since),
    )
    if declared.since is not None and declared.sunset is not None \
            and declared.since > declared.sunset:
        raise TypeError("@deprecated(since=...) is after the sunset: a view is deprecated before "
                        "it goes away. Move since= earlier or the sunset later.")

    def record(target: F) -> F:
        policy = _editable(target)
        policy.deprecation = declared
        return _record(target, policy)

    return record


def _aware(name: str, value: Any) -> datetime | None:
    """``value`` (an aware datetime, a date or an ISO 8601 string) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            value = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
        except ValueError:
            raise TypeError(
                f"@deprecated({name}={text!r}) is not an ISO 8601 date: write '2026-06-30' or "
                "'2026-06-30T12:00:00+00:00'."
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise TypeError(
                f"@deprecated({name}={value.isoformat()!r}) is a naive datetime: its moment "
                "depends on the server's time zone. Give it a tzinfo, e.g. "
                "datetime(2026, 6, 30, tzinfo=timezone.utc)."
            )
        return value.astimezone(UTC).replace(microsecond=0)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise TypeError(
        f"@deprecated({name}=...) takes an aware datetime or an ISO 8601 date string, "
        f"not {type(value).__name__}."
    )


def _uri(name: str, value: Any) -> str | None:
    """A URI reference fit for a ``Link`` header (no spaces, controls, quotes or ``<>``)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value or not value.isascii() or any(
        ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch in '<>"' for ch in value
    ):
        # a header value must be ASCII: gunicorn refuses anything else (a 500 on every call)
        raise TypeError(
            f"@deprecated({name}={value!r}) must be an ASCII URL or path (percent-encode other "
            "characters) without spaces, quotes or angle brackets."
        )
    return value


def _checked_names(decorator: str, names: Iterable[str]) -> list[str]:
    """The role or scope ``names`` given to ``@decorator``, each a non-empty string."""
    if isinstance(names, str):
        names = [names]
    out = list(names)
    for item in out:
        if not isinstance(item, str) or not item:
            raise TypeError(f"@{decorator}: every name must be a non-empty string, got {item!r}.")
    return out


