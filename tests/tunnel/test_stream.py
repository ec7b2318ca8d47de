"""
Tests for remotedialer.tunnel._stream: a TunnelStream as a Twisted transport, its
receive-side buffering with Pause/Resume, its send side honouring the far
side's Pause and the session's push-back, and how it closes (PROTOCOL.md
section 4), on two sessions joined in memory.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConsumer, IPushProducer, ITransport
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import MessageType
from remotedialer.protocol._multiplexer import EOF
from remotedialer.tunnel import _producers
from remotedialer.tunnel._addresses import TunnelAddress
from remotedialer.tunnel._exceptions import StreamError
from remotedialer.tunnel._stream import HARD_CAP, PAUSE_THRESHOLD, RESUME_THRESHOLD
from tests.memory import (
    CLIENT_KEY,
    SERVER_SESSION_KEY,
    CountingPullProducer,
    FakeProducer,
    Recorder,
    SessionPair,
    clock_cooperator,
    inject,
)

KIB = 1024
MIB = 1024 * KIB


def chunk(i: int, size: int = 64 * KIB) -> bytes:
    """A chunk of C{size} bytes telling which one it is."""
    return bytes([i % 256]) * size


class ReaderPausingOnce(Recorder):
    """Pauses its transport once, when it has received C{pause_at} bytes (if set)."""

    def __init__(self) -> None:
        super().__init__()
        self.pause_at: int | None = None

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(data)
        if self.pause_at is not None and len(self.data) >= self.pause_at:
            self.pause_at = None
            self.transport.pauseProducing()


class InterfaceTests(SynchronousTestCase):
    """A TunnelStream is a real transport."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.stream, _, _ = self.pair.open()

    def test_interfaces(self) -> None:
        """It provides ITransport, IPushProducer and IConsumer."""
        self.assertTrue(verifyObject(ITransport, self.stream))
        self.assertTrue(verifyObject(IPushProducer, self.stream))
        self.assertTrue(verifyObject(IConsumer, self.stream))

    def test_addresses(self) -> None:
        """Its peer is the dialed target; its host is the session."""
        self.assertEqual(self.stream.getPeer(), IPv4Address("TCP", "127.0.0.1", 8125))
        self.assertEqual(
            self.stream.getHost(), TunnelAddress("tunnel", str(SERVER_SESSION_KEY), CLIENT_KEY)
        )
        self.assertEqual(self.stream.target, "tcp/127.0.0.1:8125")

    def test_thresholds(self) -> None:
        """Go's thresholds; the hard cap is at least 4x the pause threshold."""
        self.assertEqual((PAUSE_THRESHOLD, RESUME_THRESHOLD), (2 * MIB, 256 * KIB))
        self.assertGreaterEqual(HARD_CAP, 4 * PAUSE_THRESHOLD)
        self.assertEqual(HARD_CAP % (64 * KIB), 0)


