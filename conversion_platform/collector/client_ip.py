"""The client's address: the peer, or what trusted proxies say in `X-Forwarded-For`.

A proxy appends the address it received the request from, so the chain is read from the
right: each hop believed (a configured trusted proxy) hands over to the address it
reports, and the first address that is not a trusted proxy is the client. Anything a
client writes into the header itself sits left of that point and is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=65_536)
def _parse(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
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
        return address.ipv4_mapped
    return address


def is_trusted(address: str | None, trusted: Sequence[Network]) -> bool:
    if not address or not trusted:
        return False
    parsed = _parse(address)
    return parsed is not None and any(parsed in network for network in trusted)


@lru_cache(maxsize=65_536)
def resolve_client_ip(
    peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]
) -> str | None:
    """The client address of a request from `peer` carrying `X-Forwarded-For`.

    Cached: a visitor's hits repeat the same peer and header, and parsing addresses with
    `ipaddress` costs more than the rest of a hit's handling."""
    current = peer
    if not forwarded_for or not is_trusted(peer, trusted):
        return _normalised(peer)
    for entry in reversed(forwarded_for.split(",")):
        if not is_trusted(current, trusted):
            break
        parsed = _parse(entry)
        if parsed is None:
            break  # a garbled hop: believe nothing further left
        current = str(parsed)
    return _normalised(current)


def _normalised(address: str | None) -> str | None:
    if address is None:
        return None
    parsed = _parse(address)
    return str(parsed) if parsed is not None else None
