"""Rate limits, token revocation and auth-failure counters: everything that counts.

Modules, from what a request uses to where it is counted:

- :mod:`~flask_apiguard.ratelimit.probes`: which counters a request uses (``@rate_limit``
  compiled per view, the auth-failure limit), as :class:`LimitProbe` values;
- :mod:`~flask_apiguard.ratelimit.window`: what a window reports, and the sliding-window
  formulas, once;
- :mod:`~flask_apiguard.ratelimit.counter`: how each :mod:`limits` strategy counts;
- :mod:`~flask_apiguard.ratelimit.memory`: the bounded in-memory storage;
- :mod:`~flask_apiguard.ratelimit.places` and :mod:`~flask_apiguard.ratelimit.revocations`:
  in-flight places of ``count="failures"`` and ``@concurrency_limit`` requests, and the token
  denylist, in memory or Redis;
- :mod:`~flask_apiguard.ratelimit.backend`: the pipeline's one question answered with a few
  storage calls, on any storage;
- :mod:`~flask_apiguard.ratelimit.gate`: the same question in one Redis round trip (a Lua
  script composed from limits' own), run by :mod:`~flask_apiguard.ratelimit.script`;
- :mod:`~flask_apiguard.ratelimit.leased`, :mod:`~flask_apiguard.ratelimit.leases` and
  :mod:`~flask_apiguard.ratelimit.tracking`: ``APIGUARD_STORAGE_MODE = "leased"``, the same
  question answered from leased units and keys known absent, kept true by Redis's
  invalidations (one round trip only when something is not known here);
- :mod:`~flask_apiguard.ratelimit.redis_client`: Redis client options and key names;
- :mod:`~flask_apiguard.ratelimit.shared`: :class:`SharedState`, which picks the backend for
  the configured storage and applies the fault policy;
- :mod:`~flask_apiguard.ratelimit.adopt`: an adopted flask-limiter ``Limiter``, its limits
  resolved per (endpoint, method) and counted with the rest.

Private names of :mod:`limits` used, because no public way exists (each pinned by
``tests/test_counting.py::test_the_private_names_of_limits_we_rely_on_exist``; the
dependency is bounded above in ``setup.cfg``):

- ``MemoryStorage._MemoryStorage__schedule_expiry`` (overridden: no timer thread), and the
  attributes ``storage``, ``expirations``, ``events`` and ``timer`` of ``MemoryStorage``
  (the bounded table keeps limits' own layout, so limits' methods keep working on it);
- ``RedisStorage._previous_window_key``, ``RedisStorage._current_window_key`` (the sliding
  window's two Redis keys, for the gate to pass as ``KEYS``);
- ``limits.util.get_package_data`` and the Lua files under ``resources/redis/lua_scripts``
  (the gate runs limits' own scripts).

Private names of redis-py used by :mod:`~flask_apiguard.ratelimit.tracking` (pinned by
``tests/test_leased.py::test_the_private_names_of_redis_py_we_rely_on_exist``): a
connection's ``_parser.set_invalidation_push_handler`` (the handler of RESP3 invalidation
pushes; redis-py's own client-side cache sets it the same way).

Private names of :mod:`flask_limiter` used by :mod:`~flask_apiguard.ratelimit.adopt`, because
no public way exists (each pinned by
``tests/adoption/test_adoption.py::test_the_private_names_of_flask_limiter_we_rely_on_exist``;
flask-limiter is bounded ``<5`` in ``setup.cfg``):

- ``Limiter._check_request_limit``, ``Limiter._Limiter__inject_headers`` and
  ``Limiter._Limiter__release_context`` (its hooks, to detach them);
- the ``"__wrapper-limiter-instance"`` mark and ``__wrapped__`` of its view wrappers;
- ``Limiter._request_filters``, ``_key_prefix``, ``_marked_for_limiting``, ``_on_breach``
  (filters, key prefix, which views it decorates, the limiter-wide breach callback);
- ``Limiter._meta_limits``, ``_in_memory_fallback`` (refused when set),
  ``_storage_uri``, ``_storage_options``, ``_strategy`` (where it counts, so the guard counts
  there too);
- ``flask_limiter._manager.LimitManager`` (``limiter.limit_manager``):
  ``resolve_limits`` and its ``_application_limits``, ``_default_limits``,
  ``_decorated_limits``, ``_blueprint_limits`` (to find limits given as callables).
"""

from .probes import LimitProbe
from .shared import SharedState
from .window import WindowState

__all__ = ["LimitProbe", "SharedState", "WindowState"]
