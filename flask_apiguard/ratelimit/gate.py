"""One Redis round trip per request: auth-failure check, revocation and rate limits in one script.

The script is composed at start-up from :mod:`limits`' own Lua scripts (the very code its
Redis storage runs for each strategy), each wrapped as a local function, plus a few lines that
run them in the pipeline's order:

1. the auth-failure counters of the client IP are *tested*; if exhausted, stop (throttled);
2. if the credentials were found invalid, count a failure and stop;
3. if the token's ``jti`` is on the denylist, count a failure and stop (revoked);
4. with several limits, test them all first: a request one limit refuses uses up none of the
   others; then consume each (or only test it, for ``count="failures"``) and read each window
   for the ``RateLimit-*`` headers. ``@concurrency_limit`` places are tested before any limit
   is used up (a full one refuses the request, code 5) and taken, with the ``count="failures"``
   places, only once every limit admitted it.

Keys are named exactly as limits' Redis storage names them, so the counters are the same ones
limits' strategies read (``tests/test_redis_gate.py`` checks both ways). The script touches
only the keys it is given (``KEYS``), all built here: limits' counters under the storage's
``key_prefix``, and the revocation and in-flight keys under the same prefix when one is set.
Redis Cluster cannot run one script over keys of different slots, so ``redis+cluster://``
uses the sequential backend (a few round trips).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from limits.storage import RedisClusterStorage, RedisStorage, Storage
from limits.util import get_package_data

from .backend import Backend, Verdict, refusal
from .places import INFLIGHT_TTL_MS, reservation_token
from .probes import LimitProbe
from .redis_client import INFLIGHT_PREFIX, REVOKED_PREFIX
from .script import ScriptCaller
from .window import WindowState, _whole_seconds, sliding_window_state

_LUA_DIR = "resources/redis/lua_scripts"
_KEY_CACHE_SIZE = 16384
_SCRIPTS = {
    "sliding-window-counter": ("acquire_sliding_window", "sliding_window"),
    "fixed-window": ("incr_expire", None),
    "moving-window": ("acquire_moving_window", "moving_window"),
}

_MAIN = r"""
-- ARGV[1], space-separated (one argument is cheaper to send than twenty): now, nfail,
-- auth_failed, has_jti, nlimits, want_window, token, nconc, then 4 per probe (amount,
-- expiry, cost, hit), then 2 per @concurrency_limit (amount, cost).
-- KEYS: the probes' keys in order, the revocation key when has_jti, then one in-flight key
-- per count="failures" probe (hit = 0), in the order of the limit probes, then one per
-- @concurrency_limit; those requests hold a place until they settle.
-- The answer is one space-separated string: code, probe index, then the windows' figures.
local ARGS = {}
for token in string.gmatch(ARGV[1], "%S+") do
  ARGS[#ARGS + 1] = token
end
local ARGV = ARGS
local function answer(code, index, windows)
  local out = {code, index}
  for _, w in ipairs(windows) do
    for _, v in ipairs(w) do
      out[#out + 1] = tostring(v)
    end
  end
  return table.concat(out, " ")
end
local now = tonumber(ARGV[1])
local nfail = tonumber(ARGV[2])
local auth_failed = ARGV[3] == "1"
local has_jti = ARGV[4] == "1"
local nlimits = tonumber(ARGV[5])
local want_window = ARGV[6] == "1"
local token = ARGV[7]
local nconc = tonumber(ARGV[8])
local k = 1
local a = 9
local fail_probes = {}
for i = 1, nfail do
  fail_probes[i] = {k, tonumber(ARGV[a]), tonumber(ARGV[a + 1])}
  k = k + KPP
  a = a + 4
end
local limit_probes = {}
for i = 1, nlimits do
  limit_probes[i] = {k, tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
                     ARGV[a + 3] == "1"}
  k = k + KPP
  a = a + 4
end
local conc_probes = {}
for i = 1, nconc do
  conc_probes[i] = {tonumber(ARGV[a]), tonumber(ARGV[a + 1])}
  a = a + 2
end
local revoked_key = KEYS[k]
if has_jti then
  k = k + 1
end
for i = 1, nlimits do
  local p = limit_probes[i]
  if not p[5] then
    p[6] = KEYS[k]
    k = k + 1
  end
end
for i = 1, nconc do
  conc_probes[i][3] = KEYS[k]
  k = k + 1
end
local now_ms = math.floor(now * 1000)
local function cost_of(i, p)
  if p[5] then
    return p[4]
  end
  -- places held by requests in progress: one sorted-set member each, scored by its expiry
  redis.call('zremrangebyscore', p[6], '-inf', now_ms)
  return p[4] + redis.call('zcard', p[6])
end
-- a counter that does not exist has room for one (any limit of at least 1): one EXISTS
-- instead of reading the window, for the usual client that never failed
local function untouched(p)
  if p[2] < 1 then
    return false
  end
  if KPP == 2 then
    return redis.call('exists', KEYS[p[1]], KEYS[p[1] + 1]) == 0
  end
  return redis.call('exists', KEYS[p[1]]) == 0
end

for i = 1, nfail do
  local p = fail_probes[i]
  if not untouched(p) and not test(p[1], p[2], p[3], 1, now) then
    return answer(1, i, {window(p[1], p[2], p[3], now)})
  end
end
if auth_failed then
  for i = 1, nfail do
    local p = fail_probes[i]
    hit(p[1], p[2], p[3], 1, now)
  end
  return answer(2, 0, {})
end
if has_jti and redis.call('exists', revoked_key) == 1 then
  for i = 1, nfail do
    local p = fail_probes[i]
    hit(p[1], p[2], p[3], 1, now)
  end
  return answer(3, 0, {})
end
-- @concurrency_limit: room for this request among the places in flight (tested before any
-- limit is used up; taken, with the others, once every limit admitted the request)
for i = 1, nconc do
  local c = conc_probes[i]
  redis.call('zremrangebyscore', c[3], '-inf', now_ms)
  if redis.call('zcard', c[3]) + c[2] > c[1] then
    return answer(5, i, {})
  end
end
local function refused(i)
  local all = {}
  for j = 1, nlimits do
    local q = limit_probes[j]
    all[j] = window(q[1], q[2], q[3], now)
  end
  return answer(4, i, all)
end
-- all or nothing: a request one limit refuses uses up none of the others
if nlimits > 1 then
  for i = 1, nlimits do
    local p = limit_probes[i]
    if not test(p[1], p[2], p[3], cost_of(i, p), now) then
      return refused(i)
    end
  end
end
local windows = {}
for i = 1, nlimits do
  local p = limit_probes[i]
  local allowed
  if p[5] then
    allowed = hit(p[1], p[2], p[3], p[4], now)
  else
    allowed = nlimits > 1 or test(p[1], p[2], p[3], cost_of(i, p), now)
  end
  if not allowed then
    return refused(i)
  end
  if want_window then
    windows[#windows + 1] = window(p[1], p[2], p[3], now)
  end
end
for i = 1, nlimits do
  local p = limit_probes[i]
  if not p[5] then
    local ikey = p[6]
    for n = 1, p[4] do
      redis.call('zadd', ikey, now_ms + INFLIGHT_TTL_MS, token .. ':' .. n)
    end
    redis.call('pexpire', ikey, INFLIGHT_TTL_MS)
  end
end
for i = 1, nconc do
  local c = conc_probes[i]
  for n = 1, c[2] do
    redis.call('zadd', c[3], now_ms + INFLIGHT_TTL_MS, token .. ':' .. n)
  end
  redis.call('pexpire', c[3], INFLIGHT_TTL_MS)
end
return answer(0, 0, windows)
"""

_SLIDING = r"""
local KPP = 2
local function hit(k, amount, expiry, cost, now)
  return acquire_sliding_window({KEYS[k], KEYS[k + 1]}, {amount, expiry, cost}) == true
end
local function window(k, amount, expiry, now)
  local w = sliding_window({KEYS[k], KEYS[k + 1]}, {expiry})
  return {tonumber(w[1]) or 0, tonumber(w[2]) or 0, tonumber(w[3]) or 0, tonumber(w[4]) or 0}
end
local function test(k, amount, expiry, cost, now)
  local w = window(k, amount, expiry, now)
  local previous_ttl = math.max(0, w[2]) / 1000
  local weighted = w[1] * previous_ttl / expiry + w[3]
  return weighted < amount - cost + 1
end
"""

_FIXED = r"""
local KPP = 1
local function hit(k, amount, expiry, cost, now)
  return tonumber(incr_expire({KEYS[k]}, {expiry, cost})) <= amount
end
local function window(k, amount, expiry, now)
  return {tonumber(redis.call('get', KEYS[k])) or 0, redis.call('ttl', KEYS[k])}
end
local function test(k, amount, expiry, cost, now)
  return (tonumber(redis.call('get', KEYS[k])) or 0) < amount - cost + 1
end
"""

_MOVING = r"""
local KPP = 1
local function hit(k, amount, expiry, cost, now)
  return acquire_moving_window({KEYS[k]}, {now, amount, expiry, cost}) == true
end
local function window(k, amount, expiry, now)
  local w = moving_window({KEYS[k]}, {now - expiry, amount})
  if w then
    return {w[1], tonumber(w[2])}
  end
  return {tostring(now), 0}
end
local function test(k, amount, expiry, cost, now)
  local w = window(k, amount, expiry, now)
  return w[2] <= amount - cost
end
"""

_HELPERS = {"sliding-window-counter": _SLIDING, "fixed-window": _FIXED, "moving-window": _MOVING}


def _wrap(name: str) -> str:
    body = get_package_data(f"{_LUA_DIR}/{name}.lua").decode("utf-8")
    return f"local function {name}(KEYS, ARGV)\n{body}\nend\n"


def compose(strategy: str) -> str:
    """The Lua source of the gate for ``strategy``."""
    acquire, read = _SCRIPTS[strategy]
    parts = [_wrap(acquire)]
    if read is not None:
        parts.append(_wrap(read))
    parts.append(_HELPERS[strategy])
    parts.append(f"local INFLIGHT_TTL_MS = {INFLIGHT_TTL_MS}\n")
    parts.append(_MAIN)
    return "\n".join(parts)


def supports_scripts(storage: Storage) -> bool:
    """True for plain and Sentinel Redis storages (a Cluster splits keys across nodes)."""
    return isinstance(storage, RedisStorage) and not isinstance(storage, RedisClusterStorage)


class RedisScriptBackend(Backend):
    """The :class:`~flask_apiguard.ratelimit.backend.Backend` whose :meth:`admit` is one EVALSHA."""

    def __init__(self, storage: Storage, strategy: str, revocations: Any, inflight: Any) -> None:
        super().__init__(storage, strategy, revocations, inflight)
        redis_storage: Any = storage
        self.strategy = strategy
        self.redis = redis_storage
        self.script = ScriptCaller(redis_storage.get_connection(), compose(strategy))
        #: How many figures the script returns per window.
        self.width = 4 if strategy == "sliding-window-counter" else 2
        self._key_cache: dict[str, tuple[str, ...]] = {}
        self._revoked_prefix: str = getattr(revocations, "prefix", REVOKED_PREFIX)
        self._inflight_prefix: str = getattr(inflight, "prefix", INFLIGHT_PREFIX)

    def _keys(self, probe: LimitProbe) -> tuple[str, ...]:
        """The Redis keys limits' storage uses for ``probe`` (fixed per probe, so cached)."""
        found = self._key_cache.get(probe.key)
        if found is None:
            storage = self.redis
            if self.strategy == "sliding-window-counter":
                found = (storage.prefixed_key(storage._previous_window_key(probe.key)),
                         storage.prefixed_key(storage._current_window_key(probe.key)))
            else:
                found = (storage.prefixed_key(probe.key),)
            if len(self._key_cache) >= _KEY_CACHE_SIZE:
                self._key_cache.clear()
            self._key_cache[probe.key] = found
        return found

    def _state(self, probe: LimitProbe, raw: Sequence[bytes | str], now: float) -> WindowState:
        amount, expiry = probe.item.amount, probe.expiry
        if self.strategy == "sliding-window-counter":
            previous, previous_ttl, current, current_ttl = (float(v) for v in raw)
            return sliding_window_state(amount, expiry, int(previous), max(0.0, previous_ttl) / 1000,
                                        int(current), max(0.0, current_ttl) / 1000, probe.key)
        if self.strategy == "fixed-window":
            count, ttl = int(float(raw[0])), int(float(raw[1]))
            return WindowState(amount, max(0, amount - count), max(0, ttl), probe.key)
        start, count = float(raw[0]), int(float(raw[1]))
        reset_in = _whole_seconds(start + expiry - now)
        return WindowState(amount, max(0, amount - count), reset_in, probe.key)

    def admit(self, failure: Sequence[LimitProbe], auth_failed: bool, jti: str | None,
              limits: Sequence[LimitProbe], want_window: bool,
              concurrency: Sequence[LimitProbe] = ()) -> Verdict:
        now = time.time()
        keys: list[str] = []
        reserved = tuple(p for p in limits if not p.hit) + tuple(concurrency)
        token = reservation_token() if reserved else "-"
        args: list[str] = [repr(now), str(len(failure)), "1" if auth_failed else "0",
                           "0" if jti is None else "1", str(len(limits)), "1" if want_window else "0",
                           token, str(len(concurrency))]
        for probe in failure:
            keys.extend(self._keys(probe))
            args.append(f"{probe.item.amount} {probe.expiry} 1 1")
        for probe in limits:
            keys.extend(self._keys(probe))
            args.append(f"{probe.item.amount} {probe.expiry} {probe.cost} {int(probe.hit)}")
        for probe in concurrency:
            args.append(f"{probe.item.amount} {probe.cost}")
        if jti is not None:
            keys.append(self._revoked_prefix + jti)
        if reserved:
            inflight = self._inflight_prefix
            keys.extend(inflight + probe.key for probe in reserved)
        answer = self.script(keys, " ".join(args)).split()
        code, index, figures = int(answer[0]), int(answer[1]), answer[2:]
        width = self.width

        def states(probes: Sequence[LimitProbe]) -> list[tuple[LimitProbe, WindowState]]:
            return [(p, self._state(p, figures[i * width:(i + 1) * width], now))
                    for i, p in enumerate(probes)]

        if code == 1:
            _, state = states([failure[index - 1]])[0]
            return Verdict(throttled=True, retry_after=max(1, state.reset_in))
        if code == 2:
            return Verdict()
        if code == 3:
            return Verdict(revoked=True)
        if code == 4:
            return refusal(limits[index - 1], states(limits))
        if code == 5:
            return Verdict(busy=True, retry_after=1)
        best: WindowState | None = None
        for _, state in states(limits) if want_window else ():
            if best is None or (state.remaining, state.reset_in) < (best.remaining, best.reset_in):
                best = state
        return Verdict(window=best, reserved=reserved, backend=self if reserved else None,
                       token=token if reserved else "")
