"""Who is calling: :class:`Identity`, and the :data:`current_identity` proxy."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, cast

from flask import has_request_context, request
from werkzeug.local import LocalProxy

#: The WSGI environ key that holds the per-request :class:`RequestSlot`. The state lives with
#: the request it describes, so a request handled inside another keeps its own, and a shallow
#: copy of the environ (made by middleware) still shares it.
ENVIRON_KEY = "flask_apiguard.state"


class RequestSlot:
    """Where one request's guard state lives (``state``): one object per request, shared by
    shallow copies of its environ."""

    __slots__ = ("state",)

    def __init__(self) -> None:
        self.state: Any = None


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

_EMPTY: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Identity:
    """The authenticated caller of the current request, or the anonymous one.

    :param subject: the JWT ``sub`` claim, or the API key's owner (``apikey:<key_id>`` when the
        key has no owner).
    :param roles: role names, compared exactly.
    :param scopes: scope names (API key scopes, or the JWT ``scope`` claim split on spaces).
    :param claims: the verified JWT claims (empty for API keys), read-only.
    :param method: ``"jwt"``, ``"api_key"`` or ``None`` when anonymous.
    :param key_id: the API key's id, when authenticated by key.
    """

    subject: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    method: str | None = None
    key_id: str | None = None

    @property
    def is_authenticated(self) -> bool:
        return self.method is not None

    def has_roles(self, *names: str, require: str = "any") -> bool:
        """True when the identity holds any (or, with ``require="all"``, all) of ``names``."""
        return holds(self.roles, frozenset(names), require)

    def __repr__(self) -> str:
        if not self.is_authenticated:
            return "<Identity anonymous>"
        return f"<Identity {self.method} subject={self.subject!r} roles={sorted(self.roles)}>"


def holds(held: frozenset[str], wanted: frozenset[str], require: str = "any") -> bool:
    """Whether ``held`` contains any (or, with ``require="all"``, all) of ``wanted``."""
    return wanted <= held if require == "all" else bool(wanted & held)


ANONYMOUS = Identity()


def _identity() -> Identity:
    if not has_request_context():
        return ANONYMOUS
    slot = request.environ.get(ENVIRON_KEY)
    identity = getattr(slot.state, "identity", None) if slot is not None else None
    return identity if identity is not None else ANONYMOUS


if TYPE_CHECKING:
    current_identity: Identity
else:
    current_identity = cast(Identity, LocalProxy(_identity))
    """Proxy to the current request's :class:`Identity` (anonymous outside a guarded request)."""
