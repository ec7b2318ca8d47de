"""
One multiplexed stream of a tunnel session, as a real Twisted transport.

A L{TunnelStream} is what a protocol sees when it runs "through" the tunnel:
it provides ITransport, IPushProducer and IConsumer, so any protocol (and
any relay built on the producer/consumer APIs) runs over it unchanged --
TLS (L{twisted.protocols.tls}) and twisted.web's HTTP client included.  The
design follows twisted.web._http2.H2Stream, with the remotedialer's
PAUSE/RESUME messages in place of HTTP/2 flow-control windows:

Receive side (bytes coming from the far end):
    Data is handed to the protocol at once while it is reading.  When the
    protocol (or the consumer it feeds) calls pauseProducing() the stream
    buffers; past PAUSE_THRESHOLD buffered bytes it sends Pause, and once the
    protocol resumes and the buffer drains below RESUME_THRESHOLD it sends
    Resume.  A far side that ignores Pause is cut off at HARD_CAP (16 MiB).

Send side (bytes the protocol writes):
    A Pause from the far side, or the session's WebSocket transport pushing
    back, pauses the producer registered on this stream (e.g. the TCP
    connection being relayed); Resume / the transport draining resumes it.
    Writes made while the far side has paused us are held here, bounded by the
    producer having been paused.

Closing, as a TCP transport closes:
    The protocol's C{connectionLost} is always called from the reactor (a
    C{callLater(0)}), never from inside C{loseConnection},
    C{abortConnection} or a write: protocols such as the TLS wrapper are not
    re-entrant.  A producer or protocol that raises ends this stream only
    (logged), never the session.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IProtocol,
    IPushProducer,
    ITransport,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer._addresses import TunnelAddress
from remotedialer._producers import PullToPush

if TYPE_CHECKING:
    from remotedialer._session import Session

__all__ = [
    "EOF",
    "HARD_CAP",
    "PAUSE_THRESHOLD",
    "RESUME_THRESHOLD",
    "StreamError",
    "TunnelAddress",
    "TunnelStream",
]

#: The Go remotedialer's thresholds: Pause past 2 MiB buffered, Resume below 256 KiB.
PAUSE_THRESHOLD = 2 * 1024 * 1024
RESUME_THRESHOLD = 256 * 1024
#: A far side that keeps sending past this many buffered bytes ignored Pause.
#: Well above the threshold: a sender that obeys still has socket buffers'
#: worth of data in flight when our Pause reaches it (up to ~6 MiB measured
#: on loopback alone), and cutting an obedient stream would be a bug.
HARD_CAP = 8 * PAUSE_THRESHOLD

#: The text of an Error message that means a clean close.
EOF = "EOF"


class StreamError(ConnectionLost):
    """
    The far side closed the stream with an error (its text is the message),
    or the stream failed locally for the reason given.
    """

    def __str__(self) -> str:
        # Just the reason: it is forwarded as Error text (peers relaying
        # streams), and Go reads only 100 bytes of that.
        return " ".join(str(arg) for arg in self.args)


@implementer(ITransport, IPushProducer, IConsumer)
class TunnelStream:
    """
    A byte stream multiplexed over a tunnel session (see module docstring).

    @ivar conn_id: the stream id on the wire.
    @ivar target: the C{proto/address} this stream reaches (or was asked for).
    @ivar protocol: the protocol this stream carries, once attached.
    """

    disconnecting = False
    protocol: IProtocol | None = None
    #: How many SyncConnections the session had received when it took this
    #: stream on (a stream is pruned only once it has missed a whole interval).
    sync_epoch = 0
    _log = Logger()

    def __init__(
        self,
        session: Session,
        conn_id: int,
        host: IAddress,
        peer: IAddress,
        target: str = "",
    ) -> None:
        self._session = session
        self.conn_id = conn_id
        self._host = host
        self._peer = peer
        self.target = target
        self.closed = False
        self._lost_reason: Failure | None = None
        self._no_delay = False
        self._keep_alive = False
        # Receive side.
        self._inbound: deque[bytes] = deque()
        self._inbound_size = 0
        self._reading_paused = False
        self._sent_pause = False
        self._delivering = False
        self._remote_eof = False
        # Send side.
        self._outbound: deque[bytes] = deque()
        self._remote_paused = False
        self._transport_blocked = False
        self._producer: Any = None
        self._producer_paused = False
        self._pull_adapter: PullToPush | None = None

    def __repr__(self) -> str:
        return f"<TunnelStream {self.conn_id} {self.target}>"

    def attach(self, protocol: IProtocol) -> None:
        """Connect C{protocol} to this stream (calls its makeConnection)."""
        closed_before = self.closed
        self.protocol = protocol
        try:
            protocol.makeConnection(self)
        except Exception:
            self._protocol_failed()
        if closed_before:
            self._schedule_connection_lost()

    # ITransport

    def write(self, data: bytes) -> None:
        if self.closed or self.disconnecting or self._remote_eof or not data:
            return
        if self._remote_paused or self._outbound:
            self._outbound.append(data)
            return
        self._session.send_data(self, data)

    def writeSequence(self, iovec) -> None:
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """Close cleanly once the bytes written so far have been sent."""
        if self.closed or self.disconnecting:
            return
        self.disconnecting = True
        if not self._outbound:
            self._close(EOF, Failure(ConnectionDone("stream closed cleanly")))

    def abortConnection(self) -> None:
        """Close at once, dropping unsent bytes; the far side sees an error."""
        self.close_with_error("connection aborted")

    def close_with_error(self, reason: str) -> None:
        """Close at once, telling the far side C{reason} as an Error."""
        if not self.closed:
            self._close(reason, Failure(StreamError(reason)))

    def getPeer(self) -> IAddress:
        return self._peer

    def getHost(self) -> IAddress:
        return self._host

    # What ITCPTransport users call (TLS, twisted.web's HTTP client): the
    # tunnel has no socket of its own to tune, so these only remember.

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._no_delay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self._no_delay

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keep_alive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self._keep_alive

    # IPushProducer: the protocol reading from us asks us to hold inbound data.

    def pauseProducing(self) -> None:
        self._reading_paused = True

    def resumeProducing(self) -> None:
        if self.closed:
            return
        self._reading_paused = False
        self._deliver_buffered()

    def stopProducing(self) -> None:
        """Our consumer died: deliver nothing more, and close (as TCP does)."""
        self._reading_paused = True
        self._inbound.clear()
        self._inbound_size = 0
        self.loseConnection()

    # IConsumer: a producer (e.g. a relayed TCP connection) writes to us.

    def registerProducer(self, producer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, "
                f"because producer {self._producer!r} was never unregistered."
            )
        if self.closed:
            producer.stopProducing()
            return
        if not streaming:
            self._pull_adapter = PullToPush(producer, self)
            producer = self._pull_adapter
        self._producer = producer
        self._producer_paused = False
        if self._pull_adapter is not None:
            self._pull_adapter.start()
        self._update_producer()

    def unregisterProducer(self) -> None:
        if self._pull_adapter is not None:
            self._pull_adapter.stop()
            self._pull_adapter = None
        self._producer = None
        self._producer_paused = False

    # Called by the session.

    def data_received(self, data: bytes) -> None:
        """Data arrived from the far side."""
        if self.closed or self._remote_eof:
            return
        if self._reading_paused or self._inbound or self._delivering:
            self._inbound.append(data)
            self._inbound_size += len(data)
            if self._inbound_size > HARD_CAP:
                self.close_with_error(
                    f"receive buffer over {HARD_CAP} bytes: far side ignored Pause"
                )
            elif self._inbound_size > PAUSE_THRESHOLD and not self._sent_pause:
                self._sent_pause = True
                self._session.send_pause(self.conn_id)
            return
        self._deliver(data)

    def remote_closed(self, text: str) -> None:
        """
        The far side sent Error: C{EOF} is a clean close (buffered data is
        still delivered first), any other text an error.  The far side has
        already forgotten the stream, so nothing is sent back.
        """
        if self.closed or self._remote_eof:
            return
        self._outbound.clear()
        if text != EOF:
            self._close(None, Failure(StreamError(text)))
        elif self._inbound:
            # Still draining to a paused reader: the wire id is free again,
            # but the session keeps us until we end (it must tell us if it
            # dies first).
            self._remote_eof = True
            self._session.draining(self)
        else:
            self._close(None, Failure(ConnectionDone("stream closed by far side")))

    def remote_paused(self, paused: bool) -> None:
        """The far side sent Pause (True) or Resume (False)."""
        if self.closed:
            return
        self._remote_paused = paused
        if not paused:
            self._flush_outbound()
        self._update_producer()

    def transport_blocked(self, blocked: bool) -> None:
        """The session's WebSocket transport filled up (True) or drained (False)."""
        self._transport_blocked = blocked
        self._update_producer()

    def session_lost(self, reason: Failure) -> None:
        """The tunnel session ended: the stream ends with it, buffered data too."""
        if not self.closed:
            self._close(None, reason)

    def prune(self) -> None:
        """The far side no longer knows this stream (SyncConnections)."""
        self.session_lost(Failure(StreamError("stream unknown to the far side")))

    @property
    def buffered_inbound(self) -> int:
        """Bytes received and not yet taken by the protocol."""
        return self._inbound_size

    @property
    def has_producer(self) -> bool:
        return self._producer is not None

    # Internals.

    def _deliver_buffered(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            while self._inbound and not self._reading_paused and not self.closed:
                chunk = self._inbound.popleft()
                self._inbound_size -= len(chunk)
                self._deliver(chunk)
        finally:
            self._delivering = False
        if self.closed:
            return
        if self._remote_eof:
            if not self._inbound:
                self._close(None, Failure(ConnectionDone("stream closed by far side")))
        elif self._sent_pause and self._inbound_size < RESUME_THRESHOLD:
            self._sent_pause = False
            self._session.send_resume(self.conn_id)

    def _deliver(self, data: bytes) -> None:
        try:
            self.protocol.dataReceived(data)
        except Exception:
            self._protocol_failed()

    def _protocol_failed(self) -> None:
        """
        The protocol raised: like a TCP connection in Twisted, this stream
        (and only this stream) ends, and the error is logged.
        """
        failure = Failure()
        self._log.failure("protocol of stream {conn_id} ({target}) failed; closing the stream",
                          failure, conn_id=self.conn_id, target=self.target)
        self.close_with_error(f"protocol error: {failure.getErrorMessage()}")

    def _producer_failed(self, call: str) -> None:
        """Our registered producer raised: it and this stream end, nothing else."""
        failure = Failure()
        self._log.failure("{call} of the producer on stream {conn_id} ({target}) failed; "
                          "aborting the stream", failure, call=call,
                          conn_id=self.conn_id, target=self.target)
        self.close_with_error(f"producer error: {failure.getErrorMessage()}")

    def _flush_outbound(self) -> None:
        while self._outbound and not self._remote_paused and not self.closed:
            self._session.send_data(self, self._outbound.popleft())
        if self.disconnecting and not self._outbound and not self.closed:
            self._close(EOF, Failure(ConnectionDone("stream closed cleanly")))

    def _update_producer(self) -> None:
        if self._producer is None or self.closed:
            return
        blocked = self._remote_paused or self._transport_blocked
        if blocked and not self._producer_paused:
            self._producer_paused = True
            try:
                self._producer.pauseProducing()
            except Exception:
                self._producer_failed("pauseProducing")
        elif not blocked and self._producer_paused:
            self._producer_paused = False
            try:
                self._producer.resumeProducing()
            except Exception:
                self._producer_failed("resumeProducing")

    def _close(self, send_error: str | None, reason: Failure) -> None:
        """
        End the stream: tell the far side (unless it told us), leave the
        session, stop our producer, and tell the protocol from the reactor.
        """
        self.closed = True
        self.disconnecting = True
        self._lost_reason = reason
        self._outbound.clear()
        self._inbound.clear()
        self._inbound_size = 0
        self._session.forget(self, send_error)
        producer, self._producer = self._producer, None
        if self._pull_adapter is not None:
            self._pull_adapter.stop()
            self._pull_adapter = None
        if producer is not None:
            try:
                producer.stopProducing()
            except Exception:
                self._log.failure("stopProducing of the producer on stream {conn_id} failed",
                                  conn_id=self.conn_id)
        if self.protocol is not None:
            self._schedule_connection_lost()

    def _schedule_connection_lost(self) -> None:
        self._session.clock.callLater(0, self._connection_lost)

    def _connection_lost(self) -> None:
        protocol, reason = self.protocol, self._lost_reason
        if protocol is None or reason is None:
            return
        self._lost_reason = None  # exactly once
        try:
            protocol.connectionLost(reason)
        except Exception:
            self._log.failure("connectionLost of stream {conn_id} ({target}) failed",
                              conn_id=self.conn_id, target=self.target)
