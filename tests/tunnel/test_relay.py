"""
Tests for remotedialer.tunnel._relay: the portforward idiom between two
transports, with back-pressure both ways and close propagation, between
plain transports, a tunnel stream and a transport, and two tunnel streams.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint, ITCPTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import MessageType
from remotedialer.protocol._multiplexer import EOF
from remotedialer.tunnel._exceptions import StreamError
from remotedialer.tunnel._relay import Relay, join
from remotedialer.tunnel._session import Session
from tests.memory import (
    TARGET,
    Direction,
    FakeEndpoint,
    RecordingTransport,
    SessionPair,
    inject,
)


@implementer(ITCPTransport)
class TCPLikeTransport(RecordingTransport):
    """A RecordingTransport that is a TCP connection: it has Nagle to switch off."""

    no_delay = False

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled

    def getTcpNoDelay(self) -> bool:
        return self.no_delay


class NagleTests(SynchronousTestCase):
    """Relayed bytes go out at once: a TCP half turns Nagle off (as Go does)."""

    def test_tcp_halves(self) -> None:
        first_transport, second_transport = TCPLikeTransport(), TCPLikeTransport()
        first = Relay()
        first.makeConnection(first_transport)
        Relay(first).makeConnection(second_transport)
        self.assertEqual((first_transport.no_delay, second_transport.no_delay), (True, True))

    def test_other_transports(self) -> None:
        """A transport that is not TCP (a tunnel stream, a pipe) is left alone."""
        first, transport = Relay(), RecordingTransport()
        first.makeConnection(transport)
        self.assertFalse(hasattr(transport, "no_delay"))
        self.assertEqual(transport.calls, ["pauseProducing"])


class PlainRelayTests(SynchronousTestCase):
    """A relay between two plain transports."""

    def setUp(self) -> None:
        self.first = Relay()
        self.first_transport = RecordingTransport()
        self.first.makeConnection(self.first_transport)
        self.endpoint = FakeEndpoint(*TARGET, immediate=False)
        self.connecting = self.first.connect_peer(self.endpoint)

    def connect(self):
        self.endpoint.complete()
        return self.endpoint.protocol, self.endpoint.transport

    def test_paused_until_connected(self) -> None:
        """The first transport is paused until the second connects, then resumed."""
        self.assertEqual(self.first_transport.calls, ["pauseProducing"])
        self.assertEqual(self.first_transport.producerState, "paused")
        second, second_transport = self.connect()
        self.assertIs(self.successResultOf(self.connecting), second)
        self.assertEqual(self.first_transport.producerState, "producing")
        self.assertEqual(
            self.first_transport.calls,
            ["pauseProducing", "registerProducer", "resumeProducing"],
        )

    def test_producers_crossed(self) -> None:
        """Each transport is registered, streaming, as the other's producer."""
        _, second_transport = self.connect()
        # registered through a wrapper that passes pauses only: closing is the relay's
        self.assertIs(self.first_transport.producer.transport, second_transport)
        self.assertIs(second_transport.producer.transport, self.first_transport)
        self.assertTrue(self.first_transport.streaming)
        self.assertTrue(second_transport.streaming)

    def test_bytes_both_ways(self) -> None:
        """Bytes received on either side are written to the other."""
        second, second_transport = self.connect()
        self.first.dataReceived(b"request")
        second.dataReceived(b"response")
        self.assertEqual(second_transport.value(), b"request")
        self.assertEqual(self.first_transport.value(), b"response")

    def test_clean_close_first(self) -> None:
        """A clean close of the first side unregisters, then loses, the second."""
        _, second_transport = self.connect()
        self.first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(second_transport.calls[-2:], ["unregisterProducer", "loseConnection"])
        self.assertIsNone(second_transport.producer)
        self.assertNotIn("abortConnection", second_transport.calls)

    def test_clean_close_second(self) -> None:
        """A clean close of the second side unregisters, then loses, the first."""
        second, _ = self.connect()
        second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.first_transport.calls[-2:], ["unregisterProducer", "loseConnection"])
        self.assertIsNone(self.first_transport.producer)

    def test_error_close_aborts(self) -> None:
        """An error close of one side aborts a plain transport on the other."""
        _, second_transport = self.connect()
        self.first.connectionLost(Failure(ConnectionLost("reset")))
        self.assertEqual(second_transport.calls[-2:], ["unregisterProducer", "abortConnection"])
        self.assertNotIn("loseConnection", second_transport.calls)

    def test_lost_while_connecting(self) -> None:
        """Losing the first side while the connect is pending cancels it."""
        self.first.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.endpoint.cancelled)
        self.failureResultOf(self.connecting, CancelledError)

    def test_connected_after_loss(self) -> None:
        """A connection that completes after the first side is gone is closed at once."""
        self.first.connectionLost(Failure(ConnectionLost("gone")))
        self.failureResultOf(self.connecting, CancelledError)
        _, second_transport = self.connect()
        self.assertEqual(second_transport.calls, ["loseConnection"])
        self.assertIsNone(second_transport.producer)
        self.assertEqual(self.first_transport.calls, ["pauseProducing"])


