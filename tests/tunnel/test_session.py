"""
Tests for remotedialer.tunnel._session: opening streams, message dispatch,
SyncConnections, peer announcements, session-level back-pressure and the end
of a session (PROTOCOL.md sections 3 to 5), on two sessions joined in memory.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectError, ConnectionLost
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import Message, MessageIds, MessageType
from remotedialer.protocol._exceptions import MalformedMessage
from remotedialer.protocol._multiplexer import CLIENT_FIRST_CONN_ID, MAX_DATA_CHUNK
from remotedialer.tunnel._exceptions import StreamError
from remotedialer.tunnel._session import Session
from tests.memory import (
    CLIENT_KEY,
    CLIENT_SESSION_KEY,
    TARGET,
    Direction,
    FakeDialer,
    FakeProducer,
    Recorder,
    SessionPair,
    inject,
)

GOLDEN_CONNECT = bytes.fromhex("020404b0ea017463702f3132372e302e302e313a38313235")


class OpenStreamTests(SynchronousTestCase):
    """session.open_stream: Connect, stream ids, Data."""

    def test_connect_golden_bytes(self) -> None:
        """The first stream sends exactly the golden Connect (id 1, conn 2)."""
        wire = Direction()
        session = Session(wire.send, message_ids=MessageIds(1))
        stream = session.open_stream("tcp", "127.0.0.1:8125")
        self.assertEqual(stream.conn_id, 2)
        self.assertEqual(wire.raw, [GOLDEN_CONNECT])
        self.assertIs(session.streams[2], stream)

    def test_server_ids_count_from_two(self) -> None:
        """A server-side session numbers its streams 2, 3, 4..."""
        wire = Direction()
        session = Session(wire.send)
        ids = [session.open_stream(*TARGET).conn_id for _ in range(3)]
        self.assertEqual(ids, [2, 3, 4])
        self.assertEqual([m.conn_id for m in wire.of(MessageType.CONNECT)], [2, 3, 4])

    def test_client_ids_count_from_2_48(self) -> None:
        """A session made with dials_as_client=True numbers its streams from 1<<48."""
        wire = Direction()
        session = Session(wire.send, dials_as_client=True)
        ids = [session.open_stream(*TARGET).conn_id for _ in range(2)]
        self.assertEqual(CLIENT_FIRST_CONN_ID, 1 << 48)
        self.assertEqual(ids, [1 << 48, (1 << 48) + 1])
        self.assertEqual(wire.of(MessageType.CONNECT)[0].payload, b"tcp/127.0.0.1:8125")

    def test_target_no_connect_can_name_is_a_connect_error(self) -> None:
        """
        A target over the Connect limit, or not ASCII, fails the dial as any
        dial nobody can make (ConnectError, which callers turn into their
        answers), not with the codec's ValueError (an unexpected error to them).
        """
        wire = Direction()
        session = Session(wire.send)
        for address, text in (("a" * 300 + ":80", "Connect target is over 266 bytes"),
                              ("caf\u00e9:80", "ascii")):
            with self.assertRaises(ConnectError) as caught:
                session.open_stream("tcp", address)
            self.assertNotIsInstance(caught.exception, ValueError)
            self.assertIn(text, str(caught.exception))
        self.assertEqual(wire.raw, [])
        self.assertEqual(session.streams, {})

    def test_write_sends_data(self) -> None:
        """A write is one Data message: id 2, conn 2, deadline 15000, the bytes."""
        wire = Direction()
        session = Session(wire.send, message_ids=MessageIds(1))
        stream = session.open_stream(*TARGET)
        stream.write(b"hello")
        self.assertEqual(wire.raw[1:], [bytes.fromhex("040402b0ea0168656c6c6f")])

    def test_large_write_split(self) -> None:
        """Writes over 64 KiB go out as 64 KiB Data messages, in order."""
        wire = Direction()
        session = Session(wire.send)
        stream = session.open_stream(*TARGET)
        payload = bytes(range(256)) * 512 + b"x"  # 128 KiB + 1
        stream.write(payload)
        sizes = [len(m.payload) for m in wire.of(MessageType.DATA)]
        self.assertEqual(MAX_DATA_CHUNK, 64 * 1024)
        self.assertEqual(sizes, [65536, 65536, 1])
        self.assertEqual(wire.data(2), payload)

    def test_exactly_64k_write_is_one_message(self) -> None:
        """A write of exactly 64 KiB is not split."""
        wire = Direction()
        session = Session(wire.send)
        session.open_stream(*TARGET).write(b"z" * 65536)
        self.assertEqual([len(m.payload) for m in wire.of(MessageType.DATA)], [65536])

    def test_dial_reaches_far_side(self) -> None:
        """Connect makes the far side dial the target and relay bytes both ways."""
        pair = SessionPair()
        stream, recorder, endpoint = pair.open()
        self.assertEqual(pair.client_dialer.requests, [TARGET])
        stream.write(b"ping")
        pair.pump()
        self.assertEqual(endpoint.transport.value(), b"ping")
        endpoint.protocol.dataReceived(b"pong")
        pair.pump()
        self.assertEqual(recorder.data, b"pong")

    def test_client_dials_server(self) -> None:
        """A client-side session's stream (id 1<<48) is served by the server's dialer."""
        pair = SessionPair(server_dialer=FakeDialer())
        recorder = Recorder()
        stream = pair.client.dial("tcp", "10.0.0.1:80", recorder)
        stream.write(b"GET")
        pair.pump()
        self.assertEqual(pair.server_dialer.requests, [("tcp", "10.0.0.1:80")])
        self.assertIn(1 << 48, pair.server.streams)
        self.assertEqual(pair.server_dialer.endpoints[0].transport.value(), b"GET")


class DispatchTests(SynchronousTestCase):
    """How a session answers what the far side sends."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.stream, self.recorder, self.endpoint = self.pair.open()

    def test_data_for_unknown_stream(self) -> None:
        """Data for an unknown connID gets Error 'connection not found <key>/<session>/<id>'."""
        inject(self.pair.client, _codec.data(5, 99, b"x"))
        self.assertEqual((CLIENT_KEY, CLIENT_SESSION_KEY), ("foo", 7))
        self.assertEqual(self.pair.from_client.errors(), [(99, "connection not found foo/7/99")])
        self.assertFalse(self.pair.client.closed)

    def test_connect_refused(self) -> None:
        """A Connect the dialer refuses (None) gets an Error for that connID only."""
        self.pair.client_dialer.rules["tcp/10.0.0.1:22"] = None
        refused = Recorder()
        self.pair.server.dial("tcp", "10.0.0.1:22", refused)
        self.pair.pump()
        self.assertEqual(
            self.pair.from_client.errors(), [(3, "connect to tcp/10.0.0.1:22 not allowed")]
        )
        self.assertTrue(refused.reason.check(StreamError))
        self.assertIn("connect to tcp/10.0.0.1:22 not allowed", str(refused.reason.value))
        self.assertNotIn(3, self.pair.client.streams)
        self.assertStillWorks()

    def test_dialer_raises(self) -> None:
        """A dialer that raises gets an Error carrying the exception's text."""
        self.pair.client_dialer.rules["udp/10.0.0.1:53"] = ValueError("unsupported protocol 'udp'")
        self.pair.server.dial("udp", "10.0.0.1:53", Recorder())
        self.pair.pump()
        self.assertEqual(self.pair.from_client.errors(), [(3, "unsupported protocol 'udp'")])
        self.assertStillWorks()

    def test_dialer_fails_later(self) -> None:
        """A dialer whose Deferred fails later gets an Error with the failure's text."""
        pending = Deferred()
        self.pair.client_dialer.rules["tcp/10.0.0.1:1"] = pending
        self.pair.server.dial("tcp", "10.0.0.1:1", Recorder())
        self.pair.pump()
        self.assertEqual(self.pair.from_client.errors(), [])
        pending.errback(ConnectionRefusedError("connection refused"))
        self.pair.pump()
        self.assertEqual(self.pair.from_client.errors(), [(3, "connection refused")])

    def test_stream_closed_while_dialer_decides(self) -> None:
        """
        A stream closed by the far side while the dialer is still deciding is
        never dialed once the dialer allows it.
        """
        pending = Deferred()
        self.pair.client_dialer.rules["tcp/10.0.0.1:1"] = pending
        stream = self.pair.server.dial("tcp", "10.0.0.1:1", Recorder())
        self.pair.pump()
        stream.loseConnection()
        self.pair.pump()
        self.assertNotIn(3, self.pair.client.streams)
        endpoint = _NeverConnect()
        pending.callback(endpoint)
        self.assertEqual(endpoint.connects, 0)

    def test_duplicate_connect(self) -> None:
        """A Connect for a live connID gets an Error and leaves the live stream alone."""
        live = self.pair.client.streams[2]
        inject(self.pair.client, _codec.connect(50, 2, "tcp", "10.9.9.9:1"))
        self.assertEqual(self.pair.from_client.errors(), [(2, "connection id 2 already in use")])
        self.assertEqual(self.pair.client_dialer.requests, [TARGET])
        self.assertIs(self.pair.client.streams[2], live)
        self.assertFalse(live.closed)
        inject(self.pair.client, _codec.data(51, 2, b"still here"))
        self.assertEqual(self.endpoint.transport.value(), b"still here")
        self.assertEqual(self.endpoint.transport.calls.count("loseConnection"), 0)

    def test_undecodable_header_ends_session(self) -> None:
        """A message whose header does not decode ends the session and calls drop."""
        other_reader = Recorder()
        self.pair.server.dial("tcp", "127.0.0.1:9", other_reader)
        self.pair.pump()
        self.pair.server.message_received(b"\x80")
        self.assertTrue(self.pair.server.closed)
        self.assertEqual(self.pair.drops, {"server": 1, "client": 0})
        self.pair.settle()
        for protocol in (self.recorder, other_reader):
            self.assertEqual(protocol.lost, 1)
            self.assertTrue(protocol.reason.check(MalformedMessage))
        self.assertEqual(self.pair.server.streams, {})
        self.assertEqual(list(self.pair.from_server.queue), [])

    def test_malformed_connect_payload(self) -> None:
        """A Connect payload without '/' only gets an Error for that connID."""
        raw = _codec.encode(Message(60, 9, MessageType.CONNECT, b"nonsense"))
        self.pair.client.message_received(raw)
        self.assertEqual(
            self.pair.from_client.errors(),
            [(9, 'malformed message: Connect target "nonsense" has no \'/\'')],
        )
        self.assertFalse(self.pair.client.closed)
        self.assertEqual(self.pair.client_dialer.requests, [TARGET])
        self.assertEqual(self.pair.drops, {"server": 0, "client": 0})
        self.assertStillWorks()

    def assertStillWorks(self) -> None:
        """The stream opened in setUp still carries bytes both ways."""
        self.assertFalse(self.stream.closed)
        self.stream.write(b"alive")
        self.endpoint.protocol.dataReceived(b"well")
        self.pair.pump()
        self.assertEqual(self.endpoint.transport.value(), b"alive")
        self.assertEqual(self.recorder.data, b"well")
        self.assertIsNone(self.recorder.reason)


