"""
Target addresses as the wire carries them: Go's C{host:port} splitting;
and the one rule for "is this host loopback".
"""

from __future__ import annotations

import functools
import ipaddress

__all__ = ["TCP_PROTOS", "is_loopback", "split_host_port"]

TCP_PROTOS = ("tcp", "tcp4", "tcp6")


def split_host_port(address: str) -> tuple[str, int]:
    """Split C{host:port} or C{[v6]:port} as Go's net.SplitHostPort does."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        raise ValueError(f"address {address!r}: missing port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"address {address!r}: too many colons")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"address {address!r}: bad port {port!r}")
    return host, int(port)


_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """
    C{host} (a name, an address, C{[v6]}, with or without a zone) is this
    machine's loopback.  An IPv4-mapped IPv6 address (C{::ffff:127.0.0.1},
    how a dual-stack listener sees a local IPv4 caller) counts as its IPv4
    address: C{ipaddress} says it is not loopback before Python 3.13.
    """
    host = host.strip("[]").split("%", 1)[0].lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))
