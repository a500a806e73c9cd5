"""Step 1: the request id, generated, or taken from the client only when trusted and well-formed."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from ..config import GuardConfig

_WELL_FORMED = re.compile(r"[A-Za-z0-9._-]{1,128}")


class RequestIds:
    """Resolves the id of each request. Never echoes CRLF, oversize or odd input."""

    __slots__ = ("environ_key", "header", "trust")

    def __init__(self, config: GuardConfig) -> None:
        self.header = config.request_id_header
        self.environ_key = "HTTP_" + self.header.upper().replace("-", "_")
        self.trust = config.trust_request_id

    def resolve(self, environ: Mapping[str, Any]) -> str:
        if self.trust:
            incoming = environ.get(self.environ_key)
            if incoming and _WELL_FORMED.fullmatch(incoming):
                return str(incoming)
        return new_request_id()


def new_request_id() -> str:
    """32 random hex characters from the operating system's CSPRNG.

    An id names a request in logs and grants nothing, but it is sent to anyone who asks: drawn
    from the global :mod:`random` generator, about 156 of them would give away its whole state,
    and with it every later ``random`` value of the app. The guard never reads that generator.
    """
    return os.urandom(16).hex()
