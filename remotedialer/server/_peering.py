"""
HA peering: the outgoing link from this server to one peer (docs/protocol.md section 5).

Each server keeps a client WebSocket open to every peer, authenticated with
its own peer id and token.  Over that link it announces its local client
sessions (AddClient at link start and on every add, RemoveClient on every
removal), and it answers the peer's Connect ``<clientKey>::<proto>`` by
dialing through its own local session of that client -- never onwards to
another peer, so a dial cannot loop.

The other direction -- recording what a peer announced and dialing through
it -- is the incoming peer session's, which the registry routes to.

A link goes through an HTTP proxy under the same rule as a client's
tunnel (L{remotedialer.client._proxyrule}): the server's C{peer_proxy}, by
default C{HTTPS_PROXY}/C{HTTP_PROXY}/C{NO_PROXY} as Go reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from twisted.application.internet import backoffPolicy
from twisted.internet.ssl import Certificate
from zope.interface import implementer

from remotedialer.client._client import endpoint_for_url
from remotedialer.client._link import WebSocketLink
from remotedialer.client._proxyrule import ProxyRule
from remotedialer.protocol._text import public_url
from remotedialer.server._resource import PEER_ID_HEADER, PEER_TOKEN_HEADER
from remotedialer.tunnel._interfaces import ISession, ISessionObserver
from remotedialer.tunnel._session import Session
from remotedialer.tunnel._tunnellog import link_down, link_retry, link_up
from remotedialer.tunnel._websocket import TunnelProtocol, client_factory

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot
    from twisted.internet.interfaces import IReactorTime

    from remotedialer.protocol._limits import SessionLimits
    from remotedialer.server._registry import SessionRegistry
    from remotedialer.tunnel._interfaces import IDialPolicy
    from remotedialer.tunnel._session import SessionFactory


#: Go retries a peer every 5 s; we back off up to that.
PEER_RETRY_MAX = 5.0


class PeeringServer(Protocol):
    """What a peer link needs of its server (L{remotedialer.server._server.Server} is one)."""

    peer_id: str | None
    peer_token: str | None
    reactor: IReactorTime
    sessions: SessionRegistry
    session_factory: SessionFactory
    session_limits: SessionLimits
    ping_interval: float
    idle_timeout: float
    draining: bool

    @property
    def peer_dialer(self) -> IDialPolicy: ...


@implementer(ISessionObserver)
class PeerLink(WebSocketLink):
    """
    The link to peer C{peer_id} at C{url}, kept up (with backoff) while the
    service runs; through the proxy C{proxies} gives for C{url}, if any.
    """

    def __init__(
        self,
        server: PeeringServer,
        peer_id: str,
        token: str,
        url: str,
        trust_root: IOpenSSLTrustRoot | Certificate | None = None,
        proxies: ProxyRule | None = None,
    ) -> None:
        # Peering needs both (Server.add_peer checks).
        assert server.peer_id is not None and server.peer_token is not None
        headers = {PEER_ID_HEADER: server.peer_id, PEER_TOKEN_HEADER: server.peer_token}
        self.proxy = (proxies or ProxyRule()).proxy_for(url)
        super().__init__(
            server.reactor,
            endpoint_for_url(server.reactor, url, trust_root=trust_root, proxy=self.proxy),
            client_factory(self, url, headers, server.reactor,
                           server.ping_interval, server.idle_timeout, server.session_limits),
            backoffPolicy(initialDelay=0.5, maxDelay=PEER_RETRY_MAX),
        )
        self.name = f"peer:{peer_id}"
        self.server = server
        self.peer_id = peer_id
        self.token = token
        self.url = url

    def __repr__(self) -> str:
        return f"<PeerLink {self.peer_id} {self.url}>"

    def same_as(self, token: str, url: str) -> bool:
        return (self.token, self.url) == (token, url)

    def startService(self) -> None:
        if self.proxy is None:
            self.log.info("peer {peer}: linking to {url}", peer=self.peer_id, url=public_url(self.url))
        else:
            self.log.info("peer {peer}: linking to {url} through proxy {proxy} ({source})", peer=self.peer_id,
                          url=public_url(self.url), proxy=str(self.proxy), source=self.proxy.source)
        super().startService()

    # The registry tells us of local sessions while the link is up.

    def session_added(self, session: ISession) -> None:
        if self.session is not None:
            self.session.announce_client(session.client_key, session.session_key, True)

    def session_removed(self, session: ISession) -> None:
        if self.session is not None:
            self.session.announce_client(session.client_key, session.session_key, False)

    # The link.

    def make_session(self, protocol: TunnelProtocol) -> Session:
        return self.server.session_factory.session(
            protocol,
            client_key=self.peer_id,
            dials_as_client=True,
            dialer=self.server.peer_dialer,
        )

    def link_opened(self, session: Session, protocol: TunnelProtocol) -> None:
        link_up(self.log, session, self.url, peer=self.peer_id)
        self.tunnel_usable()
        # A draining server has told its peers its clients are leaving: a
        # peer found meanwhile is not told otherwise.
        for local in self.server.sessions.local_sessions() if not self.server.draining else ():
            session.announce_client(local.client_key, local.session_key, True)
        self.server.sessions.observe(self)

    def link_closed(self, session: Session) -> None:
        link_down(self.log, session, self.url, peer=self.peer_id)
        self.server.sessions.unobserve(self)

    @property
    def attempted_url(self) -> str:
        return self.url

    def retrying(self, url: str, reason: str, wait: float) -> None:
        link_retry(self.log, url, reason, wait, peer=self.peer_id)
