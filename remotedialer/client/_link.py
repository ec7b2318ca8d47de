"""
An outgoing WebSocket link kept up by ClientService: what the client and
a server's peer links share.

The upgrade is watched here rather than in ClientService's
prepareConnection: a connection lost while "preparing" trips ClientService's
state machine (NoTransition).  Refused upgrades still back off, because the
retry policy is given the count of links that failed to open.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, cast

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from remotedialer.tunnel._interfaces import ISession, ISessionOwner, ITunnelConnection
from remotedialer.tunnel._session import Session
from remotedialer.tunnel._websocket import TunnelClientFactory, _TunnelProtocol

if TYPE_CHECKING:
    from remotedialer.tunnel._identity import Identity

#: The dialing side hears which streams we hold this often (Go: 60 s).
SYNC_INTERVAL = 60


@implementer(IStreamClientEndpoint)
class NamedEndpoint:
    """An endpoint that says which URL it reaches (ClientService logs its endpoint)."""

    def __init__(self, endpoint: IStreamClientEndpoint, name: str) -> None:
        self._endpoint = endpoint
        self._name = name

    def __repr__(self) -> str:
        return self._name

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        return self._endpoint.connect(protocolFactory)


@implementer(IStreamClientEndpoint)
class _CountedEndpoint:
    """Counts the link's connection attempts (metrics); says where it connects, as the endpoint does."""

    def __init__(self, link: WebSocketLink, endpoint: IStreamClientEndpoint) -> None:
        self._link = link
        self._endpoint = endpoint

    def __repr__(self) -> str:
        return repr(self._endpoint)

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        self._link.attempts += 1
        return self._endpoint.connect(protocolFactory)


@implementer(ISessionOwner)
class WebSocketLink(Service):
    """
    Keeps one tunnel WebSocket open while running.  Subclasses build the
    session (L{make_session}) and hear of the link opening and closing.
    """

    log = Logger()
    session: Session | None = None
    #: Connection attempts, tunnels opened and tunnels closed, since made (metrics).
    attempts = 0
    opened = 0
    closed = 0

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        websocket_factory: TunnelClientFactory,
        retry_policy: Callable[[int], float],
    ) -> None:
        self.reactor = reactor
        self._endpoint = endpoint
        self._factory = websocket_factory
        self._retry_policy = retry_policy
        self._failed_opens = 0
        self._service: ClientService | None = None
        self._protocol: _TunnelProtocol | None = None
        self._sync: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        self._service = ClientService(
            _CountedEndpoint(self, self._endpoint),
            self._factory,
            retryPolicy=lambda attempt: self._retry_policy(max(attempt, self._failed_opens)),
            clock=self.reactor,
        )
        self._service.startService()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        if self.session is not None:
            self.session.note_end("stopped")
        if self._protocol is not None and self._protocol.transport is not None:
            # A TLS transport will not close while a producer is registered.
            self._protocol.transport.unregisterProducer()
        service, self._service = self._service, None
        return service.stopService() if service is not None else defer.succeed(None)

    # For subclasses.

    def make_session(self, protocol: _TunnelProtocol) -> Session:
        raise NotImplementedError

    def link_opened(self, session: Session, protocol: _TunnelProtocol) -> None:
        """The tunnel is open."""

    def link_closed(self, session: Session) -> None:
        """The tunnel is gone (the service reconnects by itself)."""

    def link_failed(self) -> None:
        """A connection ended without a usable tunnel (refused upgrade, failed hook)."""
        self._failed_opens += 1

    # ISessionOwner: called by the WebSocket protocol.

    def session_opened(self, protocol: ITunnelConnection, identity: Identity | None = None) -> ISession:
        ours = cast("_TunnelProtocol", protocol)  # (our factory's protocols call this)
        session = self.make_session(ours)
        self.session = session
        self.opened += 1
        self._protocol = ours
        # The dialed-to side prunes streams we no longer hold (Go's clients
        # and peer links both do this).
        self._sync = LoopingCall(session.send_sync_connections)
        self._sync.clock = self.reactor
        self._sync.start(SYNC_INTERVAL, now=False)
        self.link_opened(session, ours)
        return session

    def session_closed(self, session: ISession) -> None:
        if self.session is session:
            self.session = None
            self.closed += 1
            self._protocol = None
            if self._sync is not None and self._sync.running:
                self._sync.stop()
            self._sync = None
            self.link_closed(cast("Session", session))