class ReceiveTests(SynchronousTestCase):
    """Bytes from the far side: buffering, Pause, Resume, hard cap."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.stream, self.reader, self.endpoint = self.pair.open(ReaderPausingOnce())
        self.target = self.endpoint.transport
        self.far = self.pair.client.streams[2]

    def feed(self, *indexes: int) -> None:
        """The target sends one 64 KiB chunk per index."""
        for i in indexes:
            self.endpoint.protocol.dataReceived(chunk(i))
            self.pair.pump()

    def test_delivered_when_reading(self) -> None:
        """A reading protocol gets Data at once."""
        self.endpoint.protocol.dataReceived(b"abc")
        self.pair.pump()
        self.assertEqual(self.reader.chunks, [b"abc"])
        self.assertEqual(self.stream.buffered_inbound, 0)

    def test_paused_reader_buffers(self) -> None:
        """A paused protocol gets nothing; the stream buffers it."""
        self.stream.pauseProducing()
        self.endpoint.protocol.dataReceived(b"abc")
        self.pair.pump()
        self.assertEqual(self.reader.chunks, [])
        self.assertEqual(self.stream.buffered_inbound, 3)
        self.assertEqual(self.pair.from_server.of(MessageType.PAUSE), [])

    def test_pause_then_resume(self) -> None:
        """
        One Pause past 2 MiB buffered; the far side holds its writes and
        pauses its producer; on resume the buffer comes in order, and one
        Resume is sent only once it is below 256 KiB.
        """
        self.stream.pauseProducing()
        self.feed(*range(32))
        self.assertEqual(self.stream.buffered_inbound, 2 * MIB)
        self.assertEqual(self.pair.from_server.of(MessageType.PAUSE), [])
        # Two chunks in flight: the second arrives after Pause was sent.
        self.endpoint.protocol.dataReceived(chunk(32))
        self.endpoint.protocol.dataReceived(chunk(33))
        self.pair.pump()
        self.assertEqual(self.pair.from_server.types(2)[-1], MessageType.PAUSE)
        self.assertEqual(len(self.pair.from_server.of(MessageType.PAUSE, 2)), 1)
        self.assertEqual(self.target.producerState, "paused")
        self.feed(34)
        self.assertEqual(len(self.pair.from_client.data(2)), 34 * 64 * KIB)
        self.assertEqual(len(self.pair.from_server.of(MessageType.PAUSE, 2)), 1)

        self.reader.pause_at = 30 * 64 * KIB
        self.stream.resumeProducing()
        self.assertEqual(self.reader.chunks, [chunk(i) for i in range(30)])
        self.assertEqual(self.stream.buffered_inbound, RESUME_THRESHOLD)
        self.assertEqual(self.pair.from_server.of(MessageType.RESUME), [])

        self.stream.resumeProducing()
        self.assertEqual(len(self.pair.from_server.of(MessageType.RESUME, 2)), 1)
        self.pair.pump()
        self.assertEqual(self.reader.chunks, [chunk(i) for i in range(35)])
        self.assertEqual(self.target.producerState, "producing")
        self.assertEqual(len(self.pair.from_server.of(MessageType.PAUSE, 2)), 1)
        self.assertEqual(len(self.pair.from_server.of(MessageType.RESUME, 2)), 1)

    def test_hard_cap(self) -> None:
        """
        A far side ignoring Pause is cut off past HARD_CAP buffered: Error
        sent, StreamError for the protocol; other streams carry on.
        """
        other, other_reader, other_endpoint = self.pair.open(target=("tcp", "127.0.0.1:9"))
        self.stream.pauseProducing()
        for i in range(HARD_CAP // (64 * KIB)):
            inject(self.pair.server, _codec.data(1000 + i, 2, chunk(i)))
        self.assertEqual(self.stream.buffered_inbound, HARD_CAP)
        self.assertFalse(self.stream.closed)
        inject(self.pair.server, _codec.data(2000, 2, b"!"))
        self.assertTrue(self.stream.closed)
        text = f"receive buffer over {HARD_CAP} bytes: far side ignored Pause"
        self.assertEqual(self.pair.from_server.errors(), [(2, text)])
        self.pair.settle()
        self.assertEqual(self.reader.lost, 1)
        self.assertTrue(self.reader.reason.check(StreamError))
        self.assertEqual(self.reader.chunks, [])
        self.assertEqual(self.stream.buffered_inbound, 0)
        self.assertNotIn(2, self.pair.server.streams)

        self.pair.pump()
        self.assertTrue(self.far.closed)
        self.assertEqual(self.target.calls[-1], "abortConnection")
        other.write(b"ping")
        other_endpoint.protocol.dataReceived(b"pong")
        self.pair.pump()
        self.assertEqual(other_endpoint.transport.value(), b"ping")
        self.assertEqual(other_reader.data, b"pong")
        self.assertFalse(other.closed)


class SendTests(SynchronousTestCase):
    """Bytes to the far side: its Pause/Resume and our producer."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.stream, _, self.endpoint = self.pair.open()
        self.producer = FakeProducer()

    def far_pause(self, paused: bool = True) -> None:
        self.pair.client_sends((_codec.pause if paused else _codec.resume)(0, 2))
        self.pair.pump()

    def test_far_pause_holds_writes(self) -> None:
        """
        Pause pauses the producer and holds writes; Resume sends them in
        order, then resumes the producer.
        """
        self.stream.write(b"before")
        self.stream.registerProducer(self.producer, True)
        self.far_pause()
        self.assertEqual(self.producer.calls, ["pause"])
        self.stream.write(b"a")
        self.stream.writeSequence([b"b", b"c"])
        self.assertEqual(self.pair.from_server.data(2), b"before")
        sent_when_resumed = []

        def resume() -> None:
            sent_when_resumed.append(len(self.pair.from_server.of(MessageType.DATA, 2)))
            self.stream.write(b"after")

        self.producer.resumeProducing = resume
        self.far_pause(False)
        self.assertEqual(sent_when_resumed, [3])
        payloads = [m.payload for m in self.pair.from_server.of(MessageType.DATA, 2)]
        self.assertEqual(payloads, [b"before", b"a", b"bc", b"after"])
        self.assertEqual(self.endpoint.transport.value(), b"beforeabcafter")

    def test_pause_resume_idempotent(self) -> None:
        """Repeated Pause or Resume from the far side does nothing more."""
        self.stream.registerProducer(self.producer, True)
        self.far_pause()
        self.far_pause()
        self.assertEqual(self.producer.calls, ["pause"])
        self.far_pause(False)
        self.far_pause(False)
        self.assertEqual(self.producer.calls, ["pause", "resume"])

    def test_producer_registered_while_paused(self) -> None:
        """A producer registered while the far side has paused us starts paused."""
        self.far_pause()
        self.stream.registerProducer(self.producer, True)
        self.assertEqual(self.producer.calls, ["pause"])

    def test_pull_producer(self) -> None:
        """A pull producer is pulled while the far side reads, not while paused."""
        clock = Clock()
        self.patch(_producers, "cooperate", clock_cooperator(clock).cooperate)
        producer = CountingPullProducer(self.stream)
        self.stream.registerProducer(producer, False)
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(producer.pulls, 2)
        self.far_pause()
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(producer.pulls, 2)
        self.far_pause(False)
        clock.advance(1)
        self.assertEqual(producer.pulls, 3)
        self.stream.unregisterProducer()
        clock.advance(1)
        self.assertEqual(producer.pulls, 3)
        self.pair.pump()
        self.assertEqual(self.endpoint.transport.value(), b"chunk1chunk2chunk3")

    def test_register_twice(self) -> None:
        """A second producer is refused with RuntimeError."""
        self.stream.registerProducer(self.producer, True)
        self.assertRaises(RuntimeError, self.stream.registerProducer, FakeProducer(), True)
        self.stream.unregisterProducer()
        self.stream.registerProducer(FakeProducer(), True)

    def test_register_on_closed_stream(self) -> None:
        """A producer registered on a closed stream is stopped at once."""
        self.stream.loseConnection()
        self.stream.registerProducer(self.producer, True)
        self.assertEqual(self.producer.calls, ["stop"])
        self.assertFalse(self.stream.has_producer)

    def test_close_stops_producer(self) -> None:
        """Closing the stream stops its producer."""
        self.stream.registerProducer(self.producer, True)
        self.stream.loseConnection()
        self.assertEqual(self.producer.calls, ["stop"])


