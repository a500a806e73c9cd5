"""Who is calling: :class:`Identity` (the request's own is :data:`flask_apiguard.current_identity`,
in :mod:`flask_apiguard.context`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

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
    :param user: what the ``@guard.identity_loader`` function returned for this identity
        (``None`` without a loader, and when anonymous).
    """

    subject: str | None = None
    roles: frozenset[str] = frozenset()
    scopes: frozenset[str] = frozenset()
    claims: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    method: str | None = None
    key_id: str | None = None
    user: Any = field(default=None, compare=False)

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

