"""Which counters a request uses (step 9), as :class:`LimitProbe` values.

Each view has its own counters (the view's endpoint is part of the key) unless ``scope=``
names a shared one. A counter is keyed by what ``key=`` says: the authenticated subject, the
client IP (IPv6 grouped by /64, resolved through ``APIGUARD_TRUSTED_PROXIES`` so a forged
``X-Forwarded-For`` never moves a client to a fresh bucket), the API key id, or a callable's
string. Counter keys are the ones :mod:`limits` builds (``RateLimitItem.key_for``), so limits'
own strategies read the same counters.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from limits import RateLimitItem, RateLimitItemPerMinute, parse_many

from ..identity import Identity


@functools.lru_cache(maxsize=16384)
def limits_key(item: RateLimitItem, identifiers: tuple[str, ...]) -> str:
    """The counter key :mod:`limits` builds for ``item`` and ``identifiers`` (``key_for``)."""
    return item.key_for(*identifiers)


@dataclass(frozen=True, slots=True)
class LimitProbe:
    """One limit to check for one request: ``hit`` consumes, otherwise only tests."""

    item: RateLimitItem
    identifiers: tuple[str, ...]
    cost: int = 1
    hit: bool = True
    key: str = ""
    #: The window length in seconds (``item.get_expiry()``, read once).
    expiry: int = field(default=0, compare=False)
    #: A ``@concurrency_limit``: ``item.amount`` places in flight, no window counted.
    concurrent: bool = False

    def __post_init__(self) -> None:
        if not self.key:
            object.__setattr__(self, "key", limits_key(self.item, self.identifiers))
        object.__setattr__(self, "expiry", self.item.get_expiry())


NAMESPACE = "apiguard"


@dataclass(frozen=True, slots=True, eq=False)
class CompiledLimit:
    """One limit item of a view, ready to be turned into a probe per request."""

    item: RateLimitItem
    counter: str
    key: str | Callable[[], str]
    cost: int
    failures_only: bool
    text: str
    #: From a ``limit=`` callable: its counter leaves the amount out, so a client whose plan
    #: changes keeps its count.
    dynamic: bool = False
    #: A ``@concurrency_limit`` (``item.amount`` requests in flight; the item's window unused).
    concurrent: bool = False


class Declared(Protocol):
    """What one ``@rate_limit`` recorded (``policy.RateLimitSpec``)."""

    @property
    def limit(self) -> str | Callable[[], str]: ...
    @property
    def items(self) -> tuple[RateLimitItem, ...]: ...
    @property
    def key(self) -> str | Callable[[], str]: ...
    @property
    def count(self) -> str: ...
    @property
    def scope(self) -> str | None: ...
    @property
    def cost(self) -> int: ...
    @property
    def exempt_when(self) -> Callable[[], object] | None: ...


def compile_limits(declared: Sequence[Declared], endpoint: str,
                   default: str | None) -> tuple[CompiledLimit, ...]:
    """The limits of one endpoint: its declared ones, or the default when it declares none."""
    if not declared:
        if default is None:
            return ()
        return tuple(
            CompiledLimit(item, f"view:{endpoint}", "auto", 1, False, default)
            for item in parse_many(default)
        )
    compiled: list[CompiledLimit] = []
    for spec in declared:
        if not isinstance(spec.limit, str):
            continue  # computed per request: see compile_sources
        counter = f"scope:{spec.scope}" if spec.scope else f"view:{endpoint}"
        compiled.extend(
            CompiledLimit(item, counter, spec.key, spec.cost, spec.count == "failures", spec.limit)
            for item in spec.items
        )
    return tuple(compiled)


class LimitError(Exception):
    """A ``limit=`` or ``exempt_when=`` callable failed: the request is answered 500, never
    let through unlimited."""


@dataclass(frozen=True, slots=True, eq=False)
class LimitSource:
    """One ``@rate_limit`` of a view whose limits are decided per request: by a ``limit=``
    callable (``limit`` set; ``compiled`` empty) or skipped when ``exempt_when()`` is true."""

    compiled: tuple[CompiledLimit, ...]
    limit: Callable[[], str] | None
    exempt_when: Callable[[], object] | None
    counter: str
    key: str | Callable[[], str]
    cost: int
    failures_only: bool


def compile_sources(declared: Sequence[Declared], endpoint: str) -> tuple[LimitSource, ...] | None:
    """The per-request sources of an endpoint's limits, or ``None`` when every limit is fixed
    and unconditional (the route's precompiled limits then serve every request)."""
    if not any(not isinstance(s.limit, str) or s.exempt_when is not None for s in declared):
        return None
    sources = []
    for spec in declared:
        counter = f"scope:{spec.scope}" if spec.scope else f"view:{endpoint}"
        fixed = isinstance(spec.limit, str)
        sources.append(LimitSource(
            compile_limits([spec], endpoint, None) if fixed else (),
            None if fixed else spec.limit,  # type: ignore[arg-type]
            spec.exempt_when, counter, spec.key, spec.cost, spec.count == "failures",
        ))
    return tuple(sources)


_PARSED_SIZE = 1024


def _name(function: Callable[..., object]) -> str:
    return str(getattr(function, "__qualname__", None) or getattr(function, "__name__", function))


class LimitCache:
    """The limits of ``limit=`` callables, parsed once per distinct string they return, and
    the resolved tuples of limits, reused so that :class:`ProbeCache` finds them (both
    bounded: past the bound a map starts afresh)."""

    __slots__ = ("_parsed", "_resolved")

    def __init__(self) -> None:
        self._parsed: dict[tuple[LimitSource, str], tuple[CompiledLimit, ...]] = {}
        self._resolved: dict[Any, tuple[CompiledLimit, ...]] = {}

    def _compiled(self, source: LimitSource, text: str) -> tuple[CompiledLimit, ...]:
        found = self._parsed.get((source, text))
        if found is not None:
            return found
        assert source.limit is not None
        try:
            items = parse_many(text)
        except ValueError:
            items = []
        if not items:
            raise LimitError(f"the limit callable {_name(source.limit)} returned {text[:100]!r}, "
                             "which is not a rate limit")
        found = tuple(CompiledLimit(item, source.counter, source.key, source.cost,
                                    source.failures_only, text, dynamic=True) for item in items)
        if len(self._parsed) >= _PARSED_SIZE:
            self._parsed.clear()
        self._parsed[(source, text)] = found
        return found

    def resolve(self, sources: tuple[LimitSource, ...]) -> tuple[CompiledLimit, ...]:
        """This request's limits: each source's, unless its ``exempt_when()`` is true.

        :raises LimitError: when a callable raises, or a ``limit=`` callable returns anything
            but a rate-limit string.
        """
        chosen: list[object] = []
        for source in sources:
            if source.exempt_when is not None:
                try:
                    exempt = source.exempt_when()
                except Exception as exc:
                    raise LimitError(
                        f"the exempt_when callable {_name(source.exempt_when)} raised") from exc
                if exempt:
                    chosen.append(None)
                    continue
            if source.limit is None:
                chosen.append(True)
                continue
            try:
                text = source.limit()
            except Exception as exc:
                raise LimitError(f"the limit callable {_name(source.limit)} raised") from exc
            if not isinstance(text, str):
                raise LimitError(f"the limit callable {_name(source.limit)} returned a "
                                 f"{type(text).__name__}, not a string")
            chosen.append(text)
        key = (sources, tuple(chosen))
        found = self._resolved.get(key)
        if found is not None:
            return found
        limits: list[CompiledLimit] = []
        for source, choice in zip(sources, chosen, strict=True):
            if choice is True:
                limits.extend(source.compiled)
            elif isinstance(choice, str):
                limits.extend(self._compiled(source, choice))
        if len(self._resolved) >= _PARSED_SIZE:
            self._resolved.clear()
        found = self._resolved[key] = tuple(limits)
        return found


def key_value(key: str | Callable[[], str], identity: Identity, client: str) -> str:
    """The bucket of this request for a ``key=`` kind."""
    if key == "ip":
        return f"ip:{client}"
    if key == "auto" or key == "user":
        if identity.subject is not None and identity.is_authenticated:
            return f"sub:{identity.subject}"
        return f"ip:{client}"
    if key == "api_key":
        if identity.key_id is not None:
            return f"key:{identity.key_id}"
        return key_value("auto", identity, client)
    assert callable(key)
    value = key()
    if not isinstance(value, str) or not value:
        return f"ip:{client}"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from JSON): no Redis key can hold it
            return f"fnx:{value.encode('utf-8', 'surrogatepass').hex()}"
    return f"fn:{value}"


