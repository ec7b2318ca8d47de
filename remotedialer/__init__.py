"""
remotedialer: a reverse-tunnel dialer for Twisted, speaking the wire
protocol of Go's rancher/remotedialer.

A client opens one WebSocket to a server; the server then dials TCP
connections "through" it, many streams multiplexed over that WebSocket,
each a real Twisted transport with PAUSE/RESUME back-pressure.

Module map (one idea each):
    _codec      wire format: messages and Go's varints
    _stream     one stream as a Twisted transport
    _session    the streams of one WebSocket
    _relay      byte pipe between two transports (portforward idiom)
    _dialer     Connect targets -> endpoints, under an authorizer
    _websocket  Autobahn protocols binding a session to a WebSocket
    _resource   the tunnel's twisted.web resource (auth, then upgrade)
    _registry   a server's sessions and the routing rule
    _server     the server object
    _endpoint   endpoints and Agent endpoint factory through a client
    _link       an outgoing WebSocket kept up by ClientService
    _client     the client service (a link serving the server's dials)
    _peering    a server's outgoing link to a peer (HA)
    _frontdoor  the HTTP front door /client/<key>/<scheme>/<host>/<path>
    _tap/       the twistd programs
"""

from remotedialer._client import TunnelClient, endpoint_for_url
from remotedialer._codec import MalformedMessage
from remotedialer._dialer import LocalDialer, allow_all, allow_patterns, deny_all
from remotedialer._endpoint import (
    ClientNotConnected,
    TunnelAgentEndpointFactory,
    TunnelEndpoint,
    tunnel_agent,
)
from remotedialer._resource import (
    AuthorizationError,
    Identity,
    TunnelResource,
    header_authorizer,
)
from remotedialer._server import Server
from remotedialer._session import Session
from remotedialer._stream import StreamError, TunnelAddress, TunnelStream
from remotedialer._websocket import nvx_active

__all__ = [
    "AuthorizationError",
    "ClientNotConnected",
    "Identity",
    "LocalDialer",
    "MalformedMessage",
    "Server",
    "Session",
    "StreamError",
    "TunnelAddress",
    "TunnelAgentEndpointFactory",
    "TunnelClient",
    "TunnelEndpoint",
    "TunnelResource",
    "TunnelStream",
    "allow_all",
    "allow_patterns",
    "deny_all",
    "endpoint_for_url",
    "header_authorizer",
    "nvx_active",
    "tunnel_agent",
]