class CloseTests(SynchronousTestCase):
    """Closing a stream from either side."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.stream, self.reader, self.endpoint = self.pair.open()
        self.target = self.endpoint.transport

    def test_lose_connection(self) -> None:
        """loseConnection sends Error EOF; the protocol gets ConnectionDone."""
        self.stream.write(b"bye")
        self.stream.loseConnection()
        self.assertEqual(self.pair.from_server.types(2)[-2:], [MessageType.DATA, MessageType.ERROR])
        self.assertEqual(self.pair.from_server.errors(), [(2, EOF)])
        self.assertNotIn(2, self.pair.server.streams)
        self.assertIsNone(self.reader.reason, "connectionLost inside loseConnection")
        self.pair.settle()
        self.assertTrue(self.reader.reason.check(ConnectionDone))
        self.pair.pump()
        self.assertEqual(self.target.value(), b"bye")
        self.assertEqual(self.target.calls[-2:], ["unregisterProducer", "loseConnection"])

    def test_lose_connection_waits_for_held_data(self) -> None:
        """With writes held by the far side's Pause, EOF follows them after Resume."""
        self.pair.client_sends(_codec.pause(0, 2))
        self.pair.pump()
        self.stream.write(b"held")
        self.stream.loseConnection()
        self.assertTrue(self.stream.disconnecting)
        self.assertFalse(self.stream.closed)
        self.assertEqual(self.pair.from_server.errors(), [])
        self.assertIsNone(self.reader.reason)
        self.stream.write(b"ignored")
        self.pair.client_sends(_codec.resume(0, 2))
        self.pair.pump()
        self.assertEqual(self.pair.from_server.types(2)[-2:], [MessageType.DATA, MessageType.ERROR])
        self.assertEqual(self.pair.from_server.data(2), b"held")
        self.assertEqual(self.pair.from_server.errors(), [(2, EOF)])
        self.assertTrue(self.reader.reason.check(ConnectionDone))
        self.assertEqual(self.target.value(), b"held")

    def test_remote_eof(self) -> None:
        """Error EOF from the far side: ConnectionDone, nothing sent back."""
        self.endpoint.protocol.dataReceived(b"last")
        self.endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        sent = len(self.pair.from_server.log)
        self.pair.pump()
        self.assertEqual(self.pair.from_client.errors(), [(2, EOF)])
        self.assertEqual(self.reader.data, b"last")
        self.assertTrue(self.reader.reason.check(ConnectionDone))
        self.assertEqual(len(self.pair.from_server.log), sent)

    def test_remote_eof_after_buffered_data(self) -> None:
        """Error EOF to a paused protocol: buffered data first, after it resumes."""
        self.stream.pauseProducing()
        self.endpoint.protocol.dataReceived(b"one")
        self.endpoint.protocol.dataReceived(b"two")
        self.endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        self.pair.pump()
        self.assertEqual(self.reader.chunks, [])
        self.assertIsNone(self.reader.reason)
        self.stream.resumeProducing()
        self.assertEqual(self.reader.chunks, [b"one", b"two"])
        self.pair.settle()
        self.assertEqual(self.reader.lost, 1)
        self.assertTrue(self.reader.reason.check(ConnectionDone))
        self.assertEqual(self.pair.from_server.errors(), [])

    def test_remote_error(self) -> None:
        """Error 'boom' from the far side: StreamError containing 'boom'."""
        self.pair.client.streams[2].close_with_error("boom")
        self.pair.pump()
        self.assertEqual(self.pair.from_client.errors(), [(2, "boom")])
        self.assertTrue(self.reader.reason.check(StreamError))
        self.assertIn("boom", str(self.reader.reason.value))
        self.assertTrue(self.stream.closed)
        self.assertEqual(self.pair.from_server.errors(), [])

    def test_abort(self) -> None:
        """abortConnection drops held bytes and sends a non-EOF Error."""
        self.pair.client_sends(_codec.pause(0, 2))
        self.pair.pump()
        self.stream.write(b"dropped")
        self.stream.abortConnection()
        [(conn_id, text)] = self.pair.from_server.errors()
        self.assertEqual(conn_id, 2)
        self.assertNotEqual(text, EOF)
        self.assertEqual(self.pair.from_server.data(2), b"")
        self.assertIsNone(self.reader.reason, "connectionLost inside abortConnection")
        self.pair.settle()
        self.assertTrue(self.reader.reason.check(StreamError))
        self.pair.pump()
        self.assertEqual(self.target.calls[-1], "abortConnection")

    def test_nothing_after_close(self) -> None:
        """After close, writes and further closes are ignored and send nothing."""
        self.stream.loseConnection()
        sent = len(self.pair.from_server.log)
        self.stream.write(b"late")
        self.stream.writeSequence([b"late"])
        self.stream.loseConnection()
        self.stream.abortConnection()
        self.stream.close_with_error("late")
        self.stream.pauseProducing()
        self.stream.resumeProducing()
        self.pair.settle()
        self.assertEqual(len(self.pair.from_server.log), sent)
        self.assertEqual(self.reader.lost, 1)


