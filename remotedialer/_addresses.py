"""
Addresses of tunnel streams: Go's C{host:port} splitting, and the Twisted
address a stream reports for its C{proto/address} target.

A stream to C{tcp/10.0.0.5:6443} reports C{IPv4Address("TCP", "10.0.0.5",
6443)} as its peer, as a TCP connection to that target would, so code that
looks at C{transport.getPeer()} (TLS, logging, twisted.web) sees an
ordinary address.  Targets of other protos keep a L{TunnelAddress}.
"""

from __future__ import annotations

import ipaddress

import attr
from twisted.internet.address import HostnameAddress, IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from zope.interface import implementer

TCP_PROTOS = ("tcp", "tcp4", "tcp6")


@implementer(IAddress)
@attr.frozen
class TunnelAddress:
    """
    The address of one end of a tunnel stream that is not a TCP target:
    the session carrying it (proto C{tunnel}, address the session key), or
    a target of another proto (C{unix/...}).
    """

    proto: str
    address: str
    client_key: str = ""

    def __str__(self) -> str:
        where = f"{self.proto}/{self.address}"
        return f"{self.client_key}:{where}" if self.client_key else where


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


def target_address(proto: str, address: str, client_key: str = "") -> IAddress:
    """The Twisted address of the target C{proto/address} (see module docstring)."""
    if proto in TCP_PROTOS:
        try:
            host, port = split_host_port(address)
        except ValueError:
            pass
        else:
            try:
                ip = ipaddress.ip_address(host)
            except ValueError:
                return HostnameAddress(host.encode("ascii", "replace"), port)
            if ip.version == 4:
                return IPv4Address("TCP", host, port)
            return IPv6Address("TCP", host, port)
    return TunnelAddress(proto, address, client_key)
