"""Real credentials, counter resets and a frozen clock for an app's tests."""

from __future__ import annotations

import math
import time as _time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ..state import guard_state

#: The subject of the tokens and the owner of the keys the generated tests use.
TEST_SUBJECT = "apiguard-test"



def mint_token(app: Flask, subject: str, *, roles: Iterable[str] = (), scopes: Iterable[str] = (),
               expires_in: int | None = None, **claims: Any) -> str:
    """A real token for ``subject``, signed with ``app``'s keys (``ApiGuard.issue_token`` in
    an app context of ``app``)."""
    from ..extension import ApiGuard

    with app.app_context():
        return ApiGuard().issue_token(subject, roles=roles, scopes=scopes, expires_in=expires_in,
                                      **claims)


def create_api_key(app: Flask, *, scopes: Iterable[str] = (), roles: Iterable[str] = (),
                   owner: str | None = None, name: str = "pytest",
                   expires_in: int | None = None) -> str:
    """Create a real key in ``app``'s key store; return its plaintext."""
    with app.app_context():
        plaintext, _ = guard_state(app).api_keys.create(
            name, scopes=tuple(scopes), roles=tuple(roles), owner=owner, expires_in=expires_in)
    return str(plaintext)


def reset_limits(app: Flask) -> None:
    """Forget ``app``'s rate-limit, auth-failure and revocation counters.

    With ``memory://`` storage the shared state starts afresh. With Redis only the keys under
    the storage's ``key_prefix`` are deleted (``APIGUARD_STORAGE_OPTIONS={"key_prefix": ...}``;
    limits' default is ``LIMITS``): give each test run a prefix of its own on a shared server.
    """
    guard_state(app).shared.reset()


class GuardClient(FlaskClient):
    """Flask's test client whose requests go over HTTPS (``APIGUARD_FORCE_HTTPS`` would
    redirect plain ones) unless a ``base_url`` says otherwise, and which can act as a caller.

    ``as_user``, ``as_api_key`` and ``anonymous`` return a new client; the one they are called
    on is unchanged.
    """

    def open(self, *args: Any, **kwargs: Any) -> TestResponse:
        if (not args or isinstance(args[0], str)) and "base_url" not in kwargs:
            kwargs.setdefault("url_scheme", "https")
        return super().open(*args, **kwargs)

    def _acting(self, environ: Mapping[str, str]) -> GuardClient:
        client = type(self)(self.application, self.response_wrapper)
        base = dict(self.environ_base)
        base.pop("HTTP_AUTHORIZATION", None)
        base.pop(guard_state(self.application).api_key_environ, None)
        client.environ_base = {**base, **environ}
        return client

    def as_user(self, subject: str, *, roles: Iterable[str] = (), scopes: Iterable[str] = (),
                expires_in: int | None = None, **claims: Any) -> GuardClient:
        """A client sending a real bearer token for ``subject`` (see :func:`mint_token`)."""
        token = mint_token(self.application, subject, roles=roles, scopes=scopes,
                           expires_in=expires_in, **claims)
        return self._acting({"HTTP_AUTHORIZATION": f"Bearer {token}"})

    def as_api_key(self, plaintext: str | None = None, *, scopes: Iterable[str] = (),
                   roles: Iterable[str] = (), owner: str | None = None) -> GuardClient:
        """A client sending an API key: ``plaintext``, or a new key with these ``scopes``,
        ``roles`` and ``owner`` (see :func:`create_api_key`)."""
        if plaintext is None:
            plaintext = create_api_key(self.application, scopes=scopes, roles=roles, owner=owner)
        return self._acting({guard_state(self.application).api_key_environ: plaintext})

    def anonymous(self) -> GuardClient:
        """A client sending no credential."""
        return self._acting({})


class _ClockTime:
    """Stands in for the ``time`` module in the modules the clock freezes: ``time()`` reads
    the clock, everything else (``monotonic``, ``sleep``…) is the real module's."""

    def __init__(self, clock: FrozenClock) -> None:
        self._clock = clock

    def time(self) -> float:
        return self._clock.now

    def __getattr__(self, name: str) -> Any:
        return getattr(_time, name)


@dataclass
class FrozenClock:
    """The clock of the guard's memory storage, stopped: ``advance(seconds)`` and ``set(ts)``
    move it. It starts at midnight UTC of the current day, so every window (a second, a
    minute, 15 minutes, an hour, a day) starts with the test.

    It freezes ``time.time`` as read by :mod:`flask_apiguard.ratelimit` and
    :mod:`limits.storage.memory` only: rate-limit windows, auth-failure windows and the
    memory revocation list. Token ``exp``/``iat``/``nbf``, API key expiry and everything else
    keep the real time. Redis counts windows by its own clock: with a Redis storage, advancing
    this one changes nothing (use ``memory://`` for window tests).
    """

    start: float
    now: float = field(init=False)

    def __post_init__(self) -> None:
        self.now = self.start

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def set(self, timestamp: float) -> None:
        self.now = float(timestamp)

    def _freeze(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for module in _clock_modules():
            monkeypatch.setattr(module, "time", _ClockTime(self))


def _clock_modules() -> tuple[ModuleType, ...]:
    """The modules whose ``time.time`` is the memory storage's clock."""
    import limits.storage.memory

    from ..ratelimit import backend, counter, memory, places, revocations, shared

    return tuple(module for module in (backend, counter, memory, places, revocations, shared,
                                       limits.storage.memory) if hasattr(module, "time"))


def midnight() -> float:
    return math.floor(_time.time() / 86400) * 86400.0


@contextmanager
def stopped_clock() -> Iterator[None]:
    """The memory storage's clock stopped at a window start while the block runs (so that no
    window boundary falls between a rate-limit case's requests)."""
    clock = FrozenClock(midnight())
    saved = [(module, module.__dict__["time"]) for module in _clock_modules()]
    try:
        for module, _ in saved:
            module.__dict__["time"] = _ClockTime(clock)
        yield
    finally:
        for module, original in saved:
            module.__dict__["time"] = original


