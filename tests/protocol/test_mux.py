"""
Bytes-in / events-out tests of the sans-IO multiplexer (remotedialer.protocol._multiplexer),
with golden bytes from PROTOCOL.md where the wire is fixed.
"""

from __future__ import annotations

import struct

from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import Message, MessageType
from remotedialer.protocol._events import (
    ClientAnnounced,
    ConnectRequested,
    DataReceived,
    ProtocolViolation,
    SendBlocked,
    StreamEnded,
)
from remotedialer.protocol._exceptions import SessionClosed
from remotedialer.protocol._flow import FlowLimits
from remotedialer.protocol._handle import StreamHandle
from remotedialer.protocol._lifecycle import StreamState
from remotedialer.protocol._multiplexer import CLIENT_FIRST_CONN_ID, MAX_DATA_CHUNK, Multiplexer

CLIENT, SESSION = "foo", 42
SMALL = FlowLimits(pause_threshold=100, resume_threshold=20, hard_cap=400)


def mux(**kwargs) -> Multiplexer:
    kwargs.setdefault("client_key", CLIENT)
    kwargs.setdefault("session_key", SESSION)
    return Multiplexer(**kwargs)


def sent(m: Multiplexer) -> list[Message]:
    """What the multiplexer queued, decoded."""
    return [_codec.decode(data) for data in m.data_to_send()]


def wire(*messages: Message) -> list[bytes]:
    return [_codec.encode(message) for message in messages]


def inbound_stream(m: Multiplexer, conn_id: int = 2) -> StreamHandle:
    """A stream the far side opened (Connect received)."""
    [event] = m.receive(_codec.encode(_codec.connect(1, conn_id, "tcp", "127.0.0.1:80")))
    assert isinstance(event, ConnectRequested)
    return event.stream


def types(messages: list[Message]) -> list[tuple[MessageType, int]]:
    return [(message.type, message.conn_id) for message in messages]


class OpenTests(SynchronousTestCase):
    def test_connect_golden(self) -> None:
        """open_stream queues Connect, byte for byte PROTOCOL.md's vector (id 1, conn 2)."""
        m = mux(message_ids=_codec.MessageIds(1))
        stream = m.open_stream("tcp", "127.0.0.1:8125")
        self.assertEqual(stream.conn_id, 2)
        self.assertIs(stream.state, StreamState.OPEN)
        self.assertEqual([data.hex() for data in m.data_to_send()],
                         ["020404b0ea017463702f3132372e302e302e313a38313235"])
        self.assertEqual(m.streams, {2: stream})

    def test_ids_count_up(self) -> None:
        """Server-side ids count up from 2; a client dialing the server starts at 2^48."""
        server, client = mux(), mux(dials_as_client=True)
        self.assertEqual([server.open_stream("tcp", "h:1").conn_id for _ in range(3)], [2, 3, 4])
        self.assertEqual(client.open_stream("tcp", "h:1").conn_id, CLIENT_FIRST_CONN_ID)
        self.assertEqual(CLIENT_FIRST_CONN_ID, 2**48)

    def test_skips_ids_in_use(self) -> None:
        """An id the far side already opened is skipped."""
        m = mux()
        inbound_stream(m, 2)
        self.assertEqual(m.open_stream("tcp", "h:1").conn_id, 3)

    def test_bad_target(self) -> None:
        """A target that cannot be encoded raises ValueError and registers nothing."""
        m = mux()
        self.assertRaises(ValueError, m.open_stream, "tcp", "")
        self.assertRaises(ValueError, m.open_stream, "t/cp", "h:1")
        self.assertEqual((m.streams, m.data_to_send()), ({}, []))


