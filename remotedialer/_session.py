"""
A tunnel session: the streams multiplexed over one WebSocket.

The session knows nothing of WebSockets: it is given a C{send} callable for
whole binary messages and is fed each received message with
L{Session.message_received}.  That keeps it testable without sockets and
lets the same class serve the server side, the client side and peer links.

Back-pressure from the WebSocket's own TCP transport reaches the session as
IPushProducer calls (the session is registered as that transport's
producer).  Pausing every stream on each of those calls would cost O(streams)
per call; instead a stream that writes while the transport is paused is
paused itself ("blocked"), and only blocked streams are resumed when the
transport drains.  Each writer overshoots by at most one chunk.
"""

from __future__ import annotations

import itertools
import random
from typing import Callable, Protocol as TypingProtocol

from twisted.internet import defer
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import (
    IProtocol,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer import _codec
from remotedialer._codec import MalformedMessage, Message, MessageType
from remotedialer._relay import Relay
from remotedialer._addresses import TunnelAddress, target_address
from remotedialer._stream import TunnelStream

#: Largest Data payload we send in one message; larger writes are split.
MAX_DATA_CHUNK = 64 * 1024

#: First stream id each side uses when dialing.  Go's sides both count up
#: from 2, so ids collide when both dial; a session that dials the other way
#: (client to server) counts from far above, where Go never reaches.
SERVER_FIRST_CONN_ID = 2
CLIENT_FIRST_CONN_ID = 1 << 48


class ConnectDialer(TypingProtocol):
    """What a session asks when the far side sends Connect."""

    def endpoint_for(
        self, proto: str, address: str
    ) -> IStreamClientEndpoint | None | defer.Deferred:
        """
        The endpoint to reach C{proto}/C{address}, or None if not allowed.
        May raise (or fail) to refuse with the error's text.
        """


class RefuseAll:
    """A dialer that refuses every Connect (the server's default)."""

    def endpoint_for(self, proto: str, address: str) -> None:
        return None


class SessionListener(TypingProtocol):
    """Who hears of a peer session's announced clients (the server)."""

    def client_added(self, session: "Session", client_key: str, session_key: int) -> None: ...

    def client_removed(self, session: "Session", client_key: str, session_key: int) -> None: ...


def _new_session_key() -> int:
    """Go uses rand.Int63() for session keys."""
    return random.SystemRandom().getrandbits(63)


@implementer(IPushProducer)
class Session:
    """
    The streams of one WebSocket (see module docstring).

    @ivar client_key: the client this session belongs to (the peer id for
        peer sessions).
    @ivar session_key: a random int63 telling this session from others of
        the same client.
    @ivar is_peer: this session is a link from another server.
    @ivar remote_clients: for peer sessions, the client keys the peer
        announced, each with its session keys.
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
        dialer: ConnectDialer | None = None,
        listener: SessionListener | None = None,
        trace: bool = False,
        message_ids: _codec.MessageIds | None = None,
        drop: Callable[[], object] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        #: Schedules what must not run re-entrantly (streams' connectionLost).
        self.clock = clock
        self._send = send
        self._drop = drop
        self.client_key = client_key
        self.session_key = _new_session_key() if session_key is None else session_key
        self.is_peer = is_peer
        self._dialer = dialer if dialer is not None else RefuseAll()
        self._listener = listener
        self._trace = trace
        self._ids = message_ids if message_ids is not None else _codec.MessageIds()
        first = CLIENT_FIRST_CONN_ID if dials_as_client else SERVER_FIRST_CONN_ID
        self._conn_ids = itertools.count(first)
        self.streams: dict[int, TunnelStream] = {}
        #: Streams the far side closed (EOF) that still deliver buffered data.
        self._draining: set[TunnelStream] = set()
        self.remote_clients: dict[str, set[int]] = {}
        self.closed = False
        self._transport_paused = False
        self._blocked: dict[int, TunnelStream] = {}
        self._sync_epoch = 0
        self.bytes_sent = 0
        self.bytes_received = 0

    def __repr__(self) -> str:
        kind = "peer" if self.is_peer else "client"
        return f"<Session {kind} {self.client_key}/{self.session_key} streams={len(self.streams)}>"

    # Dialing.

    def open_stream(self, proto: str, address: str) -> TunnelStream:
        """
        Open a stream to C{proto}/C{address} on the far side.  There is no
        acknowledgement: the stream is usable at once, and a failed dial
        comes back as an Error that closes it.
        """
        if self.closed:
            raise ConnectionLost("tunnel session is closed")
        conn_id = next(self._conn_ids)
        while conn_id in self.streams:
            conn_id = next(self._conn_ids)
        stream = TunnelStream(
            self,
            conn_id,
            host=TunnelAddress("tunnel", str(self.session_key), self.client_key),
            peer=target_address(proto, address, self.client_key),
            target=f"{proto}/{address}",
        )
        self._register(stream)
        self._write(_codec.connect(self._ids.next(), conn_id, proto, address))
        return stream

    def dial(self, proto: str, address: str, protocol: IProtocol) -> TunnelStream:
        """Open a stream and connect C{protocol} to it."""
        stream = self.open_stream(proto, address)
        stream.attach(protocol)
        return stream

    # Messages in.

    def message_received(self, data: bytes) -> None:
        """
        Handle one binary WebSocket message.  A message whose header does not
        decode ends the session (there is no telling what it was meant for);
        a malformed payload for a known stream id only fails that stream.
        """
        if self.closed:
            return
        self.bytes_received += len(data)
        try:
            message = _codec.decode(data)
        except MalformedMessage as e:
            conn_id = e.conn_id
            if conn_id is None:
                self.log.warn("{session}: malformed message, closing session: {error}", session=self, error=e)
                self.lose(Failure(e))
                return
            if conn_id == 0:
                self.log.warn("{session}: ignoring malformed session message: {error}", session=self, error=e)
                return
            self.log.warn("{session}: malformed message for stream {conn_id}: {error}",
                          session=self, conn_id=conn_id, error=e)
            stream = self.streams.get(conn_id)
            if stream is not None:
                stream.close_with_error(f"malformed message: {e}")
            else:
                self._write(_codec.error(self._ids.next(), conn_id, f"malformed message: {e}"))
            return
        if self._trace:
            self.log.info("REQUEST {type} conn={conn_id} size={size} {session}",
                          type=message.type.name, conn_id=message.conn_id,
                          size=len(message.payload), session=self)
        handler = self._handlers[message.type]
        handler(self, message)

    def _on_data(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is None:
            self._write(_codec.error(
                self._ids.next(), message.conn_id,
                f"connection not found {self.client_key}/{self.session_key}/{message.conn_id}",
            ))
            return
        stream.data_received(message.payload)

    def _on_connect(self, message: Message) -> None:
        conn_id = message.conn_id
        proto, address = message.connect_target()
        if conn_id in self.streams:
            self._write(_codec.error(self._ids.next(), conn_id, f"connection id {conn_id} already in use"))
            return
        stream = TunnelStream(
            self,
            conn_id,
            host=target_address(proto, address, self.client_key),
            peer=TunnelAddress("tunnel", str(self.session_key), self.client_key),
            target=f"{proto}/{address}",
        )
        self._register(stream)
        relay = Relay()
        stream.attach(relay)
        d = defer.maybeDeferred(self._dialer.endpoint_for, proto, address)

        def connect(endpoint):
            if stream.closed:  # the far side gave up while we decided
                return None
            if endpoint is None:
                raise PermissionError(f"connect to {proto}/{address} not allowed")
            return relay.connect_peer(endpoint)

        d.addCallback(connect)
        d.addErrback(self._dial_failed, stream, proto, address)

    def _dial_failed(self, failure: Failure, stream: TunnelStream, proto: str, address: str) -> None:
        if failure.check(defer.CancelledError) or stream.closed:
            return
        reason = failure.getErrorMessage() or failure.type.__name__
        self.log.info("{session}: dial {proto}/{address} failed: {reason}",
                      session=self, proto=proto, address=address, reason=reason)
        stream.close_with_error(reason)

    def _on_error(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is not None:
            stream.remote_closed(message.error_text())

    def _on_pause(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is not None:
            stream.remote_paused(True)

    def _on_resume(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is not None:
            stream.remote_paused(False)

    def _on_sync(self, message: Message) -> None:
        """
        Close the streams the far side no longer has.  A stream must have
        lived through one whole sync interval before it can be pruned: one
        opened just before the list was made (its Connect still in flight)
        is not in the list, and the Go server wrongly prunes it.
        """
        streams = self.streams
        live = {conn_id for conn_id in message.iter_conn_ids() if conn_id in streams}
        for conn_id, stream in list(self.streams.items()):
            if conn_id not in live and stream.sync_epoch < self._sync_epoch:
                self.log.info("{session}: pruning stream {conn_id} unknown to the far side",
                              session=self, conn_id=conn_id)
                stream.prune()
        self._sync_epoch += 1

    def _on_add_client(self, message: Message) -> None:
        self._on_client(message, added=True)

    def _on_remove_client(self, message: Message) -> None:
        self._on_client(message, added=False)

    def _on_client(self, message: Message, added: bool) -> None:
        if not self.is_peer:
            self.log.warn("{session}: ignoring {type} from a non-peer session",
                          session=self, type=message.type.name)
            return
        client_key, session_key = message.client_session()
        keys = self.remote_clients.setdefault(client_key, set())
        if added:
            keys.add(session_key)
        else:
            keys.discard(session_key)
            if not keys:
                del self.remote_clients[client_key]
        if self._listener is not None:
            notify = self._listener.client_added if added else self._listener.client_removed
            notify(self, client_key, session_key)

    _handlers = {
        MessageType.DATA: _on_data,
        MessageType.CONNECT: _on_connect,
        MessageType.ERROR: _on_error,
        MessageType.ADD_CLIENT: _on_add_client,
        MessageType.REMOVE_CLIENT: _on_remove_client,
        MessageType.PAUSE: _on_pause,
        MessageType.RESUME: _on_resume,
        MessageType.SYNC_CONNECTIONS: _on_sync,
    }

    # Messages out.

    def send_data(self, stream: TunnelStream, data: bytes) -> None:
        """Send C{data} on C{stream}, split into messages of MAX_DATA_CHUNK."""
        if self.closed:
            return
        conn_id = stream.conn_id
        if len(data) <= MAX_DATA_CHUNK:
            self._write_raw(_codec.encode_data(self._ids.next(), conn_id, data), conn_id)
        else:
            view = memoryview(data)
            for offset in range(0, len(data), MAX_DATA_CHUNK):
                chunk = bytes(view[offset:offset + MAX_DATA_CHUNK])
                self._write_raw(_codec.encode_data(self._ids.next(), conn_id, chunk), conn_id)
        if self._transport_paused and stream.has_producer and conn_id not in self._blocked:
            self._blocked[conn_id] = stream
            stream.transport_blocked(True)

    def send_pause(self, conn_id: int) -> None:
        self._write(_codec.pause(self._ids.next(), conn_id))

    def send_resume(self, conn_id: int) -> None:
        self._write(_codec.resume(self._ids.next(), conn_id))

    def send_sync_connections(self) -> None:
        """Tell the far side which streams we hold (the client does this every 60 s)."""
        self._write(_codec.sync_connections(self._ids.next(), list(self.streams)))

    def announce_client(self, client_key: str, session_key: int, added: bool) -> None:
        """Send AddClient / RemoveClient (peer links)."""
        make = _codec.add_client if added else _codec.remove_client
        self._write(make(self._ids.next(), client_key, session_key))

    def _write(self, message: Message) -> None:
        if self.closed:
            return
        self._write_raw(_codec.encode(message), message.conn_id, message.type)

    def _write_raw(self, data: bytes, conn_id: int, type: MessageType = MessageType.DATA) -> None:
        if self._trace:
            self.log.info("WRITE {type} conn={conn_id} size={size} {session}",
                          type=type.name, conn_id=conn_id, size=len(data), session=self)
        self.bytes_sent += len(data)
        self._send(data)

    # Stream bookkeeping.

    def _register(self, stream: TunnelStream) -> None:
        self.streams[stream.conn_id] = stream
        stream.sync_epoch = self._sync_epoch

    def forget(self, stream: TunnelStream, send_error: str | None = None) -> None:
        """
        Called by a stream as it ends; with C{send_error} the far side is told
        (C{EOF} for a clean close).
        """
        conn_id = stream.conn_id
        self._draining.discard(stream)
        if self.streams.get(conn_id) is stream:
            del self.streams[conn_id]
            self._blocked.pop(conn_id, None)
            if send_error is not None:
                self._write(_codec.error(self._ids.next(), conn_id, send_error))

    def draining(self, stream: TunnelStream) -> None:
        """
        The far side closed C{stream} cleanly while it still has data for a
        paused reader: its id leaves the wire table, but the session keeps
        it until it ends, and ends it if the session dies first.
        """
        if self.streams.get(stream.conn_id) is stream:
            del self.streams[stream.conn_id]
            self._blocked.pop(stream.conn_id, None)
        self._draining.add(stream)

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
        if self.closed:
            return
        self.closed = True
        streams, self.streams = list(self.streams.values()), {}
        streams.extend(self._draining)
        self._draining = set()
        self._blocked.clear()
        for stream in streams:
            stream.session_lost(reason)