# One operation of the interleaving test.
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(min_value=1, max_value=70_000)),
        st.tuples(
            st.sampled_from(
                [
                    "reader_pause",
                    "reader_resume",
                    "far_pause",
                    "far_resume",
                    "session_pause",
                    "session_resume",
                    "step_down",
                    "step_up",
                    "pump",
                ]
            )
        ),
    ),
    max_size=40,
)


class ProtocolErrorTests(SynchronousTestCase):
    def test_raising_protocol_fails_its_stream_only(self) -> None:
        """
        A protocol whose dataReceived raises ends its own stream with an
        error (logged, Error sent); the session and other streams carry on.
        """

        class Raising(Recorder):
            def dataReceived(self, data: bytes) -> None:
                raise RuntimeError("bug in the application")

        pair = SessionPair()
        bad, bad_protocol, bad_endpoint = pair.open(Raising())
        good, good_protocol, good_endpoint = pair.open()
        bad_endpoint.protocol.dataReceived(b"boom")
        good_endpoint.protocol.dataReceived(b"fine")
        pair.pump()
        self.assertTrue(bad.closed)
        self.assertTrue(bad_protocol.reason.check(StreamError))
        self.assertIn("bug in the application", bad_protocol.reason.getErrorMessage())
        self.assertEqual(pair.from_server.errors(bad.conn_id),
                         [(bad.conn_id, "protocol error: bug in the application")])
        self.assertFalse(good.closed)
        self.assertEqual(good_protocol.data, b"fine")
        self.assertFalse(pair.server.closed)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class RaisingProducer(FakeProducer):
    """A push producer whose pause and/or resume raise."""

    def __init__(self, fail_on: tuple[str, ...]) -> None:
        super().__init__()
        self.fail_on = fail_on

    def pauseProducing(self) -> None:
        super().pauseProducing()
        if "pause" in self.fail_on:
            raise RuntimeError("pause bug")

    def resumeProducing(self) -> None:
        super().resumeProducing()
        if "resume" in self.fail_on:
            raise RuntimeError("resume bug")


