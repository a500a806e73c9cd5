"""``APIGUARD_STORAGE_MODE = "leased"``: the common request makes no Redis round trip.

:class:`LeasedBackend` answers the pipeline's question (:meth:`~LeasedBackend.admit`) from
this process's memory when it can, and otherwise in one round trip, as ``"exact"`` mode does:

- **rate limits** are paid from leases (:mod:`flask_apiguard.ratelimit.leases`): units of a
  window counted in Redis when they were leased, spent here;
- **the auth-failure counters and the denylist** are read from keys known absent
  (:mod:`flask_apiguard.ratelimit.tracking`), which Redis invalidates on every write;
- **when something is not known here** (a new client, a new token, a lease spent or ended),
  one script does everything the request needs in one round trip: it tests the auth-failure
  counters and the denylist, tells which keys it found absent, and leases each limit that
  needs a lease, all or nothing (:data:`LEASE_SCRIPT`);
- **what keeps exact semantics goes the exact way**, one round trip through the gate of
  :mod:`flask_apiguard.ratelimit.gate`: a failed authentication (it is counted at once, and
  its write reaches every worker), ``count="failures"`` limits and ``@concurrency_limit``
  places (they are settled after the response), and every request while the invalidation
  connection is down.
"""

from __future__ import annotations

import atexit
import contextlib
import time
import weakref
from collections.abc import Sequence
from typing import Any

from limits import RateLimitItemPerMinute
from limits.storage import Storage

from .backend import Verdict, refusal
from .gate import _FIXED, _SLIDING, RedisScriptBackend, _wrap
from .leases import SHARE, Lease, LeaseTable
from .probes import NAMESPACE, LimitProbe
from .script import ScriptCaller
from .tracking import AbsentKeys
from .window import WindowState

_LEASE_SLIDING = r"""
-- limits' sliding_window reads the window (shifting it when its current counter has aged
-- past one window); the grant is then added as limits' acquire_sliding_window adds a hit:
-- to the current counter, or in a new one that lives two windows.
local function lease(k, amount, expiry, cost, want, now)
  local w = window(k, amount, expiry, now)
  local expiry_ms = expiry * 1000
  local weighted = math.floor(w[1] * math.max(0, w[2]) / expiry_ms) + w[3]
  local available = amount - weighted
  if available < cost then
    return nil
  end
  local grant = math.min(want, math.max(cost, math.floor(available / SHARE)), available)
  local current_ttl = w[4]
  if current_ttl == -2 then
    current_ttl = expiry_ms * 2
    redis.call('set', KEYS[k + 1], grant, 'PX', current_ttl)
  else
    redis.call('incrby', KEYS[k + 1], grant)
  end
  return grant, {w[1], w[2], w[3] + grant, current_ttl}, current_ttl - expiry_ms,
         redis.call('pexpiretime', KEYS[k + 1])
end
"""

_LEASE_FIXED = r"""
local function lease(k, amount, expiry, cost, want, now)
  local count = tonumber(redis.call('get', KEYS[k])) or 0
  local available = amount - count
  if available < cost then
    return nil
  end
  local grant = math.min(want, math.max(cost, math.floor(available / SHARE)), available)
  local current = tonumber(incr_expire({KEYS[k]}, {expiry, grant}))
  local pttl = redis.call('pttl', KEYS[k])
  return grant, {current, math.ceil(pttl / 1000)}, pttl, redis.call('pexpiretime', KEYS[k])
end
"""

