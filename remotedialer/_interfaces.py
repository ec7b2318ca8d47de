"""
The points where users and the programs plug into remotedialer, as
zope.interface interfaces.  Layers speak to each other only through these:
the WebSocket protocols know an L{ISessionOwner}, never the server or
client class behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IConsumer, IPushProducer, IStreamClientEndpoint, ITransport
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from remotedialer._auth import Credentials
    from remotedialer._resource import Identity
    from remotedialer._session import Session
    from remotedialer._stream import TunnelStream
    from remotedialer._websocket import _TunnelProtocol

__all__ = [
    "IDialPolicy",
    "IFlowTransport",
    "IPeerObserver",
    "ISessionObserver",
    "ISessionOwner",
    "IStreamOpener",
    "ITrafficObserver",
    "ITunnelAuthorizer",
]


class ITunnelAuthorizer(Interface):
    """Decides who a tunnel upgrade request comes from (docs/protocol.md section 2)."""

    def authorize(
        request: IRequest,
    ) -> str | Credentials | Deferred[str | Credentials | None] | None:
        """
        The client key of C{request} (an IRequest) -- or L{Credentials}, the
        key and a fingerprint of what proved it, for the one-key-one-owner
        rule -- None to refuse with 401 C{failed authentication}, or raise
        L{AuthorizationError} to refuse with 400 and its text.  May return a
        Deferred of the same.
        """


class IDialPolicy(Interface):
    """Answers the far side's Connect: where may it dial, and how."""

    def endpoint_for(
        proto: str, address: str
    ) -> IStreamClientEndpoint | Deferred[IStreamClientEndpoint | None] | None:
        """
        The IStreamClientEndpoint reaching C{proto}/C{address}, or None if
        that target is not allowed.  May raise, or return a Deferred; a
        failure refuses the dial with its text.
        """


class IStreamOpener(Interface):
    """Opens streams to targets behind a client (a server, or a client's own tunnel)."""

    def open_stream(client_key: str, proto: str, address: str) -> TunnelStream:
        """
        A new L{TunnelStream} to C{proto}/C{address} as seen from
        C{client_key}; raises L{ClientNotConnected} if no session reaches it.
        """


class ISessionOwner(Interface):
    """What a tunnel WebSocket tells as it opens and closes (a server, a client, a peer link)."""

    def session_opened(protocol: _TunnelProtocol, identity: Identity | None) -> Session:
        """
        The WebSocket C{protocol} is open: build and return its L{Session}.
        C{identity} is the L{Identity} the upgrade settled (None on the
        dialing side).
        """

    def session_closed(session: Session) -> None:
        """C{session}'s WebSocket is gone (its streams have ended)."""

    def link_failed() -> None:
        """A dialed WebSocket ended without a usable tunnel (refused upgrade)."""


class ISessionObserver(Interface):
    """Hears of a server's local client sessions (peer links announce them)."""

    def session_added(session: Session) -> None:
        """A client session was added."""

    def session_removed(session: Session) -> None:
        """A client session was removed."""


class IPeerObserver(Interface):
    """Hears what peer sessions announce (AddClient / RemoveClient)."""

    def client_added(session: Session, client_key: str, session_key: int) -> None:
        """Peer C{session} has client C{client_key}/C{session_key} behind it."""

    def client_removed(session: Session, client_key: str, session_key: int) -> None:
        """Peer C{session} no longer has C{client_key}/C{session_key}."""


class ITrafficObserver(Interface):
    """
    Hears of every session's start and end, of its streams opening and
    closing and of the dials it makes: what metrics count.  Called on the
    reactor, once per event (never per byte): keep each call cheap.
    """

    def session_started(session: Session) -> None:
        """C{session} was made (its WebSocket is open)."""

    def session_ended(session: Session) -> None:
        """C{session} is over; its streams have ended (their L{stream_closed} came first)."""

    def stream_opened(session: Session, stream: TunnelStream) -> None:
        """A stream of C{session} began: one we opened, or a Connect from the far side."""

    def stream_closed(session: Session, stream: TunnelStream) -> None:
        """A stream of C{session} ended (exactly once for each L{stream_opened})."""

    def stream_refused(session: Session | None, reason: str) -> None:
        """
        A stream we were asked to open could not be: C{reason} is
        C{no_route} (no session reaches the client) or C{draining} (the
        server is shutting down), C{session} then None; or
        C{too_many_streams} or C{session_closed}.
        """

    def dial_finished(session: Session, seconds: float, failure: Failure | None) -> None:
        """
        A dial made for the far side's Connect connected (C{failure} None)
        or failed, C{seconds} after the Connect arrived.
        """


class ISession(Interface):
    """The adapter of one tunnel WebSocket (see L{remotedialer._session.Session})."""

    client_key = Attribute("the client (or peer id) this session belongs to")
    session_key = Attribute("a random int63 telling it from other sessions of that key")
    is_peer = Attribute("the far side is a peer server")
    closed = Attribute("the session has ended")

    def open_stream(proto: str, address: str) -> TunnelStream:
        """A new stream to C{proto}/C{address} on the far side."""

    def message_received(data: bytes) -> None:
        """One binary WebSocket message arrived."""

    def connection_lost(reason: Failure) -> None:
        """The WebSocket is gone; every stream ends with C{reason}."""


class IFlowTransport(ITransport, IConsumer, IPushProducer):
    """
    A connection's transport as the protocols here use it, and as Twisted's
    TCP and TLS transports, L{TunnelStream} and the test doubles' transports
    all are: a transport, the consumer a relayed producer is registered on,
    and a push producer (pausing it stops delivery to its protocol).

    A type for annotations only: Twisted declares no such combination, so
    nothing provides it by declaration.
    """

    def abortConnection() -> None:
        """Close at once, dropping unsent bytes (as C{ITCPTransport.abortConnection})."""
