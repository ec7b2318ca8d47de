"""
remotedialer: a reverse-tunnel dialer for Twisted, speaking the wire
protocol of Go's rancher/remotedialer.

A client opens one WebSocket to a server; the server then dials TCP
connections "through" it, many streams multiplexed over that WebSocket,
each a real Twisted transport with PAUSE/RESUME back-pressure.

Module map, from the wire up (one job each):
    _codec       wire format: messages and Go's varints
    _flow        receive-side flow accounting: when to Pause, Resume, cut off
    _limits      what one session, or one unauthenticated request, may cost
    _auth        ready tunnel authorizers: per-client tokens, mutual TLS
    _ratelimit   failed authentications delayed and limited per address
    _acl         the client's dial allow-list: parsed rules, canonical addresses
    _lifecycle   the stream state table
    _mux         the sans-IO multiplexer: bytes in -> events out, commands -> messages
    _addresses   host:port splitting, the Twisted address of a target
    _producers   a pull producer driven as a push producer
    _deferred    maybeDeferred, typed for callables returning a value or a Deferred
    _stream      one stream as a Twisted transport over the multiplexer
    _session     the Twisted adapter pumping one multiplexer; the session factory
    _relay       byte pipe between two transports (portforward idiom)
    _acceptor    the far side of a Connect: dial policy, dial, relay
    _dialer      Connect targets -> endpoints, under a connect-authorizer
    _interfaces  the zope.interface plug-in points
    _websocket   Autobahn protocols binding a session to a WebSocket; keepalive
    _resource    the tunnel's twisted.web resource (auth, then upgrade)
    _guard       a guard in front of the site: request heads complete, quick, bounded
    _registry    a server's sessions and the routing rule
    _server      the server object
    _endpoint    endpoints and Agent endpoint factory through a client
    _link        an outgoing WebSocket kept up by ClientService
    _client      the client service (a link serving the server's dials)
    _peering     a server's outgoing link to a peer (HA)
    _frontdoor   the HTTP front door /client/<key>/<scheme>/<host>/<path>
    _pool        the front door's kept-alive connections, one pool per client key
    _upstream    the front door's HTTP/1.1 client: one kept-alive connection to a target (h11)
    _headlimit   the bound on the response heads the front door reads
    _site        the server's web site: access log opt-in, request bodies streamed
    _tunnellog   the two log lines of a tunnel: up, and down with reason and lifetime
    _jsonlog     log events as one JSON object per line (--log-format json)
    _drain       graceful drain: refuse new work, tell peers, let streams finish
    _discovery   peers found by resolving a DNS name (a headless Service)
    _splice      a caller's TCP connection spliced to a tunnel stream, answered on the dial's first sign
    _forward     port forwards: a listener's connections to one target behind one client
    _proxyaccess who may use the proxies, and which client a request goes through
    _connectproxy  the HTTP CONNECT proxy (h11 parses the head)
    _socks       the SOCKS5 handshake, sans-IO
    _socksproxy  the SOCKS5 proxy protocol over that handshake
    _handshake   what both proxies share before they splice: a bounded handshake, its factory
    _forwardstats  each forwarder listener's counters
    _metrics     Prometheus metrics: Go's counters, gauges read at scrape time
    _status      what a server or client is doing now, as plain data
    _admin       the admin endpoint: /metrics, /healthz, /readyz, /status, the page
    _tap/        the twistd programs
    testing      test doubles: a tunnel in memory
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from remotedialer._acl import DialACL, parse_rule
from remotedialer._admin import AdminEndpoint, AdminSite
from remotedialer._auth import CertificateAuthorizer, Credentials, TokenAuthorizer, hash_token
from remotedialer._client import TunnelClient, endpoint_for_url
from remotedialer._codec import MalformedMessage
from remotedialer._connectproxy import ConnectProxyFactory
from remotedialer._dialer import LocalDialer, allow_all, allow_patterns, deny_all
from remotedialer._discovery import PeerDiscovery
from remotedialer._drain import ServerDraining
from remotedialer._endpoint import (
    ClientNotConnected,
    TunnelAgentEndpointFactory,
    TunnelEndpoint,
    tunnel_agent,
)
from remotedialer._flow import FlowLimits
from remotedialer._forward import PortForwardFactory
from remotedialer._forwardstats import ForwarderStats
from remotedialer._frontdoor import FrontDoor, FrontDoorAccess, InsecureTLSPolicy
from remotedialer._guard import HeaderGuardFactory
from remotedialer._interfaces import (
    IDialPolicy,
    IPeerObserver,
    ISession,
    ISessionObserver,
    ISessionOwner,
    IStreamOpener,
    ITrafficObserver,
    ITunnelAuthorizer,
)
from remotedialer._jsonlog import json_log_observer
from remotedialer._limits import SessionLimits, UpgradeLimits
from remotedialer._metrics import ClientMetrics, MetricsOptions, ServerMetrics
from remotedialer._proxyaccess import ProxyAccess, Route
from remotedialer._ratelimit import FailureLimiter
from remotedialer._resource import (
    AuthorizationError,
    Identity,
    TunnelResource,
    header_authorizer,
)
from remotedialer._server import Server
from remotedialer._session import Session, SessionFactory
from remotedialer._site import ServerSite
from remotedialer._socksproxy import SocksProxyFactory
from remotedialer._splice import Forwarder
from remotedialer._status import client_status, server_status
from remotedialer._stream import StreamError, TunnelAddress, TunnelStream
from remotedialer._websocket import nvx_active

try:
    __version__ = _version("remotedialer")
except PackageNotFoundError:  # running from a checkout that is not installed
    __version__ = "0+unknown"

__all__ = [
    "AdminEndpoint",
    "AdminSite",
    "ClientMetrics",
    "ITrafficObserver",
    "MetricsOptions",
    "ServerMetrics",
    "client_status",
    "server_status",
    "AuthorizationError",
    "ConnectProxyFactory",
    "Forwarder",
    "ForwarderStats",
    "PortForwardFactory",
    "ProxyAccess",
    "Route",
    "SocksProxyFactory",
    "CertificateAuthorizer",
    "Credentials",
    "DialACL",
    "FailureLimiter",
    "FrontDoorAccess",
    "TokenAuthorizer",
    "hash_token",
    "parse_rule",
    "ClientNotConnected",
    "FlowLimits",
    "FrontDoor",
    "ServerSite",
    "HeaderGuardFactory",
    "IDialPolicy",
    "IPeerObserver",
    "ISession",
    "ISessionObserver",
    "ISessionOwner",
    "IStreamOpener",
    "ITunnelAuthorizer",
    "Identity",
    "InsecureTLSPolicy",
    "LocalDialer",
    "MalformedMessage",
    "PeerDiscovery",
    "Server",
    "ServerDraining",
    "Session",
    "SessionFactory",
    "SessionLimits",
    "StreamError",
    "TunnelAddress",
    "TunnelAgentEndpointFactory",
    "TunnelClient",
    "TunnelEndpoint",
    "TunnelResource",
    "TunnelStream",
    "UpgradeLimits",
    "__version__",
    "allow_all",
    "allow_patterns",
    "deny_all",
    "endpoint_for_url",
    "header_authorizer",
    "json_log_observer",
    "nvx_active",
    "tunnel_agent",
]
