"""
Ways into the clients' networks besides the front door: port forwards,
an HTTP CONNECT proxy and a SOCKS5 proxy, each splicing a caller's
connection to a tunnel stream (L{remotedialer.server._splice}).  Never
imports L{remotedialer.frontdoor}.

Module map:
    _forward       port forwards: a listener's connections to one target
    _handshake     what both proxies share before they splice
    _connectproxy  the HTTP CONNECT proxy (h11 parses the head)
    _socks         the SOCKS5 handshake, sans-IO
    _socksproxy    the SOCKS5 proxy over that handshake
"""

from remotedialer.proxies._connectproxy import ConnectProxyFactory
from remotedialer.proxies._forward import PortForwardFactory
from remotedialer.proxies._socksproxy import SocksProxyFactory

__all__ = [
    "PortForwardFactory",
    "ConnectProxyFactory",
    "SocksProxyFactory",
]
