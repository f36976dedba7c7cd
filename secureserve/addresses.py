"""Client addresses: who is on the other end, and the key it is counted under.

:func:`client_ip` says which address a request comes from (the socket peer, or the
right-most untrusted ``X-Forwarded-For`` entry behind ``[server] trusted_proxies``);
:func:`address_key` turns an address into the key that per-address limits and caps
count it under (IPv6 by its /64). Used by the rate limiter, the audit log's refusal
counts and the connection caps.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Mapping, Sequence
from typing import Any, Final

from secureserve.errors import ConfigError

__all__ = ["address_key", "client_ip", "is_trusted_proxy"]

_IPV4_DOTS: Final = 3


def address_key(ip: str) -> str:
    """The address itself for IPv4, its /64 for IPv6 (one host gets a whole /64)."""
    if ":" not in ip and ip.count(".") == _IPV4_DOTS and ip.replace(".", "").isdigit():
        return ip  # dotted IPv4 as the server reported it: nothing to normalise
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return str(addr.ipv4_mapped)
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@functools.lru_cache(maxsize=16)
def _networks(trusted: tuple[str, ...]) -> tuple[_Network, ...]:
    try:
        return tuple(ipaddress.ip_network(item.strip(), strict=False) for item in trusted)
    except ValueError as exc:
        raise ConfigError(
            f"[server] trusted_proxies: {exc}; list IP addresses or CIDR blocks"
        ) from None


def _parse_ip(text: str) -> _Address | None:
    """An address from an ``X-Forwarded-For`` entry or a peer (``[v6]:port``, ``v4:port``)."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def is_trusted_proxy(address: str, trusted_proxies: Sequence[str]) -> bool:
    """Whether the socket peer ``address`` is one of ``trusted_proxies`` (addresses or blocks)."""
    if not trusted_proxies:
        return False
    peer = _parse_ip(address)
    return peer is not None and any(peer in net for net in _networks(tuple(trusted_proxies)))


def client_ip(scope: Mapping[str, Any], trusted_proxies: Sequence[str]) -> str:
    """The client's address for per-IP limits.

    The socket peer, unless the peer is one of ``trusted_proxies`` (addresses or CIDR
    blocks): then the right-most ``X-Forwarded-For`` entry that is not a trusted proxy
    (the left-most entry when every one is trusted). A malformed entry met on the way
    means the chain cannot be believed: the peer is used. ``"unknown"`` without a peer.
    """
    client = scope.get("client")
    peer_text = str(client[0]) if client else "unknown"
    if not client or not trusted_proxies:  # only the socket to believe: the server's literal
        return peer_text
    peer = _parse_ip(peer_text)
    if peer is None:
        return peer_text
    networks = _networks(tuple(trusted_proxies))
    if not any(peer in net for net in networks):
        return str(peer)
    values = [v for k, v in scope.get("headers", ()) if k.lower() == b"x-forwarded-for"]
    entries = b",".join(values).decode("latin-1").split(",") if values else []
    found: _Address | None = None
    for entry in reversed(entries):
        found = _parse_ip(entry)
        if found is None:
            return str(peer)
        if not any(found in net for net in networks):
            return str(found)
    return str(found if found is not None else peer)