_LEASE_MAIN = r"""
-- ARGV[1], space-separated: now, nfail, has_jti, nlimits, then 2 per auth-failure probe
-- (amount, expiry), then 4 per limit probe (amount, expiry, cost, units wanted).
-- KEYS: the probes' keys in order (KPP each), then the revocation key when has_jti.
-- The answer, space-separated: code, index, then
--   code 0: the token found not revoked ("1", or "-"), then per limit: units granted, ms
--           until its window ends, the counter's expiry time (ms), then the window's figures
--           (every auth-failure probe passed: its counters are absent or under the limit);
--   code 1 (auth failures exhausted): the window of that probe; 3: revoked;
--   code 4 (a limit refused): every limit's window.
local ARGS = {}
for token in string.gmatch(ARGV[1], "%S+") do
  ARGS[#ARGS + 1] = token
end
local ARGV = ARGS
local now = tonumber(ARGV[1])
local nfail = tonumber(ARGV[2])
local has_jti = ARGV[3] == "1"
local nlimits = tonumber(ARGV[4])
local out = {}
local function put(v)
  out[#out + 1] = tostring(v)
end
local function puts(w)
  for _, v in ipairs(w) do
    put(v)
  end
end
local k = 1
local a = 5
local fail_probes = {}
for i = 1, nfail do
  local amount, expiry = tonumber(ARGV[a]), tonumber(ARGV[a + 1])
  fail_probes[i] = {k, amount, expiry}
  local untouched
  if KPP == 2 then
    untouched = redis.call('exists', KEYS[k], KEYS[k + 1]) == 0
  else
    untouched = redis.call('exists', KEYS[k]) == 0
  end
  if not untouched and not test(k, amount, expiry, 1, now) then
    put(1)
    put(i)
    puts(window(k, amount, expiry, now))
    return table.concat(out, " ")
  end
  k = k + KPP
  a = a + 2
end
local limit_probes = {}
for i = 1, nlimits do
  limit_probes[i] = {k, tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]),
                     tonumber(ARGV[a + 3])}
  k = k + KPP
  a = a + 4
end
local jti_flag = "-"
if has_jti then
  if redis.call('exists', KEYS[k]) == 1 then
    -- a revoked token is a failed authentication, counted as the gate counts it
    for i = 1, nfail do
      local p = fail_probes[i]
      hit(p[1], p[2], p[3], 1, now)
    end
    return "3 0"
  end
  jti_flag = "1"
end
local function refused(i)
  out = {"4", tostring(i)}
  for j = 1, nlimits do
    local q = limit_probes[j]
    puts(window(q[1], q[2], q[3], now))
  end
  return table.concat(out, " ")
end
-- all or nothing: a request one limit refuses leases none of the others
if nlimits > 1 then
  for i = 1, nlimits do
    local p = limit_probes[i]
    if not test(p[1], p[2], p[3], p[4], now) then
      return refused(i)
    end
  end
end
put(0)
put(0)
put(jti_flag)
for i = 1, nlimits do
  local p = limit_probes[i]
  local grant, figures, ends_in, incarnation = lease(p[1], p[2], p[3], p[4], p[5], now)
  if grant == nil then
    return refused(i)
  end
  put(grant)
  put(ends_in)
  put(incarnation)
  puts(figures)
end
return table.concat(out, " ")
"""

_GIVE_BACK = r"""
-- KEYS: counters; ARGV[1], space-separated: per key, units to give back and the expiry time
-- (ms) the counter had when they were leased: only the same counter (the same window) takes
-- them back.
local ARGS = {}
for token in string.gmatch(ARGV[1], "%S+") do
  ARGS[#ARGS + 1] = tonumber(token)
end
for i, key in ipairs(KEYS) do
  local units, incarnation = ARGS[2 * i - 1], ARGS[2 * i]
  if redis.call('pexpiretime', key) == incarnation then
    local count = tonumber(redis.call('get', key)) or 0
    if count > 0 then
      redis.call('decrby', key, math.min(count, units))
    end
  end
end
return 0
"""


def compose_lease(strategy: str) -> str:
    """The Lua source of the lease script for ``strategy`` (not moving-window: see
    :func:`flask_apiguard.config`)."""
    if strategy == "sliding-window-counter":
        parts = [_wrap("acquire_sliding_window"), _wrap("sliding_window"), _SLIDING,
                 _LEASE_SLIDING]
    else:
        parts = [_wrap("incr_expire"), _FIXED, _LEASE_FIXED]
    return "\n".join([f"local SHARE = {SHARE}\n", *parts, _LEASE_MAIN])