class DataTests(SynchronousTestCase):
    def test_data_golden(self) -> None:
        """A write is one Data message (golden vector: id 7, conn 2, 'hello')."""
        m = mux(message_ids=_codec.MessageIds(6))
        stream = m.open_stream("tcp", "127.0.0.1:8125")
        m.data_to_send()
        m.write(stream, b"hello")
        self.assertEqual([data.hex() for data in m.data_to_send()], ["0e0402b0ea0168656c6c6f"])

    def test_split_at_64k(self) -> None:
        """64 KiB is one message; 64 KiB + 1 is two (64 KiB, then 1 byte)."""
        m = mux()
        stream = m.open_stream("tcp", "h:1")
        m.data_to_send()
        m.write(stream, b"a" * MAX_DATA_CHUNK)
        self.assertEqual([len(x.payload) for x in sent(m)], [MAX_DATA_CHUNK])
        m.write(stream, b"a" * MAX_DATA_CHUNK + b"b")
        messages = sent(m)
        self.assertEqual([len(x.payload) for x in messages], [MAX_DATA_CHUNK, 1])
        self.assertEqual(messages[1].payload, b"b")
        self.assertEqual(MAX_DATA_CHUNK, 64 * 1024)

    def test_empty_write(self) -> None:
        """An empty write sends nothing."""
        m = mux()
        stream = m.open_stream("tcp", "h:1")
        m.data_to_send()
        m.write(stream, b"")
        self.assertEqual(m.data_to_send(), [])

    def test_data_received(self) -> None:
        """Data for a reading stream comes out as DataReceived at once."""
        m = mux()
        stream = inbound_stream(m)
        self.assertEqual(m.receive(_codec.encode_data(5, 2, b"hi")), [DataReceived(stream, b"hi")])

    def test_unknown_stream(self) -> None:
        """Data for an unknown id is answered 'connection not found <client>/<session>/<id>'."""
        m = mux()
        self.assertEqual(m.receive(_codec.encode_data(5, 9, b"hi")), [])
        [error] = sent(m)
        self.assertEqual((error.type, error.conn_id, error.error_text()),
                         (MessageType.ERROR, 9, "connection not found foo/42/9"))


class ConnectTests(SynchronousTestCase):
    def test_connect_requested(self) -> None:
        """An inbound Connect registers the stream and asks for the dial; nothing is sent."""
        m = mux()
        [event] = m.receive(bytes.fromhex("020404b0ea017463702f3132372e302e302e313a38313235"))
        self.assertEqual((event.proto, event.address), ("tcp", "127.0.0.1:8125"))
        self.assertEqual(m.streams, {2: event.stream})
        self.assertEqual(m.data_to_send(), [])

    def test_duplicate_connect(self) -> None:
        """A Connect for a live id gets Error 'connection id N already in use'; the live stream stays."""
        m = mux()
        stream = inbound_stream(m, 5)
        self.assertEqual(m.receive(_codec.encode(_codec.connect(2, 5, "tcp", "h:2"))), [])
        [error] = sent(m)
        self.assertEqual((error.type, error.conn_id, error.error_text()),
                         (MessageType.ERROR, 5, "connection id 5 already in use"))
        self.assertEqual(m.streams, {5: stream})
        self.assertIs(stream.state, StreamState.OPEN)


class FarPauseTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.m = mux()
        self.stream = self.m.open_stream("tcp", "h:1")
        self.m.data_to_send()

    def test_pause_resume(self) -> None:
        """Pause/Resume come out as SendBlocked; writes between are held, then flushed in order."""
        m, stream = self.m, self.stream
        self.assertEqual(m.receive(bytes.fromhex("14040c")), [SendBlocked(stream, True)])
        m.write(stream, b"one")
        m.write(stream, b"two")
        self.assertEqual(m.data_to_send(), [])
        self.assertEqual(m.receive(bytes.fromhex("16040e")), [SendBlocked(stream, False)])
        self.assertEqual([x.payload for x in sent(m)], [b"one", b"two"])
        self.assertFalse(stream.held)

    def test_close_while_paused(self) -> None:
        """close() with writes held is CLOSING; after Resume the writes go, then EOF (StreamEnded None)."""
        m, stream = self.m, self.stream
        m.receive(_codec.encode(_codec.pause(1, 2)))
        m.write(stream, b"held")
        self.assertFalse(m.close(stream))
        self.assertIs(stream.state, StreamState.CLOSING)
        m.write(stream, b"refused")  # no new writes once closing
        self.assertEqual(m.data_to_send(), [])
        self.assertEqual(m.receive(_codec.encode(_codec.resume(2, 2))), [StreamEnded(stream, None)])
        messages = sent(m)
        self.assertEqual(types(messages), [(MessageType.DATA, 2), (MessageType.ERROR, 2)])
        self.assertEqual((messages[0].payload, messages[1].error_text()), (b"held", "EOF"))
        self.assertIs(stream.state, StreamState.CLOSED)
        self.assertEqual(m.streams, {})

    def test_close_paused_nothing_held(self) -> None:
        """A clean close with nothing held ends at once even while paused (Error is not Data)."""
        m, stream = self.m, self.stream
        m.receive(_codec.encode(_codec.pause(1, 2)))
        self.assertTrue(m.close(stream))
        self.assertEqual([(x.type, x.error_text()) for x in sent(m)], [(MessageType.ERROR, "EOF")])

    def test_abort_drops_held(self) -> None:
        """abort() while paused drops the held writes and sends Error with the reason."""
        m, stream = self.m, self.stream
        m.receive(_codec.encode(_codec.pause(1, 2)))
        m.write(stream, b"held")
        self.assertTrue(m.abort(stream, "gone"))
        self.assertEqual([(x.type, x.error_text()) for x in sent(m)], [(MessageType.ERROR, "gone")])
        self.assertFalse(m.abort(stream, "again"))
        self.assertEqual(m.data_to_send(), [])