class _NeverConnect:
    """An endpoint counting connect attempts (they never complete)."""

    def __init__(self) -> None:
        self.connects = 0

    def connect(self, factory) -> Deferred:
        self.connects += 1
        return Deferred()


class SyncConnectionsTests(SynchronousTestCase):
    """SyncConnections prunes only streams that lived through a whole interval."""

    def setUp(self) -> None:
        self.pair = SessionPair()

    def sync(self, *conn_ids: int) -> None:
        inject(self.pair.server, _codec.sync_connections(90, conn_ids))

    def test_listed_streams_kept(self) -> None:
        """Streams listed in every sync stay open."""
        stream, recorder, _ = self.pair.open()
        for _ in range(3):
            self.pair.client.send_sync_connections()
            self.pair.pump()
        self.assertEqual(self.pair.from_client.of(MessageType.SYNC_CONNECTIONS)[0].conn_ids(), [2])
        self.assertFalse(stream.closed)
        self.assertIsNone(recorder.reason)

    def test_opened_after_previous_sync_not_pruned(self) -> None:
        """A stream whose Connect crossed the client's list is not pruned (Go's race)."""
        self.pair.client.send_sync_connections()
        self.pair.pump()
        recorder = Recorder()
        stream = self.pair.server.dial(*TARGET, recorder)
        self.pair.client.send_sync_connections()  # made before the Connect arrives
        self.pair.pump()
        self.assertEqual(self.pair.from_client.of(MessageType.SYNC_CONNECTIONS)[1].conn_ids(), [])
        self.assertFalse(stream.closed)
        self.assertIsNone(recorder.reason)
        self.pair.client.send_sync_connections()
        self.pair.pump()
        self.assertFalse(stream.closed)

    def test_missing_from_two_syncs_pruned(self) -> None:
        """A stream missing from two consecutive syncs is closed, without an Error."""
        stream, recorder, _ = self.pair.open()
        sent_before = len(self.pair.from_server.log)
        self.sync()
        self.assertFalse(stream.closed)
        self.sync()
        self.assertTrue(stream.closed)
        self.assertNotIn(2, self.pair.server.streams)
        self.pair.settle()
        self.assertTrue(recorder.reason.check(StreamError))
        self.assertEqual(len(self.pair.from_server.log), sent_before)

    def test_listed_then_missing_pruned(self) -> None:
        """A stream listed in one sync and missing from the next is pruned."""
        stream, recorder, _ = self.pair.open()
        kept, _, _ = self.pair.open(target=("tcp", "127.0.0.1:9"))
        self.sync(2, 3)
        self.sync(3)
        self.assertTrue(stream.closed)
        self.assertFalse(kept.closed)
        self.assertEqual(self.pair.from_server.errors(), [])


