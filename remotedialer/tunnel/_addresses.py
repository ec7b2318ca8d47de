"""
Addresses of tunnel streams: the Twisted address a stream reports for its
C{proto/address} target (the splitting itself is the protocol core's,
L{remotedialer.protocol._addresses}).

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

from remotedialer.protocol._addresses import TCP_PROTOS, split_host_port


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
