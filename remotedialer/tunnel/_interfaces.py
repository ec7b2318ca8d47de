"""
The points where users and the programs plug into remotedialer, as
zope.interface interfaces.  Layers speak to each other only through these:
the WebSocket protocols know an L{ISessionOwner}, never the server or
client class behind it.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IConsumer, IPushProducer, IStreamClientEndpoint, ITransport
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from zope.interface import Attribute, Interface

from remotedialer.protocol._multiplexer import FlowSummary
from remotedialer.tunnel._identity import Credentials, Identity

__all__ = [
    "IDialPolicy",
    "IFlowTransport",
    "IPeerObserver",
    "ISessionObserver",
    "ISessionOwner",
    "IStreamOpener",
    "ITrafficObserver",
    "ITunnelAuthorizer",
    "ITunnelConnection",
    "ITunnelStream",
    "IStreamCarrier",
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

    def open_stream(client_key: str, proto: str, address: str) -> ITunnelStream:
        """
        A new L{ITunnelStream} to C{proto}/C{address} as seen from
        C{client_key}; raises L{ClientNotConnected} if no session reaches it.
        """


class ISessionOwner(Interface):
    """What a tunnel WebSocket tells as it opens and closes (a server, a client, a peer link)."""

    def session_opened(protocol: ITunnelConnection, identity: Identity | None) -> ISession:
        """
        The WebSocket C{protocol} is open: build and return its L{ISession}.
        C{identity} is the L{Identity} the upgrade settled (None on the
        dialing side).
        """

    def session_closed(session: ISession) -> None:
        """C{session}'s WebSocket is gone (its streams have ended)."""

    def link_failed(reason: str, retry_after: float | None = None) -> None:
        """
        A dialed WebSocket ended before it opened (refused upgrade, failed
        TLS handshake...); C{reason} says why, in one printable line.
        C{retry_after}: the seconds the server asked us to wait before the
        next attempt (its 429 or 503 said C{Retry-After}), or None.
        """


class ISessionObserver(Interface):
    """Hears of a server's local client sessions (peer links announce them)."""

    def session_added(session: ISession) -> None:
        """A client session was added."""

    def session_removed(session: ISession) -> None:
        """A client session was removed."""


class IPeerObserver(Interface):
    """Hears what peer sessions announce (AddClient / RemoveClient)."""

    def client_added(session: ISession, client_key: str, session_key: int) -> None:
        """Peer C{session} has client C{client_key}/C{session_key} behind it."""

    def client_removed(session: ISession, client_key: str, session_key: int) -> None:
        """Peer C{session} no longer has C{client_key}/C{session_key}."""


class ITrafficObserver(Interface):
    """
    Hears of every session's start and end, of its streams opening and
    closing and of the dials it makes: what metrics count.  Called on the
    reactor, once per event (never per byte): keep each call cheap.
    """

    def session_started(session: ISession) -> None:
        """C{session} was made (its WebSocket is open)."""

    def session_ended(session: ISession) -> None:
        """C{session} is over; its streams have ended (their L{stream_closed} came first)."""

    def stream_opened(session: ISession, stream: ITunnelStream) -> None:
        """A stream of C{session} began: one we opened, or a Connect from the far side."""

    def stream_closed(session: ISession, stream: ITunnelStream) -> None:
        """A stream of C{session} ended (exactly once for each L{stream_opened})."""

    def stream_refused(session: ISession | None, reason: str) -> None:
        """
        A stream we were asked to open could not be: C{reason} is
        C{no_route} (no session reaches the client) or C{draining} (the
        server is shutting down), C{session} then None; or
        C{too_many_streams} or C{session_closed}.
        """

    def dial_finished(session: ISession, seconds: float, failure: Failure | None) -> None:
        """
        A dial made for the far side's Connect connected (C{failure} None)
        or failed, C{seconds} after the Connect arrived.
        """


class ITunnelConnection(Interface):
    """
    What a session needs of the WebSocket carrying it (besides sending
    messages): to drop it on fatal input, to ask whether the far side is
    alive, and to hear once the far side has read all that was sent.
    """

    def send_binary(data: bytes) -> None:
        """Send C{data} as one binary message."""

    def drop() -> None:
        """Abort the connection at once."""

    def close(code: int, reason: str) -> None:
        """
        Close the connection telling the far side why (a WebSocket close
        frame with C{code} and C{reason}); aborted if the far side does not
        answer within a few seconds.
        """

    def probe(timeout: float) -> Deferred[bool]:
        """Fires True once the far side shows it is alive, False after C{timeout} seconds."""

    def round_trip(callback: Callable[[], object]) -> None:
        """Call C{callback} once the far side has read everything sent so far."""

    def peer_address() -> IAddress | None:
        """The far end's address (None once the connection is gone)."""


class ISession(Interface):
    """The adapter of one tunnel WebSocket (see L{remotedialer.tunnel._session.Session})."""

    client_key = Attribute("the client (or peer id) this session belongs to")
    session_key = Attribute("a random int63 telling it from other sessions of that key")
    is_peer = Attribute("the far side is a peer server")
    closed = Attribute("the session has ended")
    dials_as_client = Attribute("this side dialed the WebSocket (a client's tunnel, a peer link)")
    fingerprint = Attribute("the credential that proved the client key (None: not known)")
    remote_addr = Attribute("the far end's address, as text")
    opened_at = Attribute("when the session began (the clock's seconds)")
    superseded = Attribute("a newer session of the same owner took over")
    pending_dials = Attribute("dials under way for the far side's Connects")
    bytes_sent = Attribute("bytes of messages sent")
    bytes_received = Attribute("bytes of messages received")
    error_bytes_sent = Attribute("bytes of Error messages sent")

    def flow_summary() -> FlowSummary:
        """Where the session's streams stand now."""

    def open_stream(proto: str, address: str) -> ITunnelStream:
        """A new stream to C{proto}/C{address} on the far side."""

    def message_received(data: bytes) -> int:
        """One binary WebSocket message arrived; returns the bytes of the replies it provoked."""

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


class ITunnelStream(IFlowTransport):
    """One stream of a tunnel session, as a transport (see L{remotedialer.tunnel._stream.TunnelStream})."""

    conn_id = Attribute("the stream's id on the wire")
    target = Attribute("the C{proto/address} this stream reaches (or was asked for)")


class IStreamCarrier(Interface):
    """What a stream needs of the session carrying it (L{remotedialer.tunnel._session.Session})."""

    mux = Attribute("the session's sans-IO Multiplexer")
    clock = Attribute("the IReactorTime that schedules what must not run re-entrantly")
    cooperate = Attribute("drives pull producers registered on streams (None: Twisted's cooperator)")

    def stream_write(stream: ITunnelStream, data: bytes) -> None:
        """Queue C{data} on C{stream} and send what may be sent."""

    def flush() -> None:
        """Send what the multiplexer has queued."""

    def stream_ended(stream: ITunnelStream) -> None:
        """C{stream} has ended on our side."""
