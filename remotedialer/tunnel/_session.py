"""
A tunnel session: the Twisted adapter that pumps one L{Multiplexer}.

The session knows nothing of WebSockets: it is given a C{send} callable for
whole binary messages and is fed each received message with
L{Session.message_received}.  It turns the multiplexer's events into
calls on L{TunnelStream} transports, hands inbound Connects to an
L{Acceptor} under the session's dial policy, tells a peer observer what a
peer announces, and sends what the multiplexer queues.

Back-pressure from the WebSocket's own TCP transport reaches the session as
IPushProducer calls (the session is registered as that transport's
producer).  Pausing every stream on each of those calls would cost O(streams)
per call; instead a stream that writes while the transport is paused is
paused itself ("blocked"), and only blocked streams are resumed when the
transport drains.  Each writer overshoots by at most one chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import Any, ClassVar, cast

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.internet.interfaces import IAddress, IProtocol, IPushProducer, IReactorTime
from twisted.internet.task import CooperativeTask
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.protocol import _codec
from remotedialer.protocol._events import (
    ClientAnnounced,
    ConnectRequested,
    DataReceived,
    ProtocolViolation,
    SendBlocked,
    StreamEnded,
)
from remotedialer.protocol._exceptions import MalformedMessage, SessionClosed, TooManyStreams
from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._handle import StreamHandle
from remotedialer.protocol._limits import SessionLimits
from remotedialer.protocol._multiplexer import FlowSummary, Multiplexer
from remotedialer.protocol._text import printable
from remotedialer.tunnel._acceptor import Acceptor, RefuseAll
from remotedialer.tunnel._addresses import TunnelAddress, target_address
from remotedialer.tunnel._interfaces import (
    IDialPolicy,
    IPeerObserver,
    ISession,
    IStreamCarrier,
    ITrafficObserver,
    ITunnelConnection,
    ITunnelStream,
)
from remotedialer.tunnel._logtext import Throttle, address, failure_text
from remotedialer.tunnel._stream import TunnelStream

__all__ = ["GOING_AWAY", "Session", "SessionFactory"]

#: The WebSocket close code of an endpoint going away (RFC 6455 7.4.1): a server shutting down.
GOING_AWAY = 1001


@implementer(IPushProducer, ISession, IStreamCarrier)
class Session:
    """
    The streams of one WebSocket (see module docstring).

    @ivar mux: the sans-IO multiplexer this session pumps.
    @ivar clock: schedules what must not run re-entrantly (connectionLost).
    """

    log = Logger()

    def __init__(
        self,
        send: Callable[[bytes], object],
        *,
        client_key: str = "",
        session_key: int | None = None,
        dials_as_client: bool = False,
        is_peer: bool = False,
        dialer: IDialPolicy | None = None,
        listener: IPeerObserver | None = None,
        trace: bool = False,
        message_ids: _codec.MessageIds | None = None,
        drop: Callable[[], object] | None = None,
        clock: IReactorTime | None = None,
        limits: FlowLimits | None = None,
        session_limits: SessionLimits | None = None,
        cooperate: Callable[[Iterator[None]], CooperativeTask[Iterator[None]]] | None = None,
        observer: ITrafficObserver | None = None,
        connection: ITunnelConnection | None = None,
    ) -> None:
        #: The WebSocket carrying the session, when it can tell once the far
        #: side has read all we sent (a ping's pong: fences the hard cap
        #: behind our Pauses, L{remotedialer.protocol._flow}) and whether the
        #: far side is alive; it is dropped on fatal input unless C{drop} says
        #: otherwise.
        self._connection = connection
        if drop is None and connection is not None:
            drop = connection.drop
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.clock: IReactorTime = clock
        #: Drives pull producers registered on streams (default: Twisted's cooperator).
        self.cooperate = cooperate
        #: The credential that proved the client key (None: not known).
        self.fingerprint: str | None = None
        #: A newer session of the same owner took over: no new dials come
        #: here, and the session ends once its streams have.
        self.superseded = False
        #: When the session began (C{clock.seconds()}), and why it ended
        #: (the first reason given; None while it lives): for the one log
        #: line a tunnel's end makes.
        self.opened_at = clock.seconds()
        #: The far end's address as text (set by whoever knows it).
        self.remote_addr = ""
        self.end_reason: str | None = None
        #: This side dialed the WebSocket (a client's tunnel, a server's peer link).
        self.dials_as_client = dials_as_client
        self.mux = Multiplexer(
            client_key=client_key,
            session_key=session_key,
            dials_as_client=dials_as_client,
            is_peer=is_peer,
            message_ids=message_ids,
            limits=limits,
            session_limits=session_limits,
            fences=connection is not None,
        )
        self._send = send
        self._drop = drop
        self._observer = observer
        # The class's logger: an instance's would refer back to the session.
        self._violations = Throttle(clock, Session.log, "protocol errors")
        self._dial_failures = Throttle(clock, Session.log, "refused or failed dials")
        self._acceptor = Acceptor(dialer if dialer is not None else RefuseAll(),
                                  self.mux.session_limits.max_pending_dials,
                                  clock, self._dialed if observer is not None else None,
                                  throttle=self._dial_failures, source=self._label())
        self._listener = listener
        self._trace = trace
        self._transport_paused = False
        self._blocked: dict[int, TunnelStream] = {}
        self._address: TunnelAddress | None = None
        if observer is not None:
            observer.session_started(self)

    def __repr__(self) -> str:
        return f"{self._label()[:-1]} streams={len(self.mux.streams)}>"

    def _label(self) -> str:
        """C{<Session client foo/123>}: the session in log lines that must not refer to it."""
        kind = "peer" if self.is_peer else "client"
        return f"<Session {kind} {self.client_key}/{self.session_key}>"

    # What the multiplexer knows.

    @property
    def client_key(self) -> str:
        return self.mux.client_key

    @property
    def session_key(self) -> int:
        return self.mux.session_key

    @property
    def is_peer(self) -> bool:
        return self.mux.is_peer

    @property
    def closed(self) -> bool:
        return self.mux.closed

    @property
    def remote_clients(self) -> dict[str, set[int]]:
        """For peer sessions: the client keys the peer announced, each with its session keys."""
        return self.mux.remote_clients

    @property
    def streams(self) -> dict[int, TunnelStream]:
        """The streams on the wire, by id (a copy)."""
        return {conn_id: handle.context for conn_id, handle in self.mux.streams.items()}

    @property
    def bytes_sent(self) -> int:
        return self.mux.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.mux.bytes_received

    @property
    def error_bytes_sent(self) -> int:
        """Bytes of Error messages sent (Go counts data only)."""
        return self.mux.error_bytes_sent

    def flow_summary(self) -> FlowSummary:
        """Where the streams stand now (see L{FlowSummary})."""
        return self.mux.flow_summary()

    @property
    def replies_sent(self) -> int:
        """Bytes sent answering the far side's mistakes (see L{Multiplexer.replies_sent})."""
        return self.mux.replies_sent

    @property
    def stream_count(self) -> int:
        """Live streams, draining ones included."""
        return self.mux.stream_count

    @property
    def pending_dials(self) -> int:
        """Dials for the far side's Connects whose target is not connected yet."""
        return self._acceptor.pending

    # Dialing.

    def open_stream(self, proto: str, address: str) -> TunnelStream:
        """
        Open a stream to C{proto}/C{address} on the far side.  There is no
        acknowledgement: the stream is usable at once, and a failed dial
        comes back as an Error that closes it.
        """
        try:
            handle = self.mux.open_stream(proto, address)
        except SessionClosed as e:
            self._refused("session_closed")
            raise ConnectionLost(str(e)) from None
        except TooManyStreams as e:
            self._refused("too_many_streams")
            raise ConnectError(string=str(e)) from None
        except ValueError as e:  # a target no Connect can name (too long, not ASCII)
            raise ConnectError(string=str(e)) from None
        stream = self._stream(
            handle,
            host=self._tunnel_address(),
            peer=target_address(proto, address, self.client_key),
            target=f"{proto}/{address}",
        )
        self.flush()
        return stream

    def dial(self, proto: str, address: str, protocol: IProtocol) -> TunnelStream:
        """Open a stream and connect C{protocol} to it."""
        stream = self.open_stream(proto, address)
        stream.attach(protocol)
        return stream

    def _tunnel_address(self) -> TunnelAddress:
        """This session's end of its streams: one immutable address shared by them all."""
        if self._address is None:
            self._address = TunnelAddress("tunnel", str(self.session_key), self.client_key)
        return self._address

    def _stream(self, handle: StreamHandle, host: IAddress, peer: IAddress, target: str) -> TunnelStream:
        stream = TunnelStream(self, handle, host=host, peer=peer, target=target)
        if self._observer is not None:
            self._observer.stream_opened(self, stream)
        return stream

    def _refused(self, reason: str) -> None:
        if self._observer is not None:
            self._observer.stream_refused(self, reason)

    def _dialed(self, seconds: float, failure: Failure | None) -> None:
        if self._observer is not None:
            self._observer.dial_finished(self, seconds, failure)

    # Messages in.

    def message_received(self, data: bytes) -> int:
        """
        Handle one binary WebSocket message; the bytes of the replies it
        provoked (answers to the far side's mistakes, which the WebSocket
        weighs against its send budget).
        """
        if self._trace and not self.mux.closed:
            self._trace_message("REQUEST", data)
        mux = self.mux
        before = mux.replies_sent
        events = mux.receive(data)
        self.flush()
        if mux.awaiting_fence and self._connection is not None:
            self._connection.round_trip(partial(mux.fence_passed, mux.start_fence()))
        dispatch = self._dispatch
        for event in events:
            dispatch[type(event)](self, event)
        return mux.replies_sent - before

    # A stream that ended (its transport told its protocol) has no context.

    def _on_data(self, event: DataReceived) -> None:
        stream = event.stream.context
        if stream is not None:
            stream.data_received(event.data)

    def _on_ended(self, event: StreamEnded) -> None:
        stream = event.stream.context
        if stream is not None:
            stream.remote_ended(event.error)

    def _on_send_blocked(self, event: SendBlocked) -> None:
        stream = event.stream.context
        if stream is not None:
            stream.remote_paused(event.blocked)

    def _on_connect(self, event: ConnectRequested) -> None:
        proto, address = event.proto, event.address
        stream = self._stream(
            event.stream,
            host=target_address(proto, address, self.client_key),
            peer=self._tunnel_address(),
            target=f"{proto}/{address}",
        )
        self._acceptor.accept(stream, proto, address)

    def _on_client(self, event: ClientAnnounced) -> None:
        if self._listener is not None:
            notify = self._listener.client_added if event.added else self._listener.client_removed
            notify(self, event.client_key, event.session_key)

    def _on_violation(self, event: ProtocolViolation) -> None:
        if event.fatal:
            self._violations.flush()
            self.log.warn("{session}: {error}; closing the session", session=self,
                          error=printable(event.text, 200))
            self.lose(Failure(MalformedMessage(event.text)))
        else:
            self._violations.warn("{session}: {error}", session=self, error=printable(event.text, 200))

    # Each handler takes the event type it is filed under (no type says that).
    _dispatch: ClassVar[dict[type, Callable[[Session, Any], None]]] = {
        DataReceived: _on_data,
        StreamEnded: _on_ended,
        SendBlocked: _on_send_blocked,
        ConnectRequested: _on_connect,
        ClientAnnounced: _on_client,
        ProtocolViolation: _on_violation,
    }

    # Messages out.

    def flush(self) -> None:
        """Send what the multiplexer queued."""
        out = self.mux.data_to_send()
        if not out:
            return
        send = self._send
        if self._trace:
            for data in out:
                self._trace_message("WRITE", data)
                send(data)
            return
        for data in out:
            send(data)

    def stream_write(self, stream: ITunnelStream, data: bytes) -> None:
        """C{stream}'s protocol wrote C{data}."""
        ours = cast("TunnelStream", stream)  # (only our streams call this)
        self.mux.write(ours.handle, data)
        self.flush()
        if self._transport_paused and ours.has_producer:
            conn_id = ours.conn_id
            if conn_id not in self._blocked:
                self._blocked[conn_id] = ours
                ours.transport_blocked(True)

    def send_sync_connections(self) -> None:
        """Tell the far side which streams we hold (the dialing side does this every 60 s)."""
        self.mux.sync()
        self.flush()

    def announce_client(self, client_key: str, session_key: int, added: bool) -> None:
        """Send AddClient / RemoveClient (peer links)."""
        self.mux.announce(client_key, session_key, added)
        self.flush()

    def _trace_message(self, direction: str, data: bytes) -> None:
        try:
            message = _codec.decode(data)
        except MalformedMessage:
            self.log.info("{direction} malformed size={size} {session}",
                          direction=direction, size=len(data), session=self)
            return
        self.log.info("{direction} {type} conn={stream_id} size={size} {session}",
                      direction=direction, type=message.type.name, stream_id=message.conn_id,
                      size=len(data), session=self)

    # Stream bookkeeping.

    def stream_ended(self, stream: ITunnelStream) -> None:
        """Called by a stream as it ends."""
        self._blocked.pop(stream.conn_id, None)
        if self._observer is not None:
            self._observer.stream_closed(self, stream)
        if self.superseded and not self.mux.closed:
            self.clock.callLater(0, self._end_if_drained)

    def probe(self, timeout: float) -> Deferred[bool]:
        """
        Whether the far side answers within C{timeout} seconds (False
        without a WebSocket to ask, or once the session has ended).
        """
        if self._connection is None or self.mux.closed:
            return succeed(False)
        return self._connection.probe(timeout)

    def supersede(self) -> None:
        """A newer session of the same owner replaces this one: drain, then end."""
        self.superseded = True
        self._end_if_drained()

    def _end_if_drained(self) -> None:
        if self.superseded and not self.mux.closed and not self.mux.stream_count:
            self.drop(Failure(ConnectionLost("replaced by a newer session of the same client")))

    # IPushProducer: the WebSocket's TCP transport pushes back.

    def pauseProducing(self) -> None:
        self._transport_paused = True

    def resumeProducing(self) -> None:
        self._transport_paused = False
        blocked, self._blocked = self._blocked, {}
        for stream in blocked.values():
            stream.transport_blocked(False)

    def stopProducing(self) -> None:
        """The transport is going away; connectionLost follows and ends the streams."""

    # Ending.

    def note_end(self, reason: str) -> None:
        """Say why the session is ending (the first reason given is the one kept)."""
        if self.end_reason is None:
            self.end_reason = printable(reason)

    def drop(self, reason: Failure | None = None) -> None:
        """End the session from our side: every stream ends now, the WebSocket is dropped."""
        self.lose(reason if reason is not None else Failure(ConnectionLost("tunnel session dropped")))

    def close(self, reason: str, code: int = GOING_AWAY) -> None:
        """
        End the session from our side, telling the far side why: every
        stream ends now, and the WebSocket is closed with a close frame
        (C{code}, C{reason}), which the far side answers (or it is aborted
        a few seconds later).  Without a WebSocket, the same as L{drop}.
        """
        self.connection_lost(Failure(ConnectionLost(reason)))
        if self._connection is not None:
            self._connection.close(code, reason)
        elif self._drop is not None:
            self._drop()

    def lose(self, reason: Failure) -> None:
        """
        End the session from our side (malformed input): every stream ends
        now and the WebSocket is dropped.
        """
        self.connection_lost(reason)
        if self._drop is not None:
            self._drop()

    def connection_lost(self, reason: Failure) -> None:
        """The WebSocket is gone: every stream ends with C{reason}."""
        ending = not self.mux.closed
        # The exception's own words ("server shutting down"), not its class's preamble.
        args = reason.value.args if reason.value is not None else ()
        plain = bool(args) and all(isinstance(arg, str) for arg in args)
        self.note_end(": ".join(args) if plain else failure_text(reason))
        handles = self.mux.lose()
        self._blocked.clear()
        self._violations.flush()
        self._dial_failures.flush()
        for handle in handles:
            if handle.context is not None:
                handle.context.session_lost(reason)
        if ending and self._observer is not None:
            self._observer.session_ended(self)


@attrs.define
class SessionFactory:
    """
    Builds the sessions of one server or client, so that the server's
    sessions, a client's tunnel and a server's peer links are made one way.
    """

    clock: IReactorTime
    trace: bool = False
    limits: FlowLimits | None = None
    session_limits: SessionLimits | None = None
    #: Hears of every session's traffic events (metrics); None: nobody.
    observer: ITrafficObserver | None = None

    def session(
        self,
        protocol: ITunnelConnection,
        *,
        client_key: str,
        dials_as_client: bool = False,
        is_peer: bool = False,
        dialer: IDialPolicy | None = None,
        listener: IPeerObserver | None = None,
    ) -> Session:
        """A session sending on the WebSocket C{protocol} (and dropping it on fatal input)."""
        session = Session(
            protocol.send_binary,
            client_key=client_key,
            dials_as_client=dials_as_client,
            is_peer=is_peer,
            dialer=dialer,
            listener=listener,
            trace=self.trace,
            clock=self.clock,
            limits=self.limits,
            session_limits=self.session_limits,
            observer=self.observer,
            connection=protocol,
        )
        peer = protocol.peer_address()
        if peer is not None:
            session.remote_addr = address(peer)
        return session