class PeerAnnouncementTests(SynchronousTestCase):
    """AddClient / RemoveClient."""

    def setUp(self) -> None:
        self.heard: list[tuple[str, Session, str, int]] = []

    def client_added(self, session, client_key, session_key) -> None:
        self.heard.append(("added", session, client_key, session_key))

    def client_removed(self, session, client_key, session_key) -> None:
        self.heard.append(("removed", session, client_key, session_key))

    def test_peer_session_records_clients(self) -> None:
        """On a peer session they update remote_clients and call the listener."""
        pair = SessionPair(server_is_peer=True, listener=self)
        for added, key in [(True, 5), (True, 6), (False, 5)]:
            pair.client.announce_client("bar", key, added)
        pair.pump()
        self.assertEqual(pair.server.remote_clients, {"bar": {6}})
        pair.client.announce_client("bar", 6, False)
        pair.pump()
        self.assertEqual(pair.server.remote_clients, {})
        server = pair.server
        self.assertEqual(
            self.heard,
            [
                ("added", server, "bar", 5),
                ("added", server, "bar", 6),
                ("removed", server, "bar", 5),
                ("removed", server, "bar", 6),
            ],
        )

    def test_non_peer_session_ignores_them(self) -> None:
        """On a non-peer session they change nothing and call nobody."""
        pair = SessionPair(listener=self)
        pair.client.announce_client("bar", 5, True)
        pair.pump()
        self.assertEqual(pair.server.remote_clients, {})
        self.assertEqual(self.heard, [])
        self.assertFalse(pair.server.closed)
        self.assertEqual(pair.from_server.log, [])


