"""The request context: what the guard knows about one request, and where it keeps it.

Every request the guard sees gets one :class:`RequestState`, held by a :class:`RequestSlot`
in its WSGI environ (``environ["flask_apiguard.state"]``). The state lives with the request
it describes: a request handled inside another (a sub-request, a request context pushed in
a view) keeps its own, and a shallow copy of the environ made by middleware still shares it.
:data:`current_identity` reads the identity from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from flask import has_request_context, request
from werkzeug.local import LocalProxy

from .identity import ANONYMOUS, Identity
from .layers.requestid import new_request_id

if TYPE_CHECKING:
    from .errors import ApiGuardError
    from .policy import Route
    from .ratelimit.backend import Backend
    from .ratelimit.probes import LimitProbe
    from .ratelimit.window import WindowState

#: The WSGI environ key that holds the per-request :class:`RequestSlot`.
ENVIRON_KEY = "flask_apiguard.state"


@dataclass(slots=True)
class RequestState:
    """Everything the guard knows about the current request: one namespace in its WSGI environ."""

    request_id: str
    client: str = "unknown"
    identity: Identity = ANONYMOUS
    route: Route | None = None
    credentials: bool = False
    preflight: bool = False
    error: ApiGuardError | None = None
    window: WindowState | None = None
    #: The ``count="failures"`` probes this request holds a place in, where, and the id that
    #: names its places (so that only they are given back).
    reserved: tuple[LimitProbe, ...] = ()
    reserved_on: Backend | None = None
    reservation: str = ""
    #: For an adopted flask-limiter's ``deduct_when`` limits: whether each (by counter key)
    #: counts this response, decided after the view.
    deductions: dict[str, bool] | None = None
    #: Set once the security event of this request's response is recorded (a second
    #: ``start_response`` with ``exc_info`` must not record it again).
    logged: bool = False

    def take_places(self) -> tuple[tuple[LimitProbe, ...], Backend, str] | None:
        """The places this request holds, their backend and reservation id, once: the caller
        settles them."""
        if not self.reserved or self.reserved_on is None:
            return None
        taken = self.reserved, self.reserved_on, self.reservation
        self.reserved, self.reserved_on = (), None
        return taken


class RequestSlot:
    """Where one request's :class:`RequestState` lives: one object per request, shared by
    shallow copies of its environ."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: RequestState | None = None

    def current(self) -> RequestState:
        """The state, or a fresh one (with a new request id) when the guard's pipeline did not
        run for this request: a response from WSGI middleware installed before the guard."""
        if self.state is None:
            self.state = RequestState(request_id=new_request_id())
        return self.state


def request_slot(environ: dict[str, Any]) -> RequestSlot:
    """The slot of the request ``environ`` belongs to (created when missing)."""
    slot: RequestSlot | None = environ.get(ENVIRON_KEY)
    if slot is None:
        slot = environ[ENVIRON_KEY] = RequestSlot()
    return slot


def own_slot(environ: dict[str, Any]) -> RequestSlot:
    """The slot for a request starting with ``environ``: the one it carries while still empty
    (shared with a guard around this one), a new one when it carries another request's state
    (a sub-request made with that request's environ or a copy of it)."""
    slot: RequestSlot | None = environ.get(ENVIRON_KEY)
    if slot is None or slot.state is not None:
        slot = environ[ENVIRON_KEY] = RequestSlot()
    return slot


def _identity() -> Identity:
    if not has_request_context():
        return ANONYMOUS
    slot: RequestSlot | None = request.environ.get(ENVIRON_KEY)
    state = slot.state if slot is not None else None
    return state.identity if state is not None else ANONYMOUS


if TYPE_CHECKING:
    current_identity: Identity
else:
    current_identity = cast(Identity, LocalProxy(_identity))
    """Proxy to the current request's :class:`Identity` (anonymous outside a guarded request)."""
