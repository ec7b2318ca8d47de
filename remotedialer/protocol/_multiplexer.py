"""
The tunnel multiplexer without I/O: the streams of one session as a plain
object, in the manner of h2's H2Connection.

Bytes in, events out: L{Multiplexer.receive} takes one binary WebSocket
message and returns what happened (L{ConnectRequested}, L{DataReceived},
L{StreamEnded}, L{SendBlocked}, L{ClientAnnounced}, L{ProtocolViolation}).
Commands in, messages out: L{Multiplexer.open_stream}, C{write}, C{close},
C{abort}, C{pause_reading}/C{resume_reading}/C{read}, C{sync},
C{announce} queue wire messages that L{Multiplexer.data_to_send} hands
over.  Stream ids, the stream lifecycle (L{remotedialer.protocol._lifecycle}),
receive-side flow control (L{remotedialer.protocol._flow}), SyncConnections pruning
and a peer's announced clients all live here; no sockets, no reactor, no
callbacks, so every state is reachable from a test in microseconds.  The
Twisted adapter (L{remotedialer.tunnel._session}) pumps it.

Streams are named by L{StreamHandle}s rather than ids: after the far side
closes a stream whose reader still has data buffered, its id is free on
the wire, yet the stream lives on until the reader is done.
"""

from __future__ import annotations

import itertools
import random
from collections import deque

import attrs

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import Message, MessageType
from remotedialer.protocol._events import (
    ClientAnnounced,
    ConnectRequested,
    DataReceived,
    Event,
    ProtocolViolation,
    SendBlocked,
    StreamEnded,
)
from remotedialer.protocol._exceptions import (
    InvalidTransition,
    MalformedMessage,
    SessionClosed,
    TooManyStreams,
)
from remotedialer.protocol._flow import FlowLimits, Verdict
from remotedialer.protocol._handle import StreamHandle
from remotedialer.protocol._lifecycle import StreamInput, StreamState, Wire, transition
from remotedialer.protocol._limits import SessionLimits

__all__ = ["CLIENT_FIRST_CONN_ID", "EOF", "MAX_DATA_CHUNK", "SERVER_FIRST_CONN_ID", "Multiplexer"]

#: The text of an Error message that means a clean close.
EOF = "EOF"

#: Largest Data payload we send in one message; larger writes are split.
MAX_DATA_CHUNK = 64 * 1024

#: First stream id each side uses when dialing.  Go's sides both count up
#: from 2, so ids collide when both dial; a session that dials the other way
#: (client to server) counts from far above, where Go never reaches.
SERVER_FIRST_CONN_ID = 2
CLIENT_FIRST_CONN_ID = 1 << 48

_I = StreamInput
_S = StreamState


@attrs.frozen
class FlowSummary:
    """
    Where one session's streams stand: how many, how many we paused (our
    reader is slow), how many the far side paused, the bytes buffered for
    our readers and the bytes held back from the far side.
    """

    streams: int
    paused_here: int
    paused_by_far_side: int
    buffered_bytes: int
    held_bytes: int


def new_session_key() -> int:
    """Go uses rand.Int63() for session keys."""
    return random.SystemRandom().getrandbits(63)