class ReceiveFlowTests(SynchronousTestCase):
    def test_pause_then_resume(self) -> None:
        """Past the threshold Pause goes out once; reading the backlog sends Resume once."""
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.pause_reading(stream)
        self.assertEqual(m.receive(_codec.encode_data(1, 2, b"a" * 100)), [])
        self.assertEqual(m.data_to_send(), [])
        m.receive(_codec.encode_data(2, 2, b"b"))
        m.receive(_codec.encode_data(3, 2, b"c"))
        self.assertEqual(types(sent(m)), [(MessageType.PAUSE, 2)])
        m.resume_reading(stream)
        self.assertEqual([m.read(stream), m.read(stream), m.read(stream)], [b"a" * 100, b"b", b"c"])
        self.assertIsNone(m.read(stream))
        self.assertEqual(types(sent(m)), [(MessageType.RESUME, 2)])
        self.assertIsNone(m.read(stream))
        self.assertEqual(m.data_to_send(), [])

    def test_remote_eof_with_backlog(self) -> None:
        """
        EOF while our reader has a backlog: DRAINING (id freed from streams,
        stream still in all_streams), then CLOSED once read() gives None.
        """
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.pause_reading(stream)
        m.receive(_codec.encode_data(1, 2, b"rest"))
        self.assertEqual(m.receive(_codec.encode(_codec.error(2, 2, "EOF"))), [])
        self.assertIs(stream.state, StreamState.DRAINING)
        self.assertEqual((m.streams, m.all_streams), ({}, [stream]))
        m.resume_reading(stream)
        self.assertEqual(m.read(stream), b"rest")
        self.assertFalse(stream.ended)
        self.assertIsNone(m.read(stream))
        self.assertIs(stream.state, StreamState.CLOSED)
        self.assertEqual((m.all_streams, m.data_to_send()), ([], []))

    def test_draining_id_reusable(self) -> None:
        """The far side may reuse a draining stream's id; the two streams are apart."""
        m = mux(limits=SMALL)
        old = inbound_stream(m)
        m.pause_reading(old)
        m.receive(_codec.encode_data(1, 2, b"old"))
        m.receive(_codec.encode(_codec.error(2, 2, "EOF")))
        new = inbound_stream(m, 2)
        self.assertIsNot(new, old)
        self.assertEqual(m.receive(_codec.encode_data(3, 2, b"new")), [DataReceived(new, b"new")])
        self.assertEqual(set(m.all_streams), {old, new})
        self.assertEqual(m.stream_count, 2)  # the draining one counts

    def test_remote_eof_no_backlog(self) -> None:
        """EOF with nothing buffered ends the stream at once, cleanly, even for a paused reader."""
        m = mux()
        stream = inbound_stream(m)
        m.pause_reading(stream)
        self.assertEqual(m.receive(bytes.fromhex("100406454f46")), [StreamEnded(stream, None)])
        self.assertEqual((m.streams, m.data_to_send()), ({}, []))

    def test_remote_error(self) -> None:
        """An Error other than EOF ends the stream with its text, backlog dropped, nothing sent."""
        m = mux()
        stream = inbound_stream(m)
        m.pause_reading(stream)
        m.receive(_codec.encode_data(1, 2, b"x"))
        self.assertEqual(m.receive(_codec.encode(_codec.error(2, 2, "refused"))),
                         [StreamEnded(stream, "refused")])
        self.assertEqual((stream.inbound.size, m.all_streams, m.data_to_send()), (0, [], []))

    def test_hard_cap(self) -> None:
        """A far side ignoring Pause past the hard cap: Error sent and StreamEnded with the text."""
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.pause_reading(stream)
        m.receive(_codec.encode_data(1, 2, b"x" * 400))  # Pause (at the cap, still held)
        events = m.receive(_codec.encode_data(2, 2, b"x"))
        text = "receive buffer over 400 bytes: far side ignored Pause"
        self.assertEqual(events, [StreamEnded(stream, text)])
        self.assertEqual([(x.type, x.error_text()) for x in sent(m)],
                         [(MessageType.PAUSE, ""), (MessageType.ERROR, text)])
        self.assertEqual((stream.state, stream.inbound.size, m.streams), (StreamState.CLOSED, 0, {}))

    def test_discard_inbound(self) -> None:
        """A gone reader's backlog is dropped."""
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.pause_reading(stream)
        m.receive(_codec.encode_data(1, 2, b"x" * 50))
        m.discard_inbound(stream)
        self.assertEqual(stream.inbound.size, 0)

    def test_discard_inbound_holds_nothing_more(self) -> None:
        """discard_inbound's promise: after it, arriving data is not held."""
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.discard_inbound(stream)
        m.receive(_codec.encode_data(1, 2, b"late"))
        self.assertEqual(stream.inbound.size, 0)

    def test_gone_reader_closing_stream_ends(self) -> None:
        """
        A reader gone (discard + close) while the far side paused us, then the
        far side sends Data and EOF: the stream must end, not drain forever.
        """
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.receive(_codec.encode(_codec.pause(1, 2)))
        m.write(stream, b"held")
        m.discard_inbound(stream)  # TunnelStream.stopProducing
        m.close(stream)  # ... then loseConnection: CLOSING
        m.receive(_codec.encode_data(2, 2, b"late"))
        m.receive(_codec.encode(_codec.error(3, 2, "EOF")))
        self.assertTrue(stream.ended, stream)
        self.assertEqual(m.all_streams, [])

    def test_connect_with_bad_id_refused(self) -> None:
        """Connect on stream 0 (session-level) or a negative id is refused; nothing is opened."""
        m = mux()
        for conn_id in (0, -5):
            [event] = m.receive(_codec.encode(_codec.connect(1, conn_id, "tcp", "127.0.0.1:80")))
            self.assertIsInstance(event, ProtocolViolation)
        self.assertEqual(m.streams, {})
        errors = [(msg.conn_id, msg.error_text()) for msg in sent(m)]
        self.assertEqual(errors, [(0, "bad connection id 0"), (-5, "bad connection id -5")])


