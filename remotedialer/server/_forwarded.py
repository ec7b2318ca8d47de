"""
Who a tunnel's caller is, behind a load balancer or Ingress that speaks
HTTP: the address in C{X-Forwarded-For}, believed only from the proxies
named as trusted.

A caller can write any C{X-Forwarded-For} it likes, so the header is read
from the right (the hop nearest to us) and only as far as each hop is
trusted: starting from the connection's peer, while the address we have is
a trusted proxy's, the next address to the left is taken as the one that
proxy spoke for.  The first address that is not a trusted proxy's (or the
leftmost one) is the caller.  From a peer that is not trusted the header is
ignored, as it is when it holds something that is not an address.

(A balancer that speaks TCP passes the caller's address in the PROXY
protocol instead: the server program's C{haproxy:} listeners read it, and
the transport's C{getPeer()} is then the caller's already.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.web.iweb import IRequest

__all__ = ["TrustedProxies", "parse_network"]

_Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_network(text: str) -> _Network:
    """A CIDR (C{10.0.0.0/8}, C{fd00::/8}) or a single address; ValueError otherwise."""
    try:
        return ipaddress.ip_network(text.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an address or CIDR network") from None


def _ip(text: str) -> _IP | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # [v6]:port
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # v4:port
        text = text.partition(":")[0]
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@attrs.frozen
class TrustedProxies:
    """
    The proxies whose C{X-Forwarded-For} is believed (see the module's
    docstring); empty: nobody's.
    """

    networks: tuple[_Network, ...] = ()

    @classmethod
    def parse(cls, texts: Iterable[str]) -> TrustedProxies:
        """From CIDRs or addresses (ValueError naming the bad one)."""
        return cls(tuple(parse_network(text) for text in texts))

    def trusts(self, ip: _IP) -> bool:
        return any(ip.version == net.version and ip in net for net in self.networks)

    def client_address(self, request: IRequest) -> IAddress:
        """C{request}'s caller: its peer, or whom its trusted proxies spoke for."""
        peer: IAddress = request.getClientAddress()
        if not self.networks:
            return peer
        host = getattr(peer, "host", None)
        current = _ip(host) if isinstance(host, str) else None
        if current is None or not self.trusts(current):
            return peer
        hops = [part for value in request.requestHeaders.getRawHeaders(b"x-forwarded-for") or ()
                for part in value.decode("latin-1").split(",")]
        forwarded = None
        while current is not None and self.trusts(current) and hops:
            current = _ip(hops.pop())
            if current is not None:
                forwarded = current
        if forwarded is None:
            return peer
        if isinstance(forwarded, ipaddress.IPv6Address):
            return IPv6Address("TCP", str(forwarded), 0)
        return IPv4Address("TCP", str(forwarded), 0)
