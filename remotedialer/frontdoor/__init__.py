"""
The HTTP front door, C{/client/<key>/<scheme>/<host>/<path>}: a request
fetched from a target through a client's tunnel, over kept-alive
connections.  Above the server; never imports L{remotedialer.proxies}.

Module map:
    _resource   the /client/ resource: access, parse, exchange
    _request    a request read into a Fetch (no I/O)
    _exchange   one exchange: ask the target, relay the answer, end
    _pool       kept-alive connections, one pool per client key
    _upstream   the HTTP/1.1 client of one connection to a target (h11)
    _headlimit  the bound on the response heads read from targets
    _tls        TLS to https targets without verification, on request
"""

from remotedialer.frontdoor._resource import FrontDoor
from remotedialer.frontdoor._tls import InsecureTLSPolicy

__all__ = [
    "FrontDoor",
    "InsecureTLSPolicy",
]