class StreamRelayTests(SynchronousTestCase):
    """A relay between a tunnel stream (first half) and a plain transport."""

    def setUp(self) -> None:
        self.wire = Direction()
        self.clock = Clock()
        self.session = Session(self.wire.send, clock=self.clock)
        self.stream = self.session.open_stream(*TARGET)
        self.relay = Relay()
        self.stream.attach(self.relay)
        self.endpoint = FakeEndpoint(*TARGET)
        self.relay.connect_peer(self.endpoint)
        self.second = self.endpoint.protocol
        self.target = self.endpoint.transport

    def test_bytes_both_ways(self) -> None:
        """Data from the far side reaches the target and back."""
        inject(self.session, _codec.data(1, 2, b"request"))
        self.second.dataReceived(b"response")
        self.assertEqual(self.target.value(), b"request")
        self.assertEqual(self.wire.data(2), b"response")

    def test_buffered_until_connected(self) -> None:
        """Data arriving before the target connects is delivered once it does."""
        stream = self.session.open_stream(*TARGET)
        relay = Relay()
        stream.attach(relay)
        inject(self.session, _codec.data(1, stream.conn_id, b"early"))
        endpoint = FakeEndpoint(*TARGET)
        relay.connect_peer(endpoint)
        self.assertEqual(endpoint.transport.value(), b"early")

    def test_back_pressure(self) -> None:
        """The far side's Pause pauses the target; a full target pauses the stream."""
        inject(self.session, _codec.pause(1, 2))
        self.assertEqual(self.target.producerState, "paused")
        inject(self.session, _codec.resume(2, 2))
        self.assertEqual(self.target.producerState, "producing")
        self.target.producer.pauseProducing()
        inject(self.session, _codec.data(3, 2, b"waits"))
        self.assertEqual(self.target.value(), b"")
        self.target.producer.resumeProducing()
        self.assertEqual(self.target.value(), b"waits")

    def test_target_error_closes_stream_with_error(self) -> None:
        """An error close of the target closes the stream with a non-EOF Error."""
        reason = Failure(ConnectionLost("reset by peer"))
        self.second.connectionLost(reason)
        self.assertTrue(self.stream.closed)
        [(conn_id, text)] = self.wire.errors()
        self.assertEqual(conn_id, 2)
        self.assertNotEqual(text, EOF)
        self.assertIn("reset by peer", text)

    def test_target_clean_close_sends_eof(self) -> None:
        """A clean close of the target closes the stream with Error EOF."""
        self.second.dataReceived(b"last")
        self.second.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.wire.types(2)[-2:], [MessageType.DATA, MessageType.ERROR])
        self.assertEqual(self.wire.errors(), [(2, EOF)])

    def test_data_after_target_gone(self) -> None:
        """
        Data arriving while the stream waits to flush its held bytes (the
        target having closed) is dropped without error; the held bytes and
        EOF still go out on Resume.
        """
        inject(self.session, _codec.pause(1, 2))
        self.second.dataReceived(b"held")
        self.second.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.stream.disconnecting)
        inject(self.session, _codec.data(2, 2, b"late"))
        inject(self.session, _codec.resume(3, 2))
        self.assertEqual(self.wire.data(2), b"held")
        self.assertEqual(self.wire.errors(), [(2, EOF)])
        self.assertEqual(self.target.value(), b"")

    def test_stream_error_aborts_target(self) -> None:
        """Error from the far side aborts the target (no clean close first)."""
        inject(self.session, _codec.error(1, 2, "boom"))
        self.clock.advance(0)
        self.assertEqual(self.target.calls[-2:], ["unregisterProducer", "abortConnection"])
        self.assertNotIn("loseConnection", self.target.calls)
        self.assertNotIn("stopProducing", self.target.calls)