class LeasedBackend(RedisScriptBackend):
    """The gate's backend, spending leases and reading known-absent keys in this process.
    See the module docstring."""

    def __init__(self, storage: Storage, strategy: str, revocations: Any, inflight: Any,
                 max_keys: int = 100_000) -> None:
        super().__init__(storage, strategy, revocations, inflight)
        client = self.redis.get_connection()
        self.lease_script = ScriptCaller(client, compose_lease(strategy))
        self.give_back_script = ScriptCaller(client, _GIVE_BACK)
        sample = self._keys(LimitProbe(RateLimitItemPerMinute(1), (NAMESPACE, "authfail", "-")))[0]
        failure_prefix = sample[:sample.index("/authfail/") + len("/authfail/")]
        ref = weakref.ref(self)
        self.absent = AbsentKeys(client, (failure_prefix, self._revoked_prefix), max_keys,
                                 on_fork=lambda: _after_fork(ref))
        self.max_keys = max_keys
        self.leases = LeaseTable(max_keys)
        #: Round trips made by :meth:`admit` (leases, and the exact path), for benchmarks.
        self.round_trips = 0
        atexit.register(_give_back_at_exit, weakref.ref(self))
        # an app dropped (a factory per tenant or per test) stops its tracking thread
        weakref.finalize(self, AbsentKeys.close, self.absent)

    def _after_fork(self) -> None:
        """In a forked child: the parent's leases are the parent's (and its table's lock may
        have been copied held)."""
        self.leases = LeaseTable(self.max_keys)

    def _forget_failures(self, failure: Sequence[LimitProbe]) -> None:
        """This process counted a failure (or found the client throttled): it knows at once,
        the other processes when Redis's push reaches them."""
        for probe in failure:
            for key in self._keys(probe):
                self.absent.discard(key)

    def _passes(self, probe: LimitProbe) -> bool:
        """Whether the auth-failure probe is known to pass: its counters were seen absent or
        under the limit, and nothing has written them since."""
        absent = self.absent
        return all(absent.absent(key) for key in self._keys(probe))

    def admit(self, failure: Sequence[LimitProbe], auth_failed: bool, jti: str | None,
              limits: Sequence[LimitProbe], want_window: bool,
              concurrency: Sequence[LimitProbe] = ()) -> Verdict:
        absent = self.absent
        if auth_failed or concurrency or not absent.ready() \
                or not all(probe.hit for probe in limits):
            self.round_trips += 1
            verdict = super().admit(failure, auth_failed, jti, limits, want_window, concurrency)
            if auth_failed or verdict.revoked or verdict.throttled:  # a failure was counted
                self._forget_failures(failure)
            return verdict
        jti_key = None if jti is None else self._revoked_prefix + jti
        # (quiet(): a push waiting to be applied makes the cache unknown until it is)
        known = (jti_key is None or absent.absent(jti_key)) \
            and all(self._passes(probe) for probe in failure) \
            and ((jti_key is None and not failure) or absent.quiet())
        table = self.leases
        with table.lock:
            now = time.monotonic()  # after the lock: a unit is never spent past its deadline
            epoch = absent.epoch  # (and never after its epoch was voided)
            if known:
                spent = table.spend(limits, now, epoch)
                if spent is not None:
                    if not want_window or not limits:
                        return Verdict()
                    return Verdict(window=_tightest(
                        [lease.window(probe.key, now) for probe, lease in zip(limits, spent, strict=True)]))
            held: list[tuple[LimitProbe, Lease]] = []
            missing: list[tuple[LimitProbe, int]] = []
            for probe in limits:
                # spent now, promised to this request; given back if it is refused
                lease = table.take(probe, now, epoch)
                if lease is None:
                    missing.append((probe, table.wanted(probe, now)))
                else:
                    held.append((probe, lease))
        try:
            verdict = self._lease(failure, jti_key, missing, held, want_window, now, epoch)
        except BaseException:
            self._refund(held)
            raise
        if verdict.breached is not None or verdict.throttled or verdict.revoked:
            self._refund(held)
        return verdict

    def _refund(self, held: Sequence[tuple[LimitProbe, Lease]]) -> None:
        if held:
            with self.leases.lock:
                for probe, lease in held:
                    lease.units += probe.cost

    def _lease(self, failure: Sequence[LimitProbe], jti_key: str | None,
               missing: list[tuple[LimitProbe, int]], held: list[tuple[LimitProbe, Lease]],
               want_window: bool, sent_at: float, epoch: int) -> Verdict:
        """The round trip: test, read and lease what this process does not know."""
        wall = time.time()
        snapshot = self.absent.snapshot()
        keys: list[str] = []
        args = [repr(wall), str(len(failure)), "0" if jti_key is None else "1", str(len(missing))]
        for probe in failure:
            keys.extend(self._keys(probe))
            args.append(f"{probe.item.amount} {probe.expiry}")
        for probe, wanted in missing:
            keys.extend(self._keys(probe))
            args.append(f"{probe.item.amount} {probe.expiry} {probe.cost} {wanted}")
        if jti_key is not None:
            keys.append(jti_key)
        self.round_trips += 1
        raw = self.lease_script(keys, " ".join(args))
        answer = (raw.decode("ascii") if isinstance(raw, bytes) else raw).split()
        code, index, rest = int(answer[0]), int(answer[1]), answer[2:]
        width = self.width
        if code == 1:
            probe = failure[index - 1]
            self._forget_failures([probe])
            state = self._state(probe, rest[:width], wall)
            return Verdict(throttled=True, retry_after=max(1, state.reset_in))
        if code == 3:  # (and a failure was counted)
            assert jti_key is not None
            self._forget_failures(failure)
            self.absent.discard(jti_key)
            return Verdict(revoked=True)
        if code == 4:
            probes = [probe for probe, _ in missing]
            return refusal(probes[index - 1], [
                (probe, self._state(probe, rest[i * width:(i + 1) * width], wall))
                for i, probe in enumerate(probes)])
        jti_flag, rest = rest[0], rest[1:]
        # every auth-failure probe passed: its counters are absent or under the limit, and
        # they can only come closer to it by a write, which Redis pushes (a sliding window's
        # weighted count only falls as time passes; a fixed window's stays until it expires)
        found = [key for probe in failure for key in self._keys(probe)]
        if jti_flag == "1" and jti_key is not None:
            found.append(jti_key)
        if found:
            self.absent.remember(found, snapshot)
        windows: list[WindowState] = []
        step = 3 + width
        table = self.leases
        with table.lock:
            for i, (probe, _) in enumerate(missing):
                part = rest[i * step:(i + 1) * step]
                granted, ends_in, incarnation = int(part[0]), float(part[1]), int(float(part[2]))
                state = self._state(probe, part[3:], wall)
                lease = Lease(granted - probe.cost, sent_at + max(0.0, ends_in) / 1000, epoch,
                              granted, sent_at, state.limit, state.remaining,
                              sent_at + state.reset_in, incarnation, (self._keys(probe)[-1],))
                table.put(probe, lease)
                if want_window:
                    windows.append(lease.window(probe.key, sent_at))
            if want_window:
                windows.extend(lease.window(probe.key, sent_at) for probe, lease in held)
        return Verdict(window=_tightest(windows) if windows else None)

    def revoke(self, jti: str, ttl: int) -> None:
        super().revoke(jti, ttl)
        # this process knows at once; the others when Redis's push reaches them
        self.absent.discard(self._revoked_prefix + jti)

    def give_back(self) -> None:
        """Give the units this process holds back to their counters (at exit; best effort:
        what cannot be given back expires with its window)."""
        leases = self.leases.drain(self.absent.epoch)
        if not leases or not self.absent.usable:
            return
        keys, args = [], []
        for lease in leases:
            keys.append(lease.keys[0])
            args += [str(lease.units), str(lease.incarnation)]
        with contextlib.suppress(Exception):
            self.give_back_script(keys, " ".join(args))

    def forget(self) -> None:
        """Drop what this process holds and knows (after the counters were deleted)."""
        self.leases.drain(self.absent.epoch)
        self.absent.forget()

    def close(self) -> None:
        self.give_back()
        self.absent.close()


def _after_fork(ref: weakref.ref[LeasedBackend]) -> None:
    backend = ref()  # (a weak reference: the tracking thread must not keep the app alive)
    if backend is not None:
        backend._after_fork()


def _give_back_at_exit(ref: weakref.ref[LeasedBackend]) -> None:
    backend = ref()
    if backend is not None:
        backend.give_back()


def _tightest(windows: Sequence[WindowState]) -> WindowState:
    best = windows[0]
    for state in windows[1:]:
        if (state.remaining, state.reset_in) < (best.remaining, best.reset_in):
            best = state
    return best

