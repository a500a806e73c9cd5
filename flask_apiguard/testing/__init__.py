"""``flask_apiguard.testing``: a pytest plugin, and security tests generated from the policy.

Installed with flask-apiguard and registered through the ``pytest11`` entry point as
``apiguard``, it is inert until a test asks for one of its fixtures: it has no autouse
fixture, no hook and no option, so a suite that does not use it runs exactly as before
(``-p no:apiguard`` unloads it anyway). Its fixtures use the suite's own ``app`` fixture, as
pytest-flask's do:

``apiguard_client``
    a :class:`GuardClient` for ``app`` (requests over HTTPS; ``as_user``, ``as_api_key``),
    with the rate-limit and auth-failure counters reset before and after the test.
``apiguard_api_key``
    ``apiguard_api_key(scopes=..., roles=..., owner=...)`` creates a real key in the app's
    store and returns its plaintext.
``apiguard_reset``
    resets the counters before and after the test (:func:`reset_limits`).
``apiguard_clock``
    a :class:`FrozenClock`: the time the guard's memory storage counts windows with.

:func:`apiguard_security_tests` turns every route's policy into parametrised request tests:
``test_security = apiguard_security_tests(create_app)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import pytest
from flask import Flask

from .helpers import (
    FrozenClock,
    GuardClient,
    create_api_key,
    midnight,
    mint_token,
    reset_limits,
)
from .security import (
    CONVERTER_SAMPLES,
    FOREIGN_ORIGIN,
    SecurityCase,
    apiguard_security_tests,
    sample_path,
    security_cases,
)

__all__ = [
    "CONVERTER_SAMPLES",
    "FOREIGN_ORIGIN",
    "FrozenClock",
    "GuardClient",
    "SecurityCase",
    "apiguard_security_tests",
    "create_api_key",
    "mint_token",
    "reset_limits",
    "sample_path",
    "security_cases",
]



# -- fixtures (inert until requested) -----------------------------------------------------------

@pytest.fixture
def apiguard_reset(app: Flask) -> Iterator[None]:
    """Reset ``app``'s counters (:func:`reset_limits`) before and after the test."""
    reset_limits(app)
    yield
    reset_limits(app)


@pytest.fixture
def apiguard_client(app: Flask, apiguard_reset: None) -> GuardClient:
    """A :class:`GuardClient` for the suite's ``app``, with fresh counters."""
    return GuardClient(app, app.response_class)


@pytest.fixture
def apiguard_api_key(app: Flask) -> Callable[..., str]:
    """``apiguard_api_key(scopes=(), roles=(), owner=None, name="pytest")``: a real key in
    ``app``'s store; returns the plaintext."""

    def create(*, scopes: Iterable[str] = (), roles: Iterable[str] = (), owner: str | None = None,
               name: str = "pytest", expires_in: int | None = None) -> str:
        return create_api_key(app, scopes=scopes, roles=roles, owner=owner, name=name,
                              expires_in=expires_in)

    return create


@pytest.fixture
def apiguard_clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    """A :class:`FrozenClock` for the guard's memory storage, for the test's duration."""
    clock = FrozenClock(midnight())
    clock._freeze(monkeypatch)
    return clock
