"""The client's address: the peer, or what trusted proxies say in `X-Forwarded-For`.

A proxy appends the address it received the request from, so the chain is read from the
right: each hop believed (a configured trusted proxy) hands over to the address it
reports, and the first address that is not a trusted proxy is the client. Anything a
client writes into the header itself sits left of that point and is ignored.

This runs for every pixel hit, so addresses are parsed once (cached) and proxy ranges are
compared as integers: `ipaddress`'s own membership test costs more than the rest of a
hit's routing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@lru_cache(maxsize=65_536)
def _parse(text: str) -> tuple[Address, int, int] | None:
    """(address, version, integer value) of `text`, or None when it isn't an address."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.split(":", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address, address.version, int(address)


@lru_cache(maxsize=64)
def _ranges(trusted: tuple[Network, ...]) -> tuple[tuple[int, int, int], ...]:
    return tuple((n.version, int(n.network_address), int(n.netmask)) for n in trusted)


def _trusted(parsed: tuple[Address, int, int] | None, trusted: tuple[Network, ...]) -> bool:
    if parsed is None:
        return False
    _, version, value = parsed
    return any(v == version and value & mask == net for v, net, mask in _ranges(trusted))


def is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    if not address or not trusted:
        return False
    return _trusted(_parse(address), tuple(trusted))


def resolve_client_ip(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """The client address of a request from `peer` carrying `X-Forwarded-For`."""
    networks = tuple(trusted)
    current = _parse(peer) if peer else None
    if forwarded_for and networks:
        for entry in reversed(forwarded_for.split(",")):
            if not _trusted(current, networks):
                break
            parsed = _parse(entry)
            if parsed is None:
                break  # a garbled hop: believe nothing further left
            current = parsed
    return str(current[0]) if current is not None else None