class SessionBackPressureTests(SynchronousTestCase):
    """The WebSocket transport pausing the session (session as IPushProducer)."""

    def setUp(self) -> None:
        self.pair = SessionPair()
        self.writer, _, _ = self.pair.open()
        self.idle, _, _ = self.pair.open()
        self.writer_producer = FakeProducer()
        self.idle_producer = FakeProducer()
        self.writer.registerProducer(self.writer_producer, True)
        self.idle.registerProducer(self.idle_producer, True)

    def test_writer_paused_and_resumed(self) -> None:
        """Only a stream that writes while paused is paused, and only it is resumed."""
        self.pair.server.pauseProducing()
        self.pair.server.pauseProducing()
        self.assertEqual(self.writer_producer.calls, [])
        self.writer.write(b"one")
        self.writer.write(b"two")
        self.assertEqual(self.pair.from_server.data(2), b"onetwo")
        self.assertEqual(self.writer_producer.calls, ["pause"])
        self.pair.server.resumeProducing()
        self.pair.server.resumeProducing()
        self.assertEqual(self.writer_producer.calls, ["pause", "resume"])
        self.assertEqual(self.idle_producer.calls, [])

    def test_far_pause_outlasts_session_resume(self) -> None:
        """A stream paused by both stays paused until the far side's Resume too."""
        self.pair.server.pauseProducing()
        self.writer.write(b"x")
        self.pair.client_sends(_codec.pause(0, 2))
        self.pair.pump()
        self.pair.server.resumeProducing()
        self.assertEqual(self.writer_producer.calls, ["pause"])
        self.pair.client_sends(_codec.resume(0, 2))
        self.pair.pump()
        self.assertEqual(self.writer_producer.calls, ["pause", "resume"])


class SessionEndTests(SynchronousTestCase):
    """connection_lost."""

    def test_streams_end_with_reason(self) -> None:
        """Every stream's protocol gets the session's reason; nothing is sent."""
        pair = SessionPair()
        (_, first, _), (_, second, _) = pair.open(), pair.open()
        sent = len(pair.from_server.log)
        reason = Failure(ConnectionLost("websocket gone"))
        pair.server.connection_lost(reason)
        pair.settle()
        self.assertIs(first.reason, reason)
        self.assertIs(second.reason, reason)
        self.assertEqual((first.lost, second.lost), (1, 1))
        self.assertEqual(pair.server.streams, {})
        self.assertEqual(len(pair.from_server.log), sent)
        self.assertEqual(pair.drops, {"server": 0, "client": 0})

    def test_open_after_end_raises(self) -> None:
        """open_stream on an ended session raises ConnectionLost."""
        wire = Direction()
        session = Session(wire.send)
        session.connection_lost(Failure(ConnectionLost("gone")))
        self.assertRaises(ConnectionLost, session.open_stream, *TARGET)
        self.assertEqual(wire.log, [])