@implementer(IStreamClientEndpoint)
class StreamEndpoint:
    """An endpoint whose connections are new streams of C{session}."""

    def __init__(self, session: Session, proto: str, address: str) -> None:
        self.session = session
        self.target = (proto, address)
        self.stream = None

    def connect(self, factory):
        protocol = factory.buildProtocol(None)
        self.stream = self.session.dial(*self.target, protocol)
        return succeed(protocol)


class StreamToStreamTests(SynchronousTestCase):
    """A relay between two tunnel streams (a peer server forwarding a dial)."""

    def setUp(self) -> None:
        # Stream 'inbound' came from the dialing server; 'outbound' goes to the client.
        self.pair = SessionPair()
        self.in_wire = Direction()
        self.in_session = Session(self.in_wire.send, clock=self.pair.clock)
        self.inbound = self.in_session.open_stream(*TARGET)
        self.relay = Relay()
        self.inbound.attach(self.relay)
        self.endpoint = StreamEndpoint(self.pair.server, *TARGET)
        self.relay.connect_peer(self.endpoint)
        self.pair.pump()
        self.outbound = self.endpoint.stream

    def test_bytes_both_ways(self) -> None:
        """Bytes pass from one stream to the other and back."""
        inject(self.in_session, _codec.data(1, 2, b"ping"))
        self.pair.pump()
        self.assertEqual(self.pair.client_dialer.endpoints[0].transport.value(), b"ping")
        self.pair.client_dialer.endpoints[0].protocol.dataReceived(b"pong")
        self.pair.pump()
        self.assertEqual(self.in_wire.data(2), b"pong")

    def test_error_text_forwarded(self) -> None:
        """A far side's Error on one stream is forwarded with the same text."""
        self.pair.client.streams[2].close_with_error("connect to tcp/10.0.0.1:22 not allowed")
        self.pair.pump()
        self.assertTrue(self.outbound.closed)
        self.assertTrue(self.inbound.closed)
        self.assertEqual(self.in_wire.errors(), [(2, "connect to tcp/10.0.0.1:22 not allowed")])

    def test_stream_error_is_stream_error(self) -> None:
        """The relay half on the dying stream gets a StreamError."""
        lost = []
        self.relay.connectionLost = lost.append
        self.pair.client.streams[2].close_with_error("boom")
        self.pair.pump()
        self.assertEqual(len(lost), 1)
        self.assertTrue(lost[0].check(StreamError))


class JoinTests(SynchronousTestCase):
    """join(): two transports already connected elsewhere, relayed both ways."""

    def test_bytes_pauses_and_closes(self) -> None:
        one, other = StringTransport(), StringTransport()
        first, second = join(one, other)
        first.dataReceived(b"to other")
        second.dataReceived(b"to one")
        self.assertEqual((other.value(), one.value()), (b"to other", b"to one"))
        one.producer.pauseProducing()  # one's buffer is full: stop reading from other
        self.assertEqual(other.producerState, "paused")
        one.producer.resumeProducing()
        self.assertEqual(other.producerState, "producing")
        first.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(other.disconnecting)  # closed as cleanly as one was
        self.assertIsNone(other.producer)