class Multiplexer:
    """
    The streams of one session (see module docstring).

    @ivar client_key: the client this session belongs to (the peer id for
        peer sessions).
    @ivar session_key: a random int63 telling this session from others of
        the same client.
    @ivar is_peer: the far side is a peer server (it may announce clients).
    @ivar remote_clients: for peer sessions, the client keys the peer
        announced, each with its session keys.
    """

    def __init__(
        self,
        *,
        client_key: str = "",
        session_key: int | None = None,
        dials_as_client: bool = False,
        is_peer: bool = False,
        message_ids: _codec.MessageIds | None = None,
        limits: FlowLimits | None = None,
        session_limits: SessionLimits | None = None,
        fences: bool = False,
    ) -> None:
        #: The adapter observes round trips (L{start_fence}/L{fence_passed}):
        #: the hard cap then counts only what arrives after the far side
        #: read our Pause (see L{remotedialer.protocol._flow}).
        self.fences = fences
        #: Streams sent a Pause since the last fence began, with its number.
        self._unfenced: list[tuple[StreamHandle, int]] = []
        self.client_key = client_key
        self.session_key = new_session_key() if session_key is None else session_key
        self.is_peer = is_peer
        self.limits = limits if limits is not None else FlowLimits()
        self.session_limits = session_limits if session_limits is not None else SessionLimits()
        #: Bytes held for paused readers, over all streams (session_buffer bounds it).
        self.buffered = 0
        self._pausing_all = False
        self._ids = message_ids if message_ids is not None else _codec.MessageIds()
        first = CLIENT_FIRST_CONN_ID if dials_as_client else SERVER_FIRST_CONN_ID
        self._conn_ids = itertools.count(first)
        #: Streams known on the wire, by id.
        self.streams: dict[int, StreamHandle] = {}
        #: Streams the far side closed that still hold data for our reader.
        self._draining: set[StreamHandle] = set()
        self.remote_clients: dict[str, set[int]] = {}
        self.closed = False
        self._sync_epoch = 0
        self._outbox: list[bytes] = []
        self._events: list[Event] = []
        self.bytes_sent = 0
        self.bytes_received = 0
        #: Bytes of Errors sent in answer to the far side's mistakes
        #: (unknown streams, refused Connects, malformed messages).
        self.replies_sent = 0
        #: Bytes of every Error message sent (Go's transmit_error_bytes).
        self.error_bytes_sent = 0

    # Output.

    def data_to_send(self) -> list[bytes]:
        """The wire messages queued since the last call, in order."""
        out, self._outbox = self._outbox, []
        return out

    def _queue(self, data: bytes) -> None:
        self.bytes_sent += len(data)
        self._outbox.append(data)

    def _queue_message(self, message: Message) -> None:
        self._queue(_codec.encode(message))

    def _queue_error(self, conn_id: int, text: str) -> None:
        data = _codec.encode(_codec.error(self._ids.next(), conn_id, text))
        self.error_bytes_sent += len(data)
        self._queue(data)

    def _queue_reply(self, conn_id: int, text: str) -> None:
        before = self.bytes_sent
        self._queue_error(conn_id, text)
        self.replies_sent += self.bytes_sent - before

    # Commands.

    def open_stream(self, proto: str, address: str) -> StreamHandle:
        """
        Open a stream to C{proto}/C{address} on the far side.  There is no
        acknowledgement: the stream is usable at once, and a failed dial
        comes back as an Error (a L{StreamEnded} event).

        @raise SessionClosed: the session is over.
        @raise ValueError: the target cannot be encoded.
        """
        if self.closed:
            raise SessionClosed("tunnel session is closed")
        if self.stream_count >= self.session_limits.max_streams:
            raise TooManyStreams(
                f"tunnel session has {self.session_limits.max_streams} streams open (the limit)")
        conn_id = next(self._conn_ids)
        while conn_id in self.streams:
            conn_id = next(self._conn_ids)
        message = _codec.connect(self._ids.next(), conn_id, proto, address)
        stream = self._register(conn_id)
        self._queue_message(message)
        return stream

    def write(self, stream: StreamHandle, data: bytes) -> None:
        """Send C{data} (split into Data messages), or hold it while the far side paused us."""
        if stream.state is not _S.OPEN or not data or self.closed:
            return
        if stream.remote_paused or stream.held:
            if stream.held is None:
                stream.held = deque()
            stream.held.append(data)
            return
        self._send_data(stream, data)

    def _send_data(self, stream: StreamHandle, data: bytes) -> None:
        next_id, header, encode = self._ids.next_varint, stream.data_header, _codec.encode_data_after
        if len(data) <= MAX_DATA_CHUNK:
            message = encode(next_id(), header, data)
            self.bytes_sent += len(message)
            self._outbox.append(message)
            return
        view = memoryview(data)
        for offset in range(0, len(data), MAX_DATA_CHUNK):
            self._queue(encode(next_id(), header, view[offset : offset + MAX_DATA_CHUNK]))

    def close(self, stream: StreamHandle) -> bool:
        """
        Close cleanly once the writes made so far are sent (EOF).  True if
        the stream ended now, False if it waits for held writes (or had
        ended already).
        """
        was = stream.state
        self._apply(stream, _I.CLOSE_HELD if stream.held else _I.CLOSE)
        return was is not _S.CLOSED and stream.ended

    def abort(self, stream: StreamHandle, reason: str) -> bool:
        """Close at once, dropping held writes; the far side gets Error C{reason}.  True if it ended now."""
        was = stream.state
        self._apply(stream, _I.ABORT, reason)
        return was is not _S.CLOSED

    def pause_reading(self, stream: StreamHandle) -> None:
        """Our reader paused: hold what arrives (Pause goes out past the threshold)."""
        stream.inbound.reading = False

    def resume_reading(self, stream: StreamHandle) -> None:
        """Our reader takes data again: fetch the backlog with L{read}."""
        stream.inbound.reading = True

    def read(self, stream: StreamHandle) -> bytes | None:
        """
        The next buffered chunk for a reading reader, or None when there is
        none (or the reader paused again).  Sends Resume once the backlog is
        under the resume threshold; ends a DRAINING stream once it is empty
        (C{stream.ended} is then true).
        """
        chunk = stream.inbound.take()
        if chunk is not None:
            self.buffered -= len(chunk)
            return chunk
        if stream.state is _S.DRAINING:
            if not stream.inbound:
                self._apply(stream, _I.DRAINED)
        elif stream.inbound.should_resume() and stream.state is not _S.CLOSED and not self.closed:
            self._queue_message(_codec.resume(self._ids.next(), stream.conn_id))
        return None

    def discard_inbound(self, stream: StreamHandle) -> None:
        """Our reader is gone: drop its backlog and hold nothing more."""
        stream.inbound.reading = False
        stream.inbound.discarding = True
        self.buffered -= stream.inbound.size
        stream.inbound.clear()

    def sync(self) -> None:
        """Queue SyncConnections: the ids we hold (the dialing side sends it every 60 s)."""
        if not self.closed:
            self._queue_message(_codec.sync_connections(self._ids.next(), list(self.streams)))

    def announce(self, client_key: str, session_key: int, added: bool) -> None:
        """Queue AddClient / RemoveClient (peer links)."""
        if not self.closed:
            make = _codec.add_client if added else _codec.remove_client
            self._queue_message(make(self._ids.next(), client_key, session_key))

    def lose(self) -> list[StreamHandle]:
        """The session is over: every stream ends (returned); nothing is sent."""
        if self.closed:
            return []
        self.closed = True
        streams = [*self.streams.values(), *self._draining]
        for stream in streams:
            self._apply(stream, _I.SESSION_LOST)
        self.streams = {}
        self._draining = set()
        self._outbox = []
        self._unfenced = []
        return streams

    @property
    def stream_count(self) -> int:
        """Live streams, draining ones included: O(1), unlike C{len(all_streams)}."""
        return len(self.streams) + len(self._draining)

    @property
    def all_streams(self) -> list[StreamHandle]:
        """Every live stream, draining ones included."""
        return [*self.streams.values(), *self._draining]

    def flow_summary(self) -> FlowSummary:
        """Where the session's streams stand now (for status and metrics)."""
        handles = self.all_streams
        return FlowSummary(
            streams=len(handles),
            paused_here=sum(1 for h in handles if h.inbound.pause_sent),
            paused_by_far_side=sum(1 for h in handles if h.remote_paused),
            buffered_bytes=self.buffered,
            held_bytes=sum(len(chunk) for h in handles if h.held for chunk in h.held),
        )

    # The lifecycle, in one place.

    def _apply(self, stream: StreamHandle, input: StreamInput, reason: str = "") -> None:
        """
        Move C{stream} through the lifecycle table, sending what the
        transition says.  An input the table does not allow is a protocol
        error for that stream: it is aborted, the session goes on.
        """
        try:
            state, wire = transition(stream.state, input)
        except InvalidTransition as e:
            self._events.append(ProtocolViolation(f"stream {stream.conn_id}: {e}", stream.conn_id))
            if stream.state is not _S.CLOSED:
                self._end(stream, f"protocol error: {e}", wire=stream.conn_id in self.streams)
                self._events.append(StreamEnded(stream, f"protocol error: {e}"))
            return
        previous = stream.state
        stream.state = state
        if state is previous:
            return
        if state is _S.CLOSED:
            text = EOF if wire is Wire.EOF else reason
            self._end(stream, text, wire=wire is not Wire.NOTHING)
        elif state is _S.DRAINING:
            stream.held = None
            if self.streams.get(stream.conn_id) is stream:
                del self.streams[stream.conn_id]
            self._draining.add(stream)

    def _end(self, stream: StreamHandle, text: str, wire: bool) -> None:
        stream.state = _S.CLOSED
        stream.held = None
        self.buffered -= stream.inbound.size
        stream.inbound.clear()
        self._draining.discard(stream)
        if self.streams.get(stream.conn_id) is stream:
            del self.streams[stream.conn_id]
            if wire and not self.closed:
                self._queue_error(stream.conn_id, text)

    def _register(self, conn_id: int) -> StreamHandle:
        stream = StreamHandle(conn_id, self.limits, self._sync_epoch, self.fences)
        self.streams[conn_id] = stream
        return stream

    # Input.

    def receive(self, data: bytes) -> list[Event]:
        """
        Handle one binary WebSocket message.  A message whose header does
        not decode is fatal to the session (there is no telling what it was
        meant for); a malformed payload for a stream fails only that stream.
        """
        if self.closed:
            return []
        self.bytes_received += len(data)
        if type(data) is not bytes:
            data = bytes(data)
        fast = _codec.decode_data(data)  # the hot path: Data, without a Message
        if fast is not None:
            self._data(*fast)
        else:
            try:
                message = _codec.decode(data)
            except MalformedMessage as e:
                self._malformed(e)
            else:
                self._handlers[message.type](self, message)
        events, self._events = self._events, []
        return events

    def take_events(self) -> list[Event]:
        """Events raised by commands since the last receive (protocol errors found applying them)."""
        events, self._events = self._events, []
        return events

    def _malformed(self, e: MalformedMessage) -> None:
        conn_id = e.conn_id
        if conn_id is None:
            self._events.append(ProtocolViolation(f"malformed message: {e}", fatal=True))
            return
        self._events.append(ProtocolViolation(f"malformed message: {e}", conn_id))
        if conn_id == 0:
            return
        stream = self.streams.get(conn_id)
        if stream is not None and e.message_type is MessageType.CONNECT:
            # Like a well-formed Connect for a live id: refused, the live stream left alone.
            self._queue_reply(conn_id, f"connection id {conn_id} already in use")
        elif stream is not None:
            self._apply(stream, _I.ABORT, f"malformed message: {e}")
            self._events.append(StreamEnded(stream, f"malformed message: {e}"))
        else:
            self._queue_reply(conn_id, f"malformed message: {e}")

    def _on_data(self, message: Message) -> None:
        self._data(message.conn_id, message.payload)

    def _data(self, conn_id: int, payload: bytes) -> None:
        stream = self.streams.get(conn_id)
        if stream is None:
            self._queue_reply(
                conn_id,
                f"connection not found {self.client_key}/{self.session_key}/{conn_id}",
            )
            return
        verdict = stream.inbound.arrived(payload)
        if verdict is Verdict.DELIVER:
            self._events.append(DataReceived(stream, payload))
            return
        if verdict is Verdict.DROP:
            return
        self.buffered += len(payload)
        if verdict is Verdict.SEND_PAUSE:
            self._queue_pause(stream)
        elif verdict is Verdict.OVER_CAP:
            text = f"receive buffer over {self.limits.hard_cap} bytes: far side ignored Pause"
            self._apply(stream, _I.OVER_CAP, text)
            self._events.append(StreamEnded(stream, text))
        if self.buffered > self._receive_budget // 2:
            self._over_session_budget()
        elif self._pausing_all:
            self._pausing_all = False

    def _queue_pause(self, stream: StreamHandle) -> None:
        self._queue_message(_codec.pause(self._ids.next(), stream.conn_id))
        if self.fences:
            self._unfenced.append((stream, stream.inbound.pauses))

    @property
    def awaiting_fence(self) -> bool:
        """Pauses went out that no round trip has followed yet: the adapter should start one."""
        return bool(self._unfenced)

    def start_fence(self) -> list[tuple[StreamHandle, int]]:
        """
        The adapter sends a ping now (after the queued Pauses); hand the
        result to L{fence_passed} once its pong has come back.
        """
        batch, self._unfenced = self._unfenced, []
        return batch

    def fence_passed(self, batch: list[tuple[StreamHandle, int]]) -> None:
        """The far side has read the Pauses of C{batch}: what it sends them now counts against the cap."""
        for stream, pauses in batch:
            stream.inbound.fence_passed(pauses)

    @property
    def _receive_budget(self) -> int:
        """
        What the receive buffers may hold: the session budget less a
        sixteenth, kept for what else a session pins while its readers are
        slow (the message being assembled, the readers' own write buffers),
        so that the whole stays within the budget.
        """
        budget = self.session_limits.session_buffer
        return budget - budget // 16

    def _over_session_budget(self) -> None:
        """
        Past half the session's receive budget, every stream holding data
        is told to Pause (once per excursion); past the whole budget, the
        streams holding the most are ended until the rest fits.
        """
        if not self._pausing_all:
            self._pausing_all = True
            for stream in self.streams.values():
                inbound = stream.inbound
                if inbound.size and not inbound.pause_sent:
                    inbound.paused()
                    self._queue_pause(stream)
        budget = self._receive_budget
        while self.buffered > budget:
            largest = max(self.all_streams, key=lambda s: s.inbound.size, default=None)
            if largest is None or not largest.inbound.size:
                break
            text = f"session receive buffer over {budget} bytes: far side ignored Pause"
            self._apply(largest, _I.ABORT if largest.state is _S.DRAINING else _I.OVER_CAP, text)
            self._events.append(StreamEnded(largest, text))

    def _on_connect(self, message: Message) -> None:
        conn_id = message.conn_id
        proto, address = message.connect_target()
        if conn_id <= 0:
            self._queue_reply(conn_id, f"bad connection id {conn_id}")
            self._events.append(ProtocolViolation(f"Connect with bad connection id {conn_id}", conn_id))
            return
        if conn_id in self.streams:
            self._queue_reply(conn_id, f"connection id {conn_id} already in use")
            return
        limit = self.session_limits.max_connect_target
        if len(message.payload) > limit:
            text = f"Connect target of {len(message.payload)} bytes is over the limit of {limit}"
            self._queue_reply(conn_id, text)
            self._events.append(ProtocolViolation(f"Connect for stream {conn_id} refused: {text}", conn_id))
            return
        if self.stream_count >= self.session_limits.max_streams:
            text = f"too many streams (limit {self.session_limits.max_streams})"
            self._queue_reply(conn_id, text)
            self._events.append(ProtocolViolation(f"Connect for stream {conn_id} refused: {text}", conn_id))
            return
        stream = self._register(conn_id)
        self._events.append(ConnectRequested(stream, proto, address))

    def _on_error(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is None:
            return
        text = message.error_text()
        if text != EOF:
            self._apply(stream, _I.REMOTE_ERROR)
            self._events.append(StreamEnded(stream, text))
        elif stream.inbound:
            self._apply(stream, _I.REMOTE_EOF_BUFFERED)
        else:
            self._apply(stream, _I.REMOTE_EOF)
            self._events.append(StreamEnded(stream, None))

    def _on_pause(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is not None:
            self._apply(stream, _I.REMOTE_PAUSE)
            stream.remote_paused = True
            self._events.append(SendBlocked(stream, True))

    def _on_resume(self, message: Message) -> None:
        stream = self.streams.get(message.conn_id)
        if stream is None:
            return
        self._apply(stream, _I.REMOTE_RESUME)
        stream.remote_paused = False
        held = stream.held
        while held and not stream.remote_paused:
            self._send_data(stream, held.popleft())
        if stream.state is _S.CLOSING and not held:
            self._apply(stream, _I.FLUSHED)
            self._events.append(StreamEnded(stream, None))
            return
        self._events.append(SendBlocked(stream, False))

    def _on_sync(self, message: Message) -> None:
        """
        End the streams the far side no longer has, without an Error.  A
        stream must have lived through one whole sync interval before it can
        be pruned: one opened just before the list was made (its Connect
        still in flight) is not in the list, and the Go server wrongly
        prunes it.
        """
        streams = self.streams
        live = {conn_id for conn_id in message.iter_conn_ids() if conn_id in streams}
        for conn_id, stream in list(streams.items()):
            if conn_id not in live and stream.sync_epoch < self._sync_epoch:
                self._apply(stream, _I.PRUNE)
                self._events.append(StreamEnded(stream, "stream unknown to the far side"))
        self._sync_epoch += 1

    def _on_client(self, message: Message, added: bool) -> None:
        if not self.is_peer:
            self._events.append(ProtocolViolation(
                f"ignoring {message.type.name} from a non-peer session", 0))
            return
        client_key, session_key = message.client_session()
        keys = self.remote_clients.setdefault(client_key, set())
        if added:
            keys.add(session_key)
        else:
            keys.discard(session_key)
            if not keys:
                del self.remote_clients[client_key]
        self._events.append(ClientAnnounced(client_key, session_key, added))

    def _on_add_client(self, message: Message) -> None:
        self._on_client(message, added=True)

    def _on_remove_client(self, message: Message) -> None:
        self._on_client(message, added=False)

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
