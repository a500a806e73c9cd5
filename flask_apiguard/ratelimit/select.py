"""Step 9's probes for routes off the plain path: a ``limit=`` or ``exempt_when=`` callable,
``@concurrency_limit`` places, ``APIGUARD_RATELIMIT_EXEMPT_NETWORKS``."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import internal_error
from ..identity import Identity
from .probes import LimitError, LimitProbe, probes

if TYPE_CHECKING:
    from ..policy import Route
    from ..state import GuardState

_log = logging.getLogger("flask_apiguard")


def exempt(state: GuardState, address: str | None) -> bool:
    """Whether the client is in ``APIGUARD_RATELIMIT_EXEMPT_NETWORKS`` (no rate limit)."""
    networks = state.config.ratelimit_exempt_networks
    return networks is not None and address in networks


def route_probes(state: GuardState, route: Route, identity: Identity, client: str,
                 address: str | None) -> tuple[tuple[LimitProbe, ...], tuple[LimitProbe, ...]]:
    """Step 9's probes, and its ``@concurrency_limit`` places: none for a client of
    ``APIGUARD_RATELIMIT_EXEMPT_NETWORKS``; the route's own limits, or those its
    ``limit=``/``exempt_when=`` callables choose."""
    if exempt(state, address):
        return (), ()
    places = probes(route.concurrency, identity, client, state.probe_cache) \
        if route.concurrency else ()
    compiled = route.limits
    if route.limit_sources is not None:
        try:
            compiled = state.limit_cache.resolve(route.limit_sources)
        except LimitError:
            # never an unlimited request: the view's limits are unknown, so it is refused
            _log.exception("flask-apiguard: the rate limits of %s could not be decided",
                           route.endpoint)
            raise internal_error() from None
    return (probes(compiled, identity, client, state.probe_cache) if compiled else (),
            places)
