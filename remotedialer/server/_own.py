"""
This server's own listeners, and the one rule for "is this target one of
them", which the front door, the CONNECT and SOCKS5 proxies and the port
forwards all ask (through L{remotedialer.server._access.FrontDoorAccess}),
so that no request can be sent back into the server itself through a
client on this host (one such request per hop, each holding a tunnel
stream, without end).

A listener is the address and port it bound, added when it starts
listening (a C{tcp:0} listener with the port it got); the programs also
add each listener as its flag describes it before any binds, so that a
C{--forward} to one of them is refused at start.

A target C{host:port} is one of them when C{port} is a port one of them
bound and C{host}, in whatever spelling (read as the client's dial rules
read it, L{remotedialer.protocol._addresses.canonical_address}), may reach
that listener (L{remotedialer.protocol._addresses.may_reach}): any
loopback address or name, the unspecified address, the address the
listener bound, and, for a listener on every interface, any address of
this host.  This host's addresses and names are what the program was told
at start (the programs: C{getaddrinfo(gethostname())}); an address added
to an interface later, or missing from that lookup, and a name other than
the loopback names and this host's own name that resolves to this host
(the server resolves no names), are not known here: those are left to the
client's dial rules (a host name rule never covers a loopback address).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from remotedialer.protocol._addresses import (
    IPAddress,
    canonical_address,
    is_loopback_name,
    may_reach,
    plain_name,
    split_host_port,
)

__all__ = ["OwnListeners"]

_LOOPBACK: tuple[IPAddress, ...] = (ipaddress.IPv4Address("127.0.0.1"), ipaddress.IPv6Address("::1"))
_EVERY_INTERFACE: IPAddress = ipaddress.IPv6Address("::")


class OwnListeners:
    """
    The addresses and ports this server's listeners bound (L{add}), and
    whether a target is one of them (L{holds}); see the module docstring.

    @param host_names: this host's own names (as C{gethostname()}).
    @param host_addresses: this host's own addresses, in any spelling.
    """

    def __init__(self, host_names: Iterable[str] = (), host_addresses: Iterable[str] = ()) -> None:
        self._names = frozenset(plain_name(n) for n in host_names)
        self._addresses = frozenset(
            ip for ip in map(canonical_address, host_addresses) if ip is not None)
        self._bound: dict[int, set[IPAddress]] = {}

    def __repr__(self) -> str:
        listeners = sorted(f"{ip}:{port}" for port, ips in self._bound.items() for ip in ips)
        return f"<OwnListeners {' '.join(listeners) or '(none)'}>"

    @property
    def ports(self) -> frozenset[int]:
        """The ports of the listeners added so far."""
        return frozenset(self._bound)

    def add(self, host: str, port: int) -> None:
        """
        A listener bound to C{host:port}.  C{host} empty, C{0.0.0.0} or
        C{::}: every interface; a name (an C{interface=} before it binds)
        counts as every interface, unless it is a loopback name.  Port 0
        (not bound yet) is no listener.
        """
        if not port:
            return
        ip = canonical_address(host) if host else _EVERY_INTERFACE
        if ip is None:
            ip = _LOOPBACK[0] if is_loopback_name(host) else _EVERY_INTERFACE
        self._bound.setdefault(port, set()).add(ip)

    def holds(self, host: str, port: int) -> bool:
        """The target C{host} (an address in any spelling, or a name) on C{port} is one of them."""
        bound = self._bound.get(port)
        if not bound:
            return False
        targets = self._addresses_of(host)
        return any(may_reach(t, b, self._addresses) for t in targets for b in bound)

    def holds_address(self, host_port: str) -> bool:
        """As L{holds}, for C{host:port} or C{[v6]:port} (anything else: False)."""
        try:
            host, port = split_host_port(host_port)
        except ValueError:
            return False
        return self.holds(host, port)

    def _addresses_of(self, host: str) -> tuple[IPAddress, ...]:
        """What C{host} reaches, as far as this server knows without resolving names."""
        ip = canonical_address(host)
        if ip is not None:
            return (ip,)
        if is_loopback_name(host):
            return _LOOPBACK
        if plain_name(host) in self._names:
            return tuple(self._addresses)
        return ()
