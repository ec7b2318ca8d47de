"""
The Autobahn WebSocket protocols that carry a tunnel session.

They do three things only: hand every binary message to the L{Session},
register the session as the producer of the WebSocket's TCP transport (so
a full send buffer pauses the streams), and watch for a silent link (60 s
without any frame ends the session).  Everything else is the session's.
"""

from __future__ import annotations

from autobahn.websocket import USES_NVX
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet.error import ConnectionLost
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from remotedialer._session import Session

#: A link silent this long (no frame at all, pings included) is dead.
IDLE_TIMEOUT = 60
#: The client pings this often, so a healthy link is never silent.
PING_INTERVAL = 5
#: Largest WebSocket message accepted.  Go writes a Data message per
#: Write() call, which can be large (a whole request body), so be generous.
MAX_MESSAGE_SIZE = 32 * 1024 * 1024
HANDSHAKE_TIMEOUT = 30


def nvx_active() -> bool:
    """
    Autobahn's native (NVX) masking is in use.  Without it, masked traffic
    (everything a client sends) runs at a few MB/s.
    """
    return bool(USES_NVX)


def _warn_without_nvx() -> None:
    if not nvx_active():
        Logger().warn(
            "Autobahn NVX acceleration is not active (AUTOBAHN_USE_NVX or a build "
            "without the native extension): WebSocket masking will be slow"
        )


class TunnelLinkError(ConnectionLost):
    """The WebSocket carrying a tunnel session ended."""


class _TunnelProtocol(TimeoutMixin):
    """What the server and client protocols share."""

    # Not "log": that would shadow Autobahn's own (txaio) logger, whose
    # debug calls on every frame are no-ops only while it is in charge.
    _log = Logger()
    session: Session | None = None

    def start_session(self, session: Session) -> None:
        """
        Bind C{session} to this WebSocket.  Under WebSocketResource the
        twisted.web HTTPChannel is still the socket's producer: unregister it
        before the session takes its place.
        """
        self.session = session
        self.callLater = self.factory.reactor.callLater
        self.transport.unregisterProducer()
        self.transport.registerProducer(session, True)
        self.setTimeout(IDLE_TIMEOUT)

    def send_binary(self, data: bytes) -> None:
        if self.state == self.STATE_OPEN:
            self.sendMessage(data, isBinary=True)

    def drop(self) -> None:
        self.dropConnection(abort=True)

    def dataReceived(self, data: bytes) -> None:
        if self.session is not None:
            self.resetTimeout()
        super().dataReceived(data)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.session is None:
            return
        if not isBinary:
            self._log.warn("{session}: text message is a protocol error, closing", session=self.session)
            self.session.lose(Failure(TunnelLinkError("text message received")))
            return
        self.session.message_received(payload)

    def timeoutConnection(self) -> None:
        self._log.warn("{session}: no frame for {timeout} s, closing", session=self.session,
                      timeout=IDLE_TIMEOUT)
        self.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code, reason) -> None:
        self.setTimeout(None)
        session, self.session = self.session, None
        if session is not None:
            text = reason or ("closed" if wasClean else "connection lost")
            session.connection_lost(Failure(TunnelLinkError(f"tunnel closed: {text}")))
            self.session_ended(session)

    def session_ended(self, session: Session) -> None:
        """Tell the owner (server or client) the session is over."""


class TunnelServerProtocol(_TunnelProtocol, WebSocketServerProtocol):
    """
    The server end of a tunnel.  C{identity} (client key, peer flag) was
    settled by the resource before the upgrade; the server builds the session.
    """

    identity = None

    def onOpen(self) -> None:
        self.start_session(self.factory.server._session_opened(self, self.identity))

    def session_ended(self, session: Session) -> None:
        self.factory.server._session_closed(session)


class TunnelClientProtocol(_TunnelProtocol, WebSocketClientProtocol):
    """The client end of a tunnel (also a server's outgoing peer link)."""

    def onOpen(self) -> None:
        self.start_session(self.factory.owner._session_opened(self))

    def onClose(self, wasClean: bool, code, reason) -> None:
        opened = self.session is not None
        super().onClose(wasClean, code, reason)
        if not opened:
            self._log.warn("tunnel to {url} not opened: {reason}", url=self.factory.url, reason=reason)
            self.factory.owner._link_failed()

    def session_ended(self, session: Session) -> None:
        self.factory.owner._session_closed(session)


def _set_options(factory, **extra) -> None:
    factory.setProtocolOptions(
        maxFramePayloadSize=MAX_MESSAGE_SIZE,
        maxMessagePayloadSize=MAX_MESSAGE_SIZE,
        openHandshakeTimeout=HANDSHAKE_TIMEOUT,
        closeHandshakeTimeout=5,
        **extra,
    )


def server_factory(server, reactor) -> WebSocketServerFactory:
    """The WebSocket factory behind a server's tunnel resource."""
    _warn_without_nvx()
    factory = WebSocketServerFactory(reactor=reactor)
    factory.protocol = TunnelServerProtocol
    factory.server = server
    _set_options(factory)
    return factory


def client_factory(owner, url: str, headers: dict[str, str], reactor) -> WebSocketClientFactory:
    """The WebSocket factory of a client (or peer link) dialing C{url}."""
    _warn_without_nvx()
    factory = WebSocketClientFactory(url, headers=headers, reactor=reactor)
    factory.protocol = TunnelClientProtocol
    factory.owner = owner
    _set_options(factory, autoPingInterval=PING_INTERVAL, autoPingTimeout=IDLE_TIMEOUT)
    return factory
