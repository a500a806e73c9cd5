"""Step 3: the trusted-host allow-list (``APIGUARD_TRUSTED_HOSTS``), as Django's ALLOWED_HOSTS."""

from __future__ import annotations

import re

from ..config import GuardConfig
from ..errors import InvalidHost

_HOSTNAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")
_IPV6 = re.compile(r"\[[0-9a-f:.]+\]")


def split_host(host: str) -> str | None:
    """The lower-cased host name of a ``Host`` value without its port, or None if malformed."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        if end == -1:
            return None
        name, rest = host[: end + 1], host[end + 1 :]
        if not _IPV6.fullmatch(name):
            return None
    else:
        name, _, port = host.partition(":")
        rest = f":{port}" if port or host.endswith(":") else ""
        if not name or not _HOSTNAME.fullmatch(name):
            return None
    if rest and not (rest.startswith(":") and rest[1:].isdigit() and len(rest) <= 6):
        return None
    return name.rstrip(".")


class TrustedHosts:
    """``api.example.com`` matches itself; ``.example.com`` the domain and every subdomain."""

    __slots__ = ("any", "exact", "suffixes")

    def __init__(self, config: GuardConfig) -> None:
        hosts = config.trusted_hosts or ()
        self.any = "*" in hosts
        self.exact = frozenset(h.lstrip(".") for h in hosts if h != "*")
        self.suffixes = tuple(h for h in hosts if h.startswith("."))

    def check(self, host: str) -> None:
        name = split_host(host)
        if name is None:
            raise InvalidHost("The Host header is malformed.")
        if self.any or name in self.exact or name.endswith(self.suffixes):
            return
        raise InvalidHost()
