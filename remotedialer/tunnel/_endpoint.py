"""
Dialing through a client, the Twisted way: an IStreamClientEndpoint for one
target behind one client, and an IAgentEndpointFactory so twisted.web's
Agent (and so treq) sends HTTP requests through the tunnel.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.error import ConnectError, NoProtocol
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IPolicyForHTTPS
from zope.interface import implementer

from remotedialer.tunnel._stream import TunnelStream


class StreamOpener(TypingProtocol):
    """Anything that opens a stream to a target behind a client (an L{IStreamOpener})."""

    def open_stream(self, client_key: str, proto: str, address: str) -> TunnelStream: ...


@implementer(IStreamClientEndpoint)
class TunnelEndpoint:
    """
    Connects to C{proto}/C{address} as seen from the client C{client_key}, e.g.
    C{TunnelEndpoint(server, "foo", "tcp", "127.0.0.1:8125")}.
    """

    def __init__(self, opener: StreamOpener, client_key: str, proto: str, address: str) -> None:
        self._opener = opener
        self._client_key = client_key
        self._proto = proto
        self._address = address

    def __repr__(self) -> str:
        return f"<TunnelEndpoint {self._client_key}:{self._proto}/{self._address}>"

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        try:
            stream = self._opener.open_stream(self._client_key, self._proto, self._address)
        except Exception:
            return defer.fail()
        protocol = protocolFactory.buildProtocol(stream.getPeer())
        if protocol is None:
            stream.loseConnection()
            return defer.fail(NoProtocol())
        if not stream.attach(protocol):
            # The protocol's connectionMade raised (logged; the stream is
            # closed): to the caller, a connection that never was.
            return defer.fail(ConnectError(
                string=f"protocol failed to start on stream to {self._proto}/{self._address}"))
        return defer.succeed(protocol)


def _netloc(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IAgentEndpointFactory)
class TunnelAgentEndpointFactory:
    """
    Endpoints for Agent: every URI is reached through C{client_key}'s
    tunnel (TCP, with TLS on top for https, verified by C{tls_policy}).
    """

    def __init__(
        self,
        opener: StreamOpener,
        client_key: str,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> None:
        self._opener = opener
        self._client_key = client_key
        self._tls_policy = tls_policy if tls_policy is not None else BrowserLikePolicyForHTTPS()

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return self.endpoint_for(uri.scheme.decode("ascii"), uri.host.decode("ascii"), uri.port)

    def endpoint_for(self, scheme: str, host: str, port: int) -> IStreamClientEndpoint:
        """The endpoint of C{scheme://host:port} (C{host} without brackets, for IPv6)."""
        endpoint: IStreamClientEndpoint = TunnelEndpoint(
            self._opener, self._client_key, "tcp", _netloc(host, port))
        if scheme == "https":
            creator = self._tls_policy.creatorForNetloc(host.encode("ascii"), port)
            endpoint = wrapClientTLS(creator, endpoint)
        return endpoint


def tunnel_agent(
    reactor: IReactorTime,
    opener: StreamOpener,
    client_key: str,
    pool: HTTPConnectionPool | None = None,
    tls_policy: IPolicyForHTTPS | None = None,
) -> Agent:
    """An Agent whose requests all go through C{client_key}'s tunnel."""
    factory = TunnelAgentEndpointFactory(opener, client_key, tls_policy)
    agent: Agent = Agent.usingEndpointFactory(reactor, factory, pool=pool)
    return agent
