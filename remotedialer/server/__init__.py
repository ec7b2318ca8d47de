"""
The server role: accepts tunnels (and peer links), keeps the registry
of sessions, and opens streams to any client it or a peer reaches.  Also
the rule for who may call into the clients' networks (L{_access}) and the
splice of a caller's connection to a stream, which the front door and the
proxies above both use.

Module map:
    _server       the server object
    _registry     its sessions and the routing rule
    _resource     the tunnel's twisted.web resource: authenticate, then upgrade
    _auth         ready tunnel authorizers: tokens, mutual TLS
    _ratelimit    failed authentications held to a budget per address (successes never wait)
    _forwarded    a tunnel's caller behind trusted proxies (X-Forwarded-For)
    _guard        a guard in front of the site: request heads complete, quick, bounded;
                  on TLS it names the site's protocols (ALPN)
    _bounds       every request of a connection bounded by the guard's limits (431),
                  and its body's framing (400)
    _site         the server's web site: access log opt-in, bodies streamed, HEAD bodiless
    _drain        graceful drain: refuse new work, tell peers, let streams finish
    _peering      the outgoing link to a peer server (HA)
    _discovery    peers found by resolving a DNS name
    _access       who may call through this server (front door and proxies)
    _own          this server's own listeners: the one "is this target one of mine" rule
    _splice       a caller's connection spliced to a tunnel stream
    _forwardstats each forwarder listener's counters
"""

from remotedialer.server._access import FrontDoorAccess, ProxyAccess, Route
from remotedialer.server._auth import CertificateAuthorizer, TokenAuthorizer, hash_token
from remotedialer.server._discovery import PeerDiscovery
from remotedialer.server._forwarded import TrustedProxies
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.server._guard import HeaderGuardFactory
from remotedialer.server._own import OwnListeners
from remotedialer.server._ratelimit import FailureLimiter
from remotedialer.server._resource import TunnelResource, header_authorizer
from remotedialer.server._server import Server
from remotedialer.server._site import ServerSite
from remotedialer.server._splice import Forwarder

__all__ = [
    "Server",
    "TunnelResource",
    "header_authorizer",
    "CertificateAuthorizer",
    "TokenAuthorizer",
    "hash_token",
    "FailureLimiter",
    "TrustedProxies",
    "HeaderGuardFactory",
    "ServerSite",
    "PeerDiscovery",
    "FrontDoorAccess",
    "ProxyAccess",
    "OwnListeners",
    "Route",
    "Forwarder",
    "ForwarderStats",
]
