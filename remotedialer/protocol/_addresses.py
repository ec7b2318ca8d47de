"""
Target addresses as the wire carries them: Go's C{host:port} splitting;
one reading of every spelling of an IP address, shared by the client's
dial rules and the server's own-listener rule, so the two never disagree
on what a target names; the one rule for "is this host loopback"; and
whether a connection made on this host to an address may reach a listener
of this host.

Spellings (L{canonical_address}): a target is dialed by the C library's
resolver (or Go's net), which reads far more than dotted quads.  Every
form it reads as an address is read here as that address:

  - the inet_aton forms: C{127.1}, C{0x7f.1}, C{2130706433}, octal
    C{0177.0.0.1}, hex parts C{0x7F.0.0.0x1} (any case);
  - one trailing dot after them, as a URL's host parser reads it
    (C{127.0.0.1.});
  - IPv6 in any form, with or without brackets (C{[::1]},
    C{[0:0:0:0:0:0:0:1]}); an IPv4-mapped one (C{::ffff:127.0.0.1},
    C{::ffff:7f00:1}) is its IPv4 address; a zone (C{fe80::1%eth0}) is
    kept.

An IPv4-compatible address (C{::127.0.0.1}, deprecated) stays IPv6, as the
kernel dials it; L{may_reach} counts it as its IPv4 address too.  Names
are not addresses: C{localhost}, C{*.localhost}, C{ip6-localhost} and
C{ip6-loopback} (any case, one trailing dot) are the loopback names.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable

__all__ = [
    "TCP_PROTOS",
    "IPAddress",
    "canonical_address",
    "is_loopback",
    "is_loopback_name",
    "may_reach",
    "plain_name",
    "split_host_port",
]

TCP_PROTOS = ("tcp", "tcp4", "tcp6")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: What inet_aton may read as an IPv4 address (it also accepts trailing
#: junk after white space: it is never handed more than these characters).
_INET_ATON_CHARS = re.compile(r"[0-9a-fA-FxX.]+")
#: IPv4-compatible IPv6 addresses (C{::a.b.c.d}), of which :: and ::1 are not.
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")
_LOOPBACK_NAMES = frozenset({"localhost", "ip6-localhost", "ip6-loopback"})


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


@functools.lru_cache(maxsize=4096)
def canonical_address(host: str) -> IPAddress | None:
    """
    The IP address C{host} spells, in canonical form (see the module
    docstring), or None when C{host} is not an IP address.
    """
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip: IPAddress = ipaddress.ip_address(host)
    except ValueError:
        text = host[:-1] if host.endswith(".") else host
        if not _INET_ATON_CHARS.fullmatch(text) or text.endswith("."):
            return None
        try:
            return ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def plain_name(host: str) -> str:
    """C{host} as names are compared: lower case, without one trailing dot."""
    name = host.lower()
    return name[:-1] if name.endswith(".") else name


def is_loopback_name(host: str) -> bool:
    """C{host} names loopback: C{localhost}, C{*.localhost} (RFC 6761), C{ip6-localhost}, C{ip6-loopback}."""
    name = plain_name(host)
    return name in _LOOPBACK_NAMES or name.endswith(".localhost")


@functools.lru_cache(maxsize=1024)
def is_loopback(host: str) -> bool:
    """
    C{host} (a name, an address in any spelling, C{[v6]}, with or without
    a zone) is this machine's loopback.  An IPv4-mapped IPv6 address
    (C{::ffff:127.0.0.1}, how a dual-stack listener sees a local IPv4
    caller) counts as its IPv4 address: C{ipaddress} says it is not
    loopback before Python 3.13.
    """
    if is_loopback_name(host):
        return True
    ip = canonical_address(host)
    return ip is not None and ip.is_loopback


def _forms(ip: IPAddress) -> tuple[IPAddress, ...]:
    """C{ip} without its zone, and the IPv4 address an IPv4-compatible one embeds."""
    if not isinstance(ip, ipaddress.IPv6Address):
        return (ip,)
    bare = ipaddress.IPv6Address(ip.packed)
    if bare in _V4_COMPATIBLE and int(bare) > 1:
        return bare, ipaddress.IPv4Address(int(bare))
    return (bare,)


def may_reach(target: IPAddress, bound: IPAddress, host_addresses: Iterable[IPAddress] = ()) -> bool:
    """
    Whether a connection made on this host to C{target} may reach a
    listener of this host bound to C{bound}, erring on "may" (both
    canonical, L{canonical_address}; C{host_addresses} are this host's own
    addresses as far as they are known):

      - the unspecified address (C{0.0.0.0}, C{::}) reaches this host:
        every listener;
      - a listener bound to the unspecified address listens on every
        interface: any loopback address and any of C{host_addresses}
        reach it;
      - one bound to a loopback address: any loopback address (of either
        family);
      - one bound to another address: that address.
    """
    targets = _forms(target)
    bound = _forms(bound)[0]
    if any(t.is_unspecified for t in targets):
        return True
    if any(t.is_loopback for t in targets) and (bound.is_loopback or bound.is_unspecified):
        return True
    if bound.is_unspecified:
        mine = {_forms(a)[0] for a in host_addresses}
        return any(t in mine for t in targets)
    return bound in targets