class ProducerErrorTests(SynchronousTestCase):
    """A producer that raises ends its own stream (logged), never the session."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.bad, self.bad_reader, _ = self.pair.open()
        self.good, self.good_reader, self.good_endpoint = self.pair.open()

    def assert_only_bad_stream_ended(self, text: str) -> None:
        self.pair.pump()
        self.assertTrue(self.bad.closed)
        self.assertTrue(self.bad_reader.reason.check(StreamError))
        self.assertEqual(self.pair.from_server.errors(self.bad.conn_id),
                         [(self.bad.conn_id, f"producer error: {text}")])
        self.assertFalse(self.pair.server.closed)
        self.assertFalse(self.good.closed)
        self.good_endpoint.protocol.dataReceived(b"still fine")
        self.pair.pump()
        self.assertEqual(self.good_reader.data, b"still fine")
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_pause_raises_on_far_pause(self) -> None:
        """The far side's Pause reaches a producer whose pauseProducing raises."""
        self.bad.registerProducer(RaisingProducer(("pause",)), True)
        self.pair.client_sends(_codec.pause(0, self.bad.conn_id))
        self.assertEqual(self.pair.pump(), 2)
        self.assert_only_bad_stream_ended("pause bug")

    def test_resume_raises_when_transport_drains(self) -> None:
        """The session's resumeProducing (its WebSocket drained) survives a raising producer."""
        producer = RaisingProducer(("resume",))
        self.bad.registerProducer(producer, True)
        good_producer = FakeProducer()
        self.good.registerProducer(good_producer, True)
        self.pair.server.pauseProducing()
        self.bad.write(b"x")
        self.good.write(b"y")
        self.assertTrue(producer.paused and good_producer.paused)
        self.pair.server.resumeProducing()  # must not raise
        self.assertFalse(good_producer.paused)
        self.assertIn("stop", producer.calls)
        self.assert_only_bad_stream_ended("resume bug")