class FenceTests(SynchronousTestCase):
    def test_pause_then_fence(self) -> None:
        """
        With fences, a Pause asks the adapter for a round trip; data in
        flight before it passes is held (the session budget bounds it), and
        the hard cap judges what comes after.
        """
        m = mux(limits=SMALL, fences=True)
        stream = inbound_stream(m)
        m.pause_reading(stream)
        m.receive(_codec.encode_data(3, 2, b"x" * 101))
        self.assertEqual(types(sent(m)), [(MessageType.PAUSE, 2)])
        self.assertTrue(m.awaiting_fence)
        batch = m.start_fence()
        self.assertFalse(m.awaiting_fence)
        for _ in range(4):
            self.assertEqual(m.receive(_codec.encode_data(4, 2, b"x" * 400)), [])
        self.assertIs(stream.state, StreamState.OPEN)
        m.fence_passed(batch)
        self.assertEqual(m.receive(_codec.encode_data(5, 2, b"x" * 300)), [])
        [ended] = m.receive(_codec.encode_data(6, 2, b"x"))
        self.assertIsInstance(ended, StreamEnded)
        self.assertIn("far side ignored Pause", ended.error)

    def test_no_fences_by_default(self) -> None:
        """A multiplexer nobody fences judges at once, as before: nothing awaits a round trip."""
        m = mux(limits=SMALL)
        stream = inbound_stream(m)
        m.pause_reading(stream)
        m.receive(_codec.encode_data(3, 2, b"x" * 101))
        self.assertFalse(m.awaiting_fence)
        [ended] = m.receive(_codec.encode_data(4, 2, b"x" * 300))
        self.assertIsInstance(ended, StreamEnded)