_CACHE_SIZE = 8192


class ProbeCache:
    """Probes are immutable, so the same limits and keys reuse the same objects: one bounded
    map per app (and one for the auth-failure limit), keyed by the limits and bucket names."""

    __slots__ = ("_found",)

    def __init__(self) -> None:
        self._found: dict[Any, tuple[LimitProbe, ...]] = {}

    def get(self, key: Any) -> tuple[LimitProbe, ...] | None:
        return self._found.get(key)

    def put(self, key: Any, probes: tuple[LimitProbe, ...]) -> tuple[LimitProbe, ...]:
        if len(self._found) >= _CACHE_SIZE:
            self._found.clear()
        self._found[key] = probes
        return probes


def counter_key(limit: CompiledLimit, key: str) -> str:
    """The key of ``limit``'s counter for the bucket ``key``. A view's own counters are
    limits' ``key_for`` (one per limit); a ``scope=`` counter leaves the amount out, so every
    view of the scope shares it, whatever amount each allows, as long as the window length is
    the same."""
    identifiers = (NAMESPACE, limit.counter, key)
    if not limit.counter.startswith("scope:") and not limit.dynamic:
        return limit.item.key_for(*identifiers)
    item = limit.item
    return f"{item.namespace}/{'/'.join(identifiers)}/{item.multiples}/{item.GRANULARITY.name}"