class DrainingTests(SynchronousTestCase):
    """A clean close from the far side while our reader is paused."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.stream, self.reader, self.endpoint = self.pair.open()
        self.stream.pauseProducing()
        self.endpoint.protocol.dataReceived(b"buffered")
        self.endpoint.protocol.connectionLost(Failure(ConnectionDone()))
        self.pair.pump()
        self.assertEqual(self.pair.from_client.errors(), [(2, EOF)])
        self.assertIsNone(self.reader.reason)

    def test_told_when_session_dies(self) -> None:
        """The session still owns the draining stream: its end ends the stream too."""
        reason = Failure(ConnectionLost("websocket gone"))
        self.pair.server.connection_lost(reason)
        self.pair.settle()
        self.assertEqual(self.reader.lost, 1)
        self.assertIs(self.reader.reason, reason)
        self.assertTrue(self.stream.closed)

    def test_wire_id_free_while_draining(self) -> None:
        """The far side forgot the id: Data for it is answered as unknown; the buffer stays ours."""
        self.assertNotIn(2, self.pair.server.streams)
        inject(self.pair.server, _codec.data(99, 2, b"late"))
        [(conn_id, text)] = self.pair.from_server.errors()
        self.assertEqual((conn_id, text), (2, f"connection not found {CLIENT_KEY}/{SERVER_SESSION_KEY}/2"))
        self.stream.resumeProducing()
        self.pair.settle()
        self.assertEqual(self.reader.data, b"buffered")
        self.assertTrue(self.reader.reason.check(ConnectionDone))
        # Ended: the session's end no longer reaches it.
        self.pair.server.connection_lost(Failure(ConnectionLost("later")))
        self.pair.settle()
        self.assertEqual(self.reader.lost, 1)


class InterleavingTests(SynchronousTestCase):
    """Property: flow control never loses, duplicates or reorders bytes."""

    @settings(max_examples=150, deadline=None)
    @given(OPERATIONS)
    def test_bytes_in_order(self, operations) -> None:
        """
        Any interleaving of writes, pauses and resumes delivers exactly the
        bytes written, in order, and no Data leaves while the far side has
        paused the stream.
        """
        pair = SessionPair()
        stream, _, endpoint = pair.open()
        far = pair.client.streams[2]
        producer = FakeProducer()
        stream.registerProducer(producer, True)
        written = []
        actions = {
            "reader_pause": far.pauseProducing,
            "reader_resume": far.resumeProducing,
            "far_pause": lambda: pair.client_sends(_codec.pause(0, 2)),
            "far_resume": lambda: pair.client_sends(_codec.resume(0, 2)),
            "session_pause": pair.server.pauseProducing,
            "session_resume": pair.server.resumeProducing,
            "step_down": lambda: pair.step(to_client=True),
            "step_up": lambda: pair.step(to_client=False),
            "pump": pair.pump,
        }
        for op in operations:
            if op[0] == "write":
                data = (len(written).to_bytes(4, "big") * (op[1] // 4 + 1))[: op[1]]
                written.append(data)
                stream.write(data)
            else:
                actions[op[0]]()
        far.resumeProducing()
        pair.client_sends(_codec.resume(0, 2))
        pair.server.resumeProducing()
        pair.pump()

        self.assertEqual(endpoint.transport.value(), b"".join(written))
        self.assertFalse(producer.paused)
        far_paused = False
        for where, message in pair.timeline:
            if message.conn_id != 2:
                continue
            if where == "to server" and message.type in (MessageType.PAUSE, MessageType.RESUME):
                far_paused = message.type == MessageType.PAUSE
            if where == "server" and message.type == MessageType.DATA:
                self.assertFalse(far_paused, "Data sent while the far side had paused us")
