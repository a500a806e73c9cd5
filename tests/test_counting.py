"""Our direct storage calls count exactly as limits' own strategies do, step by step.

The pipeline skips the strategy objects (and, on memory storage, reads a window in the same
step as it consumes it). These tests replay random sequences on limits' own MemoryStorage and
strategy objects and on ours, under one fake clock, and compare every answer.
"""

from __future__ import annotations

import math
import random
import time

import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import STRATEGIES

from flask_apiguard.ratelimit.counter import Counter
from flask_apiguard.ratelimit.memory import LocalStorage
from flask_apiguard.ratelimit.probes import LimitProbe

from .conftest import CounterClock

STRATEGY_NAMES = ["sliding-window-counter", "fixed-window", "moving-window"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch, counter_clock: CounterClock) -> Clock:
    fake = Clock()
    monkeypatch.setattr(time, "time", fake)
    counter_clock.offset = 0.0  # the counters read this fake clock as it is
    return fake


def reference_reset_in(strategy: str, reset_time: float, now: float) -> int:
    """The strategy's reset time as whole seconds from now (float noise below 1 ms ignored)."""
    return max(0, math.ceil(reset_time - now - 0.001))


@pytest.mark.parametrize("strategy", STRATEGY_NAMES)
@pytest.mark.parametrize("seed", range(6))
def test_counter_matches_limits_strategies(clock: Clock, strategy: str, seed: int) -> None:
    rng = random.Random(seed)
    item = parse(rng.choice(["5/10 seconds", "3/second", "20 per minute"]))
    reference_storage = MemoryStorage()
    reference = STRATEGIES[strategy](reference_storage)
    ours = Counter(LocalStorage(), strategy)
    # No sweep paced by real time during the replay: limits' runs on a timer thread 10 ms of
    # real time after a write, ours takes a batch every 5 s of real time, so under load they
    # ran at different steps of the fake clock and an empty moving window read differently
    # (limits reports a stale entry's time until it is swept). Sweeping is tested on its own.
    reference_storage._MemoryStorage__schedule_expiry = lambda: None  # type: ignore[attr-defined]
    reference_storage.timer.cancel()  # the sweep its constructor starts, 10 ms from now
    ours.storage._next_sweep = math.inf
    try:
        for step in range(300):
            clock.now += rng.choice([0.0, 0.01, 0.2, 0.7, 1.3, 4.0])
            key = rng.choice(["a", "b"])
            cost = rng.choice([1, 1, 1, 2])
            probe = LimitProbe(item, ("apiguard", "view:x", key), cost)
            action = rng.choice(["hit", "hit", "test", "window", "hit_window"])
            context = (strategy, seed, step, action, key, cost)
            if action in ("hit", "hit_window"):
                expected = reference.hit(item, *probe.identifiers, cost=cost)
                if action == "hit":
                    assert ours.hit(probe) == expected, context
                else:
                    allowed, window = ours.hit_window(probe, clock.now)
                    assert allowed == expected, context
                    reset_time, remaining = reference.get_window_stats(item, *probe.identifiers)
                    assert window.remaining == max(0, remaining), context
                    assert window.reset_in == reference_reset_in(strategy, reset_time, clock.now), context
            elif action == "test":
                assert ours.test(probe) == reference.test(item, *probe.identifiers, cost=cost), context
            else:
                reset_time, remaining = reference.get_window_stats(item, *probe.identifiers)
                window = ours.window(probe, clock.now)
                assert window.remaining == max(0, remaining), context
                assert window.reset_in == reference_reset_in(strategy, reset_time, clock.now), context
    finally:
        reference_storage.timer.cancel()


def test_local_storage_is_limits_memory_storage() -> None:
    storage = LocalStorage()
    assert isinstance(storage, MemoryStorage)
    storage.timer.join(1)
    assert not storage.timer.is_alive()  # no timer thread every 10 ms
    storage.incr("k", 60)
    assert not storage.timer.is_alive()


def test_local_storage_sweeps_expired_keys_inline(clock: Clock) -> None:
    storage = LocalStorage()
    for i in range(50):
        storage.incr(f"k{i}", 1)
    clock.now += 10
    time_mono = storage._next_sweep
    storage._next_sweep = 0  # the next write sweeps
    storage.incr("fresh", 60)
    assert set(storage.storage) == {"fresh"}
    assert storage._next_sweep != time_mono


def test_cost_larger_than_the_limit_is_refused(clock: Clock) -> None:
    ours = Counter(LocalStorage(), "sliding-window-counter")
    probe = LimitProbe(parse("2/minute"), ("apiguard", "view:y", "k"), cost=3)
    allowed, window = ours.hit_window(probe, clock.now)
    assert not allowed and window.remaining == 2


@pytest.mark.parametrize("expiry", [1, 60, 3600, 86_400])
def test_one_step_acquire_uses_limits_own_keys(clock: Clock, expiry: int) -> None:
    """The inlined window keys are those of limits' ``sliding_window_keys``: its own reader
    sees every hit, across a window boundary too."""
    storage = LocalStorage()
    for step in range(5):
        clock.now = 1_800_000_000.0 + step * expiry * 0.4
        allowed, (previous, previous_ttl, current, current_ttl) = \
            storage.acquire_sliding_window_with_state("apiguard/k", 100, expiry, 2)
        assert allowed
        assert MemoryStorage.get_sliding_window(storage, "apiguard/k", expiry) == \
            (previous, previous_ttl, current, current_ttl)


def test_the_private_names_of_limits_we_rely_on_exist() -> None:
    # flask_apiguard.ratelimit lists these in its docstring: a limits release that renames one
    # must fail here, not in production.
    from limits.storage import MemoryStorage, RedisStorage
    from limits.util import get_package_data

    from flask_apiguard.ratelimit.gate import _LUA_DIR, _SCRIPTS

    assert callable(getattr(MemoryStorage, "_MemoryStorage__schedule_expiry", None))
    memory = MemoryStorage()
    try:
        for attribute in ("storage", "expirations", "events", "timer"):
            assert hasattr(memory, attribute), attribute
    finally:
        memory.timer.cancel()
    for method in ("_previous_window_key", "_current_window_key", "prefixed_key"):
        assert callable(getattr(RedisStorage, method, None)), method
    for names in _SCRIPTS.values():
        for name in filter(None, names):
            assert get_package_data(f"{_LUA_DIR}/{name}.lua"), name