class SyncTests(SynchronousTestCase):
    def test_prune_after_one_interval(self) -> None:
        """A stream missing from SyncConnections is pruned (no Error) only after a whole interval."""
        m = mux()
        old = m.open_stream("tcp", "h:1")  # 2
        kept = m.open_stream("tcp", "h:1")  # 3
        m.data_to_send()
        self.assertEqual(m.receive(_codec.encode(_codec.sync_connections(1, [3]))), [])
        young = m.open_stream("tcp", "h:1")  # 4, opened after the first list
        m.data_to_send()
        events = m.receive(_codec.encode(_codec.sync_connections(2, [3])))
        self.assertEqual(events, [StreamEnded(old, "stream unknown to the far side")])
        self.assertEqual(m.streams, {3: kept, 4: young})
        self.assertEqual(m.data_to_send(), [])

    def test_sync_golden(self) -> None:
        """sync() lists our ids (golden vector: id 12, ids 2 and 3)."""
        m = mux(message_ids=_codec.MessageIds(10))
        m.open_stream("tcp", "h:1")  # message id 10
        m.open_stream("tcp", "h:1")  # message id 11
        m.data_to_send()
        m.sync()
        self.assertEqual([x.hex() for x in m.data_to_send()],
                         ["18001002000000000000000300000000000000"])

    def test_sync_unknown_ids_ignored(self) -> None:
        """Ids we do not hold in the list change nothing."""
        m = mux()
        m.receive(_codec.encode(_codec.sync_connections(1, [2, 3, 99])))
        self.assertEqual((m.streams, m.data_to_send()), ({}, []))


class ClientTests(SynchronousTestCase):
    def test_peer_add_remove(self) -> None:
        """A peer session's AddClient/RemoveClient update remote_clients and are reported."""
        m = mux(is_peer=True)
        self.assertEqual(m.receive(bytes.fromhex("120008666f6f2f3432")),
                         [ClientAnnounced("foo", 42, True)])
        m.receive(_codec.encode(_codec.add_client(2, "foo", 43)))
        self.assertEqual(m.remote_clients, {"foo": {42, 43}})
        self.assertEqual(m.receive(_codec.encode(_codec.remove_client(3, "foo", 42))),
                         [ClientAnnounced("foo", 42, False)])
        m.receive(_codec.encode(_codec.remove_client(4, "foo", 43)))
        self.assertEqual(m.remote_clients, {})

    def test_non_peer(self) -> None:
        """A non-peer session's AddClient is ignored, reported as a non-fatal violation."""
        m = mux()
        [event] = m.receive(_codec.encode(_codec.add_client(1, "foo", 42)))
        self.assertIsInstance(event, ProtocolViolation)
        self.assertFalse(event.fatal)
        self.assertEqual(m.remote_clients, {})
        self.assertEqual(m.data_to_send(), [])

    def test_announce(self) -> None:
        """announce() queues AddClient (golden vector: id 9, foo/42) or RemoveClient."""
        m = mux(message_ids=_codec.MessageIds(9))
        m.announce("foo", 42, True)
        m.announce("foo", 42, False)
        [add, remove] = m.data_to_send()
        self.assertEqual(add.hex(), "120008666f6f2f3432")
        self.assertEqual(_codec.decode(remove).type, MessageType.REMOVE_CLIENT)