def probes(limits: tuple[CompiledLimit, ...], identity: Identity, client: str,
           cache: ProbeCache) -> tuple[LimitProbe, ...]:
    """This request's probes; ``count="failures"`` limits are only tested now, hit later.
    ``cache`` is the app's (limits compare by identity, so the lookup is cheap)."""
    if len(limits) == 1:
        key: Any = (limits, key_value(limits[0].key, identity, client))
        found = cache.get(key)
        if found is not None:
            return found
        return cache.put(key, (_probe(limits[0], key[1]),))
    keys = tuple(key_value(limit.key, identity, client) for limit in limits)
    found = cache.get((limits, keys))
    if found is not None:
        return found
    return cache.put((limits, keys),
                     tuple(_probe(limit, key) for limit, key in zip(limits, keys, strict=True)))


def _probe(limit: CompiledLimit, key: str) -> LimitProbe:
    return LimitProbe(limit.item, (NAMESPACE, limit.counter, key), limit.cost,
                      hit=not limit.failures_only, key=counter_key(limit, key),
                      concurrent=limit.concurrent)


def compile_concurrency(declared: Sequence[tuple[int, str | Callable[[], str]]],
                        endpoint: str) -> tuple[CompiledLimit, ...]:
    """The ``@concurrency_limit`` places of an endpoint: ``(n, key)`` each, its own places per
    view and bucket."""
    return tuple(
        CompiledLimit(RateLimitItemPerMinute(n), f"conc:{endpoint}", key, 1, True,
                      f"{n} in flight", concurrent=True)
        for n, key in declared
    )


class FailureLimit:
    """The auth-failure counters of each client IP (``APIGUARD_AUTH_FAILURE_LIMIT``)."""

    __slots__ = ("_cache", "items")

    def __init__(self, items: tuple[RateLimitItem, ...]) -> None:
        self.items = items
        self._cache = ProbeCache()

    def probes(self, client: str) -> tuple[LimitProbe, ...]:
        found = self._cache.get(client)
        if found is None:
            found = self._cache.put(client, tuple(
                LimitProbe(item, (NAMESPACE, "authfail", client)) for item in self.items))
        return found
