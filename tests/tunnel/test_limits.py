"""
SessionLimits in the multiplexer and the acceptor, each at limit-1 and
limit+1: over a limit the offending stream gets a clear Error and the rest
of the session keeps working.  (The WebSocket-level limits are in
test_websocket.py.)
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import MessageType
from remotedialer.protocol._events import ConnectRequested, DataReceived, ProtocolViolation, StreamEnded
from remotedialer.protocol._exceptions import TooManyStreams
from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._limits import SessionLimits, UpgradeLimits
from remotedialer.protocol._multiplexer import Multiplexer
from remotedialer.tunnel._session import Session
from tests.memory import Direction, FakeDialer, Recorder, SessionPair

FLOW = FlowLimits(pause_threshold=1000, resume_threshold=100, hard_cap=4000)


def connect(m: Multiplexer, conn_id: int):
    return m.receive(_codec.encode(_codec.connect(1, conn_id, "tcp", "127.0.0.1:80")))


def sent(m: Multiplexer):
    return [_codec.decode(data) for data in m.data_to_send()]


class ValidationTests(SynchronousTestCase):
    def test_positive(self) -> None:
        for name in ("max_message_size", "message_deadline", "max_streams", "max_pending_dials",
                     "session_buffer", "send_high_water"):
            self.assertRaises(ValueError, SessionLimits, **{name: 0})
        for name in ("header_bytes", "max_headers", "timeout", "max_pending"):
            self.assertRaises(ValueError, UpgradeLimits, **{name: -1})


class MaxStreamsTests(SynchronousTestCase):
    def test_inbound_connects(self) -> None:
        """The limit-th Connect is accepted; the next is refused with an Error for its id only."""
        m = Multiplexer(session_limits=SessionLimits(max_streams=3))
        for conn_id in (2, 3, 4):
            [event] = connect(m, conn_id)
            self.assertIsInstance(event, ConnectRequested)
        m.data_to_send()
        [event] = connect(m, 5)
        self.assertIsInstance(event, ProtocolViolation)
        [error] = sent(m)
        self.assertEqual((error.type, error.conn_id, error.error_text()),
                         (MessageType.ERROR, 5, "too many streams (limit 3)"))
        self.assertEqual(sorted(m.streams), [2, 3, 4])
        # The others still work, and a freed slot is usable again.
        [event] = m.receive(_codec.encode_data(9, 2, b"hi"))
        self.assertIsInstance(event, DataReceived)
        m.receive(_codec.encode(_codec.error(10, 3, "EOF")))
        [event] = connect(m, 6)
        self.assertIsInstance(event, ConnectRequested)

    def test_open_stream(self) -> None:
        """Opening the limit-th stream works; one more raises TooManyStreams (the Session: ConnectError)."""
        m = Multiplexer(session_limits=SessionLimits(max_streams=2))
        m.open_stream("tcp", "a:1")
        m.open_stream("tcp", "a:2")
        self.assertRaises(TooManyStreams, m.open_stream, "tcp", "a:3")
        session = Session(Direction().send, session_limits=SessionLimits(max_streams=1))
        session.open_stream("tcp", "a:1")
        self.assertRaises(ConnectError, session.open_stream, "tcp", "a:2")

    def test_draining_streams_count(self) -> None:
        """A stream the far side closed, still holding data for its reader, still counts."""
        m = Multiplexer(session_limits=SessionLimits(max_streams=1), limits=FLOW)
        [event] = connect(m, 2)
        m.pause_reading(event.stream)
        m.receive(_codec.encode_data(2, 2, b"held"))
        m.receive(_codec.encode(_codec.error(3, 2, "EOF")))
        self.assertEqual(m.streams, {})
        [event] = connect(m, 3)
        self.assertIsInstance(event, ProtocolViolation)


class SessionBudgetTests(SynchronousTestCase):
    def setUp(self) -> None:
        # Per stream: Pause past 1000, cut at 4000; the session: 3200 in all,
        # of which receive buffers may hold 3000 (a sixteenth is kept back).
        self.m = Multiplexer(limits=FLOW, session_limits=SessionLimits(session_buffer=3200))
        self.streams = []
        for conn_id in (2, 3, 4):
            [event] = connect(self.m, conn_id)
            self.m.pause_reading(event.stream)
            self.streams.append(event.stream)

    def feed(self, conn_id: int, size: int):
        return self.m.receive(_codec.encode_data(9, conn_id, b"x" * size))

    def test_half_budget_pauses_every_buffering_stream(self) -> None:
        """At half the receive budget nothing happens; one byte past it, every buffering stream gets Pause."""
        self.feed(2, 700)
        self.feed(3, 800)
        self.assertEqual(self.m.buffered, 1500)
        self.assertEqual(sent(self.m), [])
        self.feed(4, 1)
        pauses = [(m.type, m.conn_id) for m in sent(self.m)]
        self.assertEqual(sorted(pauses), [(MessageType.PAUSE, 2), (MessageType.PAUSE, 3),
                                          (MessageType.PAUSE, 4)])
        self.feed(4, 1)
        self.assertEqual(sent(self.m), [])  # once per excursion

    def test_over_budget_ends_largest(self) -> None:
        """Exactly the receive budget (15/16 of the session's) is held; one byte more ends the largest."""
        self.feed(2, 900)
        self.feed(3, 999)
        self.feed(4, 999)
        self.feed(2, 102)
        self.assertEqual(self.m.buffered, 3000)
        self.assertTrue(all(not s.ended for s in self.streams))
        events = self.feed(3, 1)
        [ended] = [e for e in events if isinstance(e, StreamEnded)]
        self.assertIs(ended.stream, self.streams[0])  # 1002 bytes, the most
        self.assertIn("session receive buffer over 3000 bytes", ended.error)
        self.assertEqual(self.m.buffered, 1999)
        errors = [(m.conn_id, m.error_text()) for m in sent(self.m) if m.type is MessageType.ERROR]
        self.assertEqual(errors, [(2, ended.error)])
        self.assertFalse(self.streams[1].ended or self.streams[2].ended)

    def test_reading_frees_budget(self) -> None:
        """What readers take leaves the budget."""
        self.feed(2, 900)
        self.m.resume_reading(self.streams[0])
        self.assertEqual(self.m.read(self.streams[0]), b"x" * 900)
        self.assertEqual(self.m.buffered, 0)


class ConnectTargetTests(SynchronousTestCase):
    def target(self, m: Multiplexer, conn_id: int, size: int):
        """A Connect whose payload ("tcp/" + address) is C{size} bytes."""
        address = "h" * (size - len("tcp/") - len(":80")) + ":80"
        return m.receive(_codec.encode(_codec.connect(1, conn_id, "tcp", address)))

    def test_limit(self) -> None:
        """A target of limit-1 or limit bytes is dialed; limit+1 is refused with an Error for that id only."""
        m = Multiplexer(session_limits=SessionLimits(max_connect_target=64))
        for conn_id, size in ((2, 63), (3, 64)):
            [event] = self.target(m, conn_id, size)
            self.assertIsInstance(event, ConnectRequested)
        [event] = self.target(m, 4, 65)
        self.assertIsInstance(event, ProtocolViolation)
        self.assertFalse(event.fatal)
        [error] = sent(m)
        self.assertEqual((error.type, error.conn_id, error.error_text()),
                         (MessageType.ERROR, 4, "Connect target of 65 bytes is over the limit of 64"))
        self.assertEqual(sorted(m.streams), [2, 3])

    def test_default_is_gos(self) -> None:
        """Go reads at most 266 bytes of a Connect: the default, and the most allowed."""
        self.assertEqual(SessionLimits().max_connect_target, _codec.MAX_CONNECT_PAYLOAD)
        self.assertRaises(ValueError, SessionLimits, max_connect_target=_codec.MAX_CONNECT_PAYLOAD + 1)
        self.assertRaises(ValueError, SessionLimits, max_connect_target=0)


class PendingDialsTests(SynchronousTestCase):
    def test_limit(self) -> None:
        """The limit-th dial in progress is accepted; one more is refused; a settled dial frees a slot."""
        dialer = FakeDialer()
        dialer.rules["tcp/127.0.0.1:80"] = Deferred()  # never decides: the dial stays pending
        pair = SessionPair(client_dialer=dialer, client_session_limits=SessionLimits(max_pending_dials=2))
        first = pair.server.dial("tcp", "127.0.0.1:80", Recorder())
        second = pair.server.dial("tcp", "127.0.0.1:80", Recorder())
        pair.pump()
        self.assertFalse(first.closed or second.closed)
        third = pair.server.dial("tcp", "127.0.0.1:80", Recorder())
        pair.pump()
        self.assertTrue(third.closed)
        self.assertEqual(pair.from_client.errors(third.conn_id),
                         [(third.conn_id, "too many dials in progress (limit 2)")])
        dialer.rules["tcp/127.0.0.1:80"].callback(None)  # both pending dials are refused now
        pair.pump()
        self.assertTrue(first.closed and second.closed)
        fourth = pair.server.dial("tcp", "127.0.0.1:81", Recorder())
        pair.pump()
        self.assertFalse(fourth.closed)
