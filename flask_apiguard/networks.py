"""Sets of IP networks, for ``APIGUARD_IP_DENYLIST``, ``APIGUARD_RATELIMIT_EXEMPT_NETWORKS`` and
``@allow_networks``.

A :class:`NetworkSet` is compiled once (at start-up, or when a decorator is applied) from CIDR
strings into sorted, merged integer ranges per IP version, so a lookup is one bisection
whatever the length of the list. The address looked up is the client address the whole guard
uses (``request.remote_addr`` after :mod:`flask_apiguard.layers.proxies`: a forged
``X-Forwarded-For`` from an untrusted hop never counts). An IPv4-mapped IPv6 address
(``::ffff:10.0.0.1``) is looked up as the IPv4 address it carries; a port some proxies
append is ignored; anything that is not an address matches no network.
"""

from __future__ import annotations

import functools
import ipaddress
from bisect import bisect_right
from collections.abc import Iterable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_networks(value: object, where: str) -> tuple[Network, ...]:
    """``value`` (a list of CIDR strings, or one comma-separated string) as networks.

    :raises ValueError: naming ``where`` and the entry that is not a network.
    """
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple | set | frozenset):
        raise ValueError(f"{where}: expected a list of networks such as ['10.0.0.0/8'], "
                         f"got {type(value).__name__}.")
    out: list[Network] = []
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"{where}: {item!r} is not a network; write it as a string such as "
                             "'10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'.")
        try:
            out.append(ipaddress.ip_network(item.strip(), strict=True))
        except ValueError:
            raise ValueError(
                f"{where}: {item!r} is not a network. Write an address or a CIDR whose host "
                "bits are zero, such as '10.0.0.0/8', '192.0.2.7' or '2001:db8::/32'."
            ) from None
    return tuple(out)


def _merged(ranges: Iterable[tuple[int, int]]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    starts: list[int] = []
    ends: list[int] = []
    for start, end in sorted(ranges):
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return tuple(starts), tuple(ends)


@functools.lru_cache(maxsize=8192)
def address_of(address: str | None) -> tuple[int, int] | None:
    """``(version, integer)`` of a client address (IPv4-mapped IPv6 as IPv4, a port dropped),
    or ``None`` when it is not an address."""
    if not address:
        return None
    text = address.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # IPv4 with a port; a bare IPv6 has several colons
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


def intersection(sets: Iterable[NetworkSet]) -> NetworkSet | None:
    """The addresses every set holds, as one set (CIDRs either nest or are disjoint, so the
    result is exact); ``None`` for no sets at all (no restriction)."""
    result: tuple[Network, ...] | None = None
    for one in sets:
        if result is None:
            result = one.networks
            continue
        mine = result
        result = tuple(
            {a for a in mine for b in one.networks if _within(a, b)}
            | {b for b in one.networks for a in mine if _within(b, a)}
        )
    return None if result is None else NetworkSet(sorted(result, key=lambda n: (n.version, n)))


def _within(inner: Network, outer: Network) -> bool:
    return inner.version == outer.version and inner.subnet_of(outer)  # type: ignore[arg-type]


class NetworkSet:
    """Networks compiled for lookups: ``address in networks`` (an address string)."""

    __slots__ = ("_v4", "_v6", "networks")

    def __init__(self, networks: Iterable[Network]) -> None:
        self.networks = tuple(networks)
        v4 = [(int(n.network_address), int(n.broadcast_address))
              for n in self.networks if n.version == 4]
        v6 = [(int(n.network_address), int(n.broadcast_address))
              for n in self.networks if n.version == 6]
        # An IPv4-mapped IPv6 network (::ffff:10.0.0.0/104) is the IPv4 network it maps.
        mapped = ipaddress.IPv6Network("::ffff:0:0/96")
        for n in self.networks:
            if n.version == 6 and n.subnet_of(mapped):
                base = int(mapped.network_address)
                v4.append((int(n.network_address) - base, int(n.broadcast_address) - base))
        self._v4 = _merged(v4)
        self._v6 = _merged(v6)

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, address: object) -> bool:
        found = address_of(address) if isinstance(address, str) else None
        if found is None:
            return False
        version, value = found
        starts, ends = self._v4 if version == 4 else self._v6
        index = bisect_right(starts, value) - 1
        return index >= 0 and value <= ends[index]

    def __repr__(self) -> str:
        return f"NetworkSet({[str(n) for n in self.networks]!r})"

    def texts(self) -> list[str]:
        """The networks as written in their canonical form (for ``flask apiguard routes``)."""
        return [str(n) for n in self.networks]
