"""
The Twisted adapter of the protocol core: a tunnel session over an
Autobahn WebSocket, each stream a real Twisted transport (ITransport,
IPushProducer, IConsumer) with pause and resume carried end to end.
Imports only L{remotedialer.protocol}; the client and the server are built
on it.

Module map:
    _interfaces   the plug-in points, typed by interfaces
    _exceptions   the exceptions built on Twisted's error types
    _identity     who is at the other end (plain values)
    _websocket    the Autobahn protocols carrying a session; keepalive
    _session      the adapter pumping one multiplexer; the session factory
    _stream       one stream as a Twisted transport
    _acceptor     the far side of a Connect: dial policy, dial, relay
    _relay        a byte pipe between two transports (portforward idiom)
    _endpoint     endpoints and Agent endpoint factories through a client
    _addresses    the Twisted address of a stream's target
    _producers    a pull producer driven as a push producer
    _deferred     maybeDeferred, typed
    _logtext      Twisted addresses and failures for logs (why a dial failed); a log throttle
    _tunnellog    the two log lines of a tunnel: up, and down with its reason
"""

from remotedialer.tunnel._addresses import TunnelAddress
from remotedialer.tunnel._endpoint import TunnelAgentEndpointFactory, TunnelEndpoint, tunnel_agent
from remotedialer.tunnel._exceptions import (
    ClientNotConnected,
    ProxyError,
    ServerDraining,
    StreamError,
    TunnelLinkError,
)
from remotedialer.tunnel._identity import Credentials, Identity
from remotedialer.tunnel._interfaces import (
    IDialPolicy,
    IFlowTransport,
    IPeerObserver,
    ISession,
    ISessionObserver,
    ISessionOwner,
    IStreamOpener,
    ITrafficObserver,
    ITunnelAuthorizer,
    ITunnelConnection,
)
from remotedialer.tunnel._session import Session, SessionFactory
from remotedialer.tunnel._stream import TunnelStream
from remotedialer.tunnel._websocket import nvx_active

__all__ = [
    "IDialPolicy",
    "IFlowTransport",
    "IPeerObserver",
    "ISession",
    "ISessionObserver",
    "ISessionOwner",
    "IStreamOpener",
    "ITrafficObserver",
    "ITunnelAuthorizer",
    "ITunnelConnection",
    "ClientNotConnected",
    "ProxyError",
    "ServerDraining",
    "StreamError",
    "TunnelLinkError",
    "Credentials",
    "Identity",
    "Session",
    "SessionFactory",
    "TunnelStream",
    "TunnelAddress",
    "TunnelAgentEndpointFactory",
    "TunnelEndpoint",
    "tunnel_agent",
    "nvx_active",
]
