"""
One multiplexed stream of a tunnel session, as a real Twisted transport.

A L{TunnelStream} is what a protocol sees when it runs "through" the tunnel:
it provides ITransport, IPushProducer and IConsumer, so any protocol (and
any relay built on the producer/consumer APIs) runs over it unchanged --
TLS (L{twisted.protocols.tls}) and twisted.web's HTTP client included.  As
twisted.web._http2.H2Stream is over h2, it is only the transport, producer
and consumer mechanics over the sans-IO multiplexer (L{remotedialer.protocol._multiplexer}),
which owns the stream's lifecycle, its buffers and the Pause/Resume rules:

Receive side (bytes coming from the far end):
    Data is handed to the protocol at once while it is reading.  While the
    protocol (or the consumer it feeds) has paused us, the multiplexer
    buffers, sends Pause past the threshold, and Resume once the protocol
    has resumed and taken the backlog; past the hard cap the stream is cut.

Send side (bytes the protocol writes):
    A Pause from the far side, or the session's WebSocket transport pushing
    back, pauses the producer registered on this stream (e.g. the TCP
    connection being relayed); Resume / the transport draining resumes it.

Closing, as a TCP transport closes:
    The protocol's C{connectionLost} is always called from the reactor (a
    C{callLater(0)}), never from inside C{loseConnection},
    C{abortConnection} or a write: protocols such as the TLS wrapper are not
    re-entrant.  A producer or protocol that raises ends this stream only
    (logged), never the session.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import (
    IAddress,
    IProducer,
    IProtocol,
    IPullProducer,
    IPushProducer,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._handle import StreamHandle
from remotedialer.protocol._lifecycle import StreamState
from remotedialer.tunnel._exceptions import StreamError
from remotedialer.tunnel._interfaces import IStreamCarrier, ITunnelStream
from remotedialer.tunnel._producers import PullToPush

__all__ = ["HARD_CAP", "PAUSE_THRESHOLD", "RESUME_THRESHOLD", "TunnelStream"]

_DEFAULT_LIMITS = FlowLimits()
#: The Go remotedialer's thresholds: Pause past 2 MiB buffered, Resume below 256 KiB.
PAUSE_THRESHOLD = _DEFAULT_LIMITS.pause_threshold
RESUME_THRESHOLD = _DEFAULT_LIMITS.resume_threshold
#: A far side that keeps sending past this many buffered bytes ignored Pause.
HARD_CAP = _DEFAULT_LIMITS.hard_cap


@implementer(ITunnelStream)
class TunnelStream:
    """
    A byte stream multiplexed over a tunnel session (see module docstring).

    @ivar target: the C{proto/address} this stream reaches (or was asked for).
    @ivar protocol: the protocol this stream carries, once attached.
    """

    protocol: IProtocol | None = None
    _log = Logger()

    def __init__(
        self,
        session: IStreamCarrier,
        handle: StreamHandle,
        host: IAddress,
        peer: IAddress,
        target: str = "",
    ) -> None:
        self._session = session
        self._mux = session.mux
        self.handle = handle
        handle.context = self
        self._host = host
        self._peer = peer
        self.target = target
        self._close_requested = False
        #: Set once the stream has ended on our side; connectionLost follows.
        self._lost_reason: Failure | None = None
        self._finished = False
        self._delivering = False
        self._no_delay = False
        self._keep_alive = False
        # Send side mechanics.
        self._transport_blocked = False
        self._producer: IPushProducer | None = None
        self._producer_paused = False
        self._pull_adapter: PullToPush | None = None

    def __repr__(self) -> str:
        return f"<TunnelStream {self.conn_id} {self.target}>"

    @property
    def conn_id(self) -> int:
        """The stream id on the wire."""
        return self.handle.conn_id

    @property
    def closed(self) -> bool:
        return self._finished

    @property
    def disconnecting(self) -> bool:
        return self._close_requested or self._finished

    def attach(self, protocol: IProtocol) -> bool:
        """
        Connect C{protocol} to this stream (calls its makeConnection).
        False if that raised: the stream is then closed with the error.
        """
        closed_before = self._finished and self._lost_reason is not None
        self.protocol = protocol
        try:
            protocol.makeConnection(self)
        except Exception:
            self._protocol_failed()
            return False
        finally:
            if closed_before:
                self._schedule_connection_lost()
        return True

    # ITransport

    def write(self, data: bytes) -> None:
        if self.handle.state is StreamState.OPEN and data:
            self._session.stream_write(self, data)

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """Close cleanly once the bytes written so far have been sent."""
        if self._finished or self._close_requested:
            return
        self._close_requested = True
        if self._mux.close(self.handle):
            self._session.flush()
            self._ended(Failure(ConnectionDone("stream closed cleanly")))

    def abortConnection(self) -> None:
        """Close at once, dropping unsent bytes; the far side sees an error."""
        self.close_with_error("connection aborted")

    def close_with_error(self, reason: str) -> None:
        """Close at once, telling the far side C{reason} as an Error."""
        if not self._finished and self._mux.abort(self.handle, reason):
            self._session.flush()
            self._ended(Failure(StreamError(reason)))

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
        self._mux.pause_reading(self.handle)

    def resumeProducing(self) -> None:
        if self._finished:
            return
        self._mux.resume_reading(self.handle)
        self._deliver_buffered()

    def stopProducing(self) -> None:
        """Our consumer died: deliver nothing more, and close (as TCP does)."""
        self._mux.discard_inbound(self.handle)
        self.loseConnection()

    # IConsumer: a producer (e.g. a relayed TCP connection) writes to us.

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, "
                f"because producer {self._producer!r} was never unregistered."
            )
        if self._finished:
            producer.stopProducing()
            return
        # Which kind of producer it is, only C{streaming} says (no type can).
        if not streaming:
            pull = cast(IPullProducer, producer)
            self._pull_adapter = PullToPush(pull, self, self._session.cooperate)
            producer = self._pull_adapter
        self._producer = cast(IPushProducer, producer)
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

    # Called by the session, for the multiplexer's events.

    def data_received(self, data: bytes) -> None:
        """Data for the reader (the multiplexer holds it while we are paused)."""
        self._deliver(data)

    def remote_ended(self, error: str | None) -> None:
        """The far side closed the stream (None: cleanly), or it was pruned or cut."""
        if error is not None:
            self._ended(Failure(StreamError(error)))
        elif self._close_requested:
            self._ended(Failure(ConnectionDone("stream closed cleanly")))
        else:
            self._ended(Failure(ConnectionDone("stream closed by far side")))

    def remote_paused(self, paused: bool) -> None:
        """The far side sent Pause (True) or Resume (False)."""
        self._update_producer()

    def transport_blocked(self, blocked: bool) -> None:
        """The session's WebSocket transport filled up (True) or drained (False)."""
        self._transport_blocked = blocked
        self._update_producer()

    def session_lost(self, reason: Failure) -> None:
        """The tunnel session ended: the stream ends with it, buffered data too."""
        self._ended(reason)

    @property
    def buffered_inbound(self) -> int:
        """Bytes received and not yet taken by the protocol."""
        return self.handle.inbound.size

    @property
    def has_producer(self) -> bool:
        return self._producer is not None

    # Internals.

    def _deliver_buffered(self) -> None:
        if self._delivering:
            return
        self._delivering = True
        try:
            read = self._mux.read
            handle = self.handle
            while (chunk := read(handle)) is not None:
                self._deliver(chunk)
        finally:
            self._delivering = False
        self._session.flush()  # a Resume, if the backlog drained
        if self.handle.ended and not self._finished:  # a draining stream is done
            self._ended(Failure(ConnectionDone("stream closed by far side")))

    def _deliver(self, data: bytes) -> None:
        try:
            assert self.protocol is not None, "no protocol attached"
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

    def _update_producer(self) -> None:
        if self._producer is None or self._finished:
            return
        blocked = self.handle.remote_paused or self._transport_blocked
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

    def _ended(self, reason: Failure) -> None:
        """
        The stream is over on our side (the multiplexer already knows):
        stop our producer, and tell the protocol from the reactor.
        """
        if self._finished:
            return
        self._finished = True
        self._lost_reason = reason
        self._session.stream_ended(self)
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
        self._schedule_connection_lost()

    def _schedule_connection_lost(self) -> None:
        self._session.clock.callLater(0, self._connection_lost)

    def _connection_lost(self) -> None:
        # Like Twisted's TCP transport, forget the protocol (and the
        # multiplexer its handle) once told: no cycle outlives the stream.
        protocol, reason = self.protocol, self._lost_reason
        if reason is None:
            return
        self._lost_reason = None  # exactly once
        self.handle.context = None
        if protocol is None:
            return
        self.protocol = None
        try:
            protocol.connectionLost(reason)
        except Exception:
            self._log.failure("connectionLost of stream {conn_id} ({target}) failed",
                              conn_id=self.conn_id, target=self.target)
