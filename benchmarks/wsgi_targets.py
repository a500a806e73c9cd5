"""WSGI apps for the gunicorn load run (``benchmarks/load.py``), configured by environment:

``BENCH_STORAGE_URI`` (default ``memory://``) and ``BENCH_LIMIT`` (the guarded view's limit).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import apps

_storage = os.environ.get("BENCH_STORAGE_URI", "memory://")
_limit = os.environ.get("BENCH_LIMIT", apps.LIMIT)

bare = apps.bare_flask()
guarded = apps.apiguard_app(storage_uri=_storage, limit=_limit, APIGUARD_TRUSTED_PROXIES=1)
