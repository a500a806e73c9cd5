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

from limits import RateLimitItem, parse_many

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


class Declared(Protocol):
    """What one ``@rate_limit`` recorded (``policy.RateLimitSpec``)."""

    @property
    def limit(self) -> str: ...
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
        counter = f"scope:{spec.scope}" if spec.scope else f"view:{endpoint}"
        compiled.extend(
            CompiledLimit(item, counter, spec.key, spec.cost, spec.count == "failures", spec.limit)
            for item in spec.items
        )
    return tuple(compiled)


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
    if not limit.counter.startswith("scope:"):
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
                      hit=not limit.failures_only, key=counter_key(limit, key))


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