class MalformedTests(SynchronousTestCase):
    def test_bad_header_fatal(self) -> None:
        """A message whose header does not decode (empty, truncated varint) is fatal."""
        for data in [b"", b"\x80", b"\x02", b"\xff" * 11]:
            m = mux()
            [event] = m.receive(data)
            self.assertIsInstance(event, ProtocolViolation)
            self.assertTrue(event.fatal, data)
            self.assertEqual(m.data_to_send(), [])

    def test_bad_message_for_stream(self) -> None:
        """A malformed message naming a live stream aborts that stream only."""
        m = mux()
        bad, good = inbound_stream(m, 2), inbound_stream(m, 3)
        events = m.receive(bytes.fromhex("02" "04" "02") + b"\xff")  # Data, truncated deadline
        self.assertEqual([type(e) for e in events], [ProtocolViolation, StreamEnded])
        self.assertFalse(events[0].fatal)
        self.assertEqual((events[0].conn_id, events[1].stream), (2, bad))
        self.assertEqual(types(sent(m)), [(MessageType.ERROR, 2)])
        self.assertEqual(m.streams, {3: good})

    def test_bad_connect_for_new_stream(self) -> None:
        """A Connect whose target does not parse is refused with an Error; nothing is registered."""
        m = mux()
        events = m.receive(bytes.fromhex("020404b0ea01") + b"noslash")
        self.assertEqual([type(e) for e in events], [ProtocolViolation])
        self.assertEqual(types(sent(m)), [(MessageType.ERROR, 2)])
        self.assertEqual(m.streams, {})

    def test_bad_connect_for_live_stream(self) -> None:
        """
        A malformed Connect naming a live stream is treated as a duplicate
        Connect: Error 'already in use', and the live stream is left alone
        (it was not meant for that stream's data).
        """
        m = mux()
        live = inbound_stream(m, 5)
        events = m.receive(bytes.fromhex("020a04b0ea01") + b"noslash")
        self.assertEqual([type(e) for e in events], [ProtocolViolation])
        self.assertEqual((events[0].conn_id, events[0].fatal), (5, False))
        [error] = sent(m)
        self.assertEqual((error.type, error.conn_id, error.error_text()),
                         (MessageType.ERROR, 5, "connection id 5 already in use"))
        self.assertEqual(m.streams, {5: live})
        self.assertIs(live.state, StreamState.OPEN)

    def test_bad_sync_not_fatal(self) -> None:
        """A SyncConnections payload not a multiple of 8 is a non-fatal violation on id 0."""
        m = mux()
        stream = m.open_stream("tcp", "h:1")
        m.data_to_send()
        [event] = m.receive(bytes.fromhex("0200" "10") + struct.pack("<q", 2)[:5])
        self.assertEqual((event.fatal, event.conn_id), (False, 0))
        self.assertEqual((m.streams, m.data_to_send()), ({2: stream}, []))


class LoseTests(SynchronousTestCase):
    def test_lose(self) -> None:
        """lose() ends every stream (draining ones too), drops queued output, sends nothing."""
        m = mux(limits=SMALL)
        opened = m.open_stream("tcp", "h:1")
        draining = inbound_stream(m, 9)
        m.pause_reading(draining)
        m.receive(_codec.encode_data(1, 9, b"x"))
        m.receive(_codec.encode(_codec.error(2, 9, "EOF")))
        m.write(opened, b"queued")
        self.assertEqual(set(m.lose()), {opened, draining})
        self.assertTrue(opened.ended and draining.ended)
        self.assertEqual((m.streams, m.all_streams, m.data_to_send()), ({}, [], []))
        self.assertEqual(m.lose(), [])

    def test_after_lose(self) -> None:
        """After lose(): receive gives nothing, commands send nothing, open_stream raises."""
        m = mux()
        m.lose()
        self.assertEqual(m.receive(_codec.encode(_codec.connect(1, 2, "tcp", "h:1"))), [])
        m.sync()
        m.announce("foo", 1, True)
        self.assertEqual(m.data_to_send(), [])
        self.assertRaises(SessionClosed, m.open_stream, "tcp", "h:1")
