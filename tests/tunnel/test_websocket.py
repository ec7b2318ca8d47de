"""
The WebSocket layer on iosim with a test clock: keepalive pings, the 60 s
silence rule, text messages, and the session registered as the transport's
producer.
"""

from __future__ import annotations

import os

import txaio
from autobahn.exception import PayloadExceededError
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from remotedialer import nvx_active
from remotedialer.protocol import _codec
from remotedialer.protocol._limits import SessionLimits
from remotedialer.tunnel._exceptions import TunnelLinkError
from remotedialer.tunnel._identity import Identity
from remotedialer.tunnel._interfaces import ISessionOwner
from remotedialer.tunnel._session import Session
from remotedialer.tunnel._websocket import IDLE_TIMEOUT, PING_INTERVAL, client_factory, server_factory


@implementer(ISessionOwner)
class _Owner:
    """Stands in for the Server / TunnelClient: builds and forgets sessions."""

    def __init__(self, clock):
        self.clock = clock
        self.opened = []
        self.closed = []
        self.failed = False

    def session_opened(self, protocol, identity):
        session = Session(protocol.send_binary, client_key="foo", drop=protocol.drop,
                          clock=self.clock)
        self.opened.append(session)
        return session

    def session_closed(self, session):
        self.closed.append(session)

    def link_failed(self, reason, retry_after=None):
        self.failed = True


class GoKeepalive:
    """
    Makes one of our protocols behave as Go's remotedialer does at its end
    of a link (PROTOCOL.md section 1): every PING is answered with an
    B{empty} PONG, whatever it carried, and the link is dropped when no
    PING or PONG has arrived for 60 s -- data frames do not count.
    """

    WAIT = 60.0  # Go's PingWaitDuration

    def __init__(self, protocol, clock):
        self.protocol = protocol
        self.clock = clock
        self.pings: list[bytes] = []
        self.pongs: list[bytes] = []
        self.dropped_at: float | None = None
        protocol.onPing = self._on_ping
        protocol.onPong = self._on_pong
        self._deadline = clock.callLater(self.WAIT, self._expire)

    def _extend(self):
        if self._deadline.active():
            self._deadline.reset(self.WAIT)

    def _on_ping(self, payload):
        self.pings.append(payload)
        self._extend()
        self.protocol.sendPong(b"")

    def _on_pong(self, payload):
        self.pongs.append(payload)
        self._extend()

    def _expire(self):
        self.dropped_at = self.clock.seconds()
        self.protocol.dropConnection(abort=True)


class WebSocketLinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        previous = txaio.config.loop
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        self.server_owner = _Owner(self.clock)
        self.client_owner = _Owner(self.clock)
        sfactory = server_factory(self.server_owner, self.clock)
        cfactory = client_factory(self.client_owner, "ws://127.0.0.1:8123/connect",
                                  {"X-Tunnel-ID": "foo"}, self.clock)
        addr = IPv4Address("TCP", "127.0.0.1", 8123)
        self.server = sfactory.buildProtocol(addr)
        self.server.identity = Identity("foo")
        self.client = cfactory.buildProtocol(addr)
        self.pings = []
        self.pongs = []
        answer = self.server.onPing

        def on_ping(payload):
            self.pings.append(payload)
            answer(payload)  # the default answers with a PONG

        self.server.onPing = on_ping
        self.client.onPong = self.pongs.append
        self.server_io = iosim.FakeTransport(self.server, isServer=True)
        self.client_io = iosim.FakeTransport(self.client, isServer=False)
        self.pump = iosim.connect(self.server, self.server_io, self.client, self.client_io,
                                  greet=False, clock=self.clock)
        self.pump.flush()

    def advance(self, seconds: float, step: float = 1.0, deliver: bool = True):
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            if deliver:
                self.pump.flush()

    def test_open(self):
        """The upgrade opens a session on each side, registered as the transport's producer."""
        [server_session] = self.server_owner.opened
        [client_session] = self.client_owner.opened
        for io, session in ((self.server_io, server_session), (self.client_io, client_session)):
            producer = io.producer
            self.assertTrue(verifyObject(IPushProducer, producer))
            producer.pauseProducing()
            self.assertTrue(session._transport_paused)
            producer.resumeProducing()
            self.assertFalse(session._transport_paused)

    def test_options_from_the_factory_without_pformat(self):
        """
        Both ends have every option of their factory, as Autobahn would give
        them, without Autobahn's pprint of all of them for each connection.
        """
        from autobahn.twisted.websocket import WebSocketClientProtocol, WebSocketServerProtocol

        for protocol, names in ((self.server, WebSocketServerProtocol.CONFIG_ATTRS),
                                (self.client, WebSocketClientProtocol.CONFIG_ATTRS)):
            self.assertGreater(len(names), 20)
            for name in names:
                self.assertEqual(getattr(protocol, name), getattr(protocol.factory, name), name)
        import autobahn.websocket.protocol as autobahn_protocol

        calls = []
        real = autobahn_protocol.pformat
        self.patch(autobahn_protocol, "pformat", lambda value: calls.append(value) or real(value))
        sfactory = server_factory(self.server_owner, self.clock)
        server = sfactory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 8123))
        server.makeConnection(iosim.FakeTransport(server, isServer=True))
        self.assertEqual(calls, [[]])  # (its debug line, of no option: cheap)
        self.assertEqual(server.maxMessagePayloadSize, sfactory.maxMessagePayloadSize)

    def test_client_pings_every_interval(self):
        """The client pings every 5 s with an empty payload; the server answers each at once."""
        self.advance(PING_INTERVAL)
        self.assertEqual(self.pings, [b""])
        self.assertEqual(self.pongs, [b""])
        self.advance(IDLE_TIMEOUT * 2)
        self.assertEqual(len(self.pings), 1 + 2 * IDLE_TIMEOUT // PING_INTERVAL)
        self.assertEqual(set(self.pings), {b""})
        self.assertEqual(len(self.pongs), len(self.pings))
        self.assertEqual(self.server_owner.closed, [])
        self.assertEqual(self.client_owner.closed, [])

    def test_server_never_pings(self):
        """Only the dialing side pings (as Go): the server sends none."""
        client_pings = []
        self.client.onPing = client_pings.append
        self.advance(IDLE_TIMEOUT / 2)
        self.assertEqual(client_pings, [])

    def test_pings_without_pongs(self):
        """The client keeps pinging on its timer when no PONG comes back."""
        self.server.onPing = lambda payload: self.pings.append(payload)  # never answers
        self.advance(IDLE_TIMEOUT / 2)
        self.assertEqual(len(self.pings), IDLE_TIMEOUT / 2 // PING_INTERVAL)
        self.assertEqual(self.pongs, [])

    def test_silent_link_is_dead(self):
        """60 s without any frame from the client: the server ends the session."""
        [server_session] = self.server_owner.opened
        stream = server_session.open_stream("tcp", "127.0.0.1:1")
        lost = []
        stream.protocol = type("P", (), {"connectionLost": lambda self, r: lost.append(r)})()
        self.advance(IDLE_TIMEOUT - 1, deliver=False)
        self.assertFalse(self.server_io.disconnecting)
        self.advance(2, deliver=False)
        self.assertTrue(self.server_io.disconnecting)
        self.pump.flush()
        self.clock.advance(0)
        self.assertEqual(self.server_owner.closed, [server_session])
        [reason] = lost
        self.assertTrue(reason.check(TunnelLinkError))

    def test_silent_server_is_dead_for_client(self):
        """The client gives up on a server it has not heard from in 60 s."""
        self.advance(IDLE_TIMEOUT - 1, deliver=False)
        self.assertFalse(self.client_io.disconnecting)
        self.advance(2, deliver=False)
        self.assertTrue(self.client_io.disconnecting)

    def test_round_trip_waits_for_its_pong(self):
        """
        round_trip calls back once the pong of a ping sent behind everything
        so far has come back: not on data, not on the pong of an earlier
        ping still in flight, and never once the WebSocket has ended.
        """
        done = []
        self.client.onPing = lambda payload: None  # holds its answers for now
        self.server.sendPing()  # an earlier ping (a probe's)
        self.server.round_trip(lambda: done.append("first"))
        self.pump.flush()
        self.assertEqual(done, [])
        self.client.sendMessage(b"\x02\x00\x06", isBinary=True)  # data is no answer
        self.pump.flush()
        self.assertEqual(done, [])
        self.client.sendPong(b"")  # the earlier ping's pong
        self.pump.flush()
        self.assertEqual(done, [])
        self.client.sendPong(b"")  # round_trip's
        self.pump.flush()
        self.assertEqual(done, ["first"])
        self.server.round_trip(lambda: done.append("never"))
        self.server.dropConnection(abort=True)
        self.pump.flush()
        self.clock.advance(1)
        self.assertEqual(done, ["first"])

    def test_any_frame_is_liveness(self):
        """Data alone keeps our end's idle timer from firing (pings are not needed on our side)."""
        self.client.sendPing = lambda payload=None: None  # no pings at all
        [server_session] = self.server_owner.opened
        for _ in range(3):
            self.advance(IDLE_TIMEOUT - 5)
            self.client.sendMessage(b"\x02\x00\x06", isBinary=True)  # an Error for stream 0
            self.pump.flush()
        self.assertFalse(self.server_io.disconnecting)
        self.assertEqual(self.server_owner.closed, [])

    def test_text_message_ends_session(self):
        """A text message is a protocol error: the receiver drops the whole session."""
        [server_session] = self.server_owner.opened
        self.client.sendMessage(b"hello", isBinary=False)
        self.pump.flush()
        self.assertTrue(server_session.closed)
        self.assertTrue(self.server_io.disconnecting)

    def test_close_going_away(self):
        """
        close() sends a close frame, 1001 "going away" and the reason; the
        client answers it and says why its tunnel ended; nothing is aborted.
        """
        [client_session] = self.client_owner.opened
        self.server.close(1001, "server is shutting down")
        reason = b"server is shutting down"
        self.assertEqual(b"".join(self.server_io.stream),
                         b"\x88" + bytes([2 + len(reason)]) + b"\x03\xe9" + reason)  # FIN+close, unmasked
        self.pump.flush()
        self.clock.advance(0)
        self.assertEqual((self.client.remoteCloseCode, self.client.remoteCloseReason),
                         (1001, "server is shutting down"))
        self.assertTrue(self.server.wasClean)
        self.assertFalse(self.server.wasCloseHandshakeTimeout)
        self.assertEqual(client_session.end_reason, "tunnel closed: server is shutting down")
        self.assertEqual(self.client_owner.closed, [client_session])

    def test_close_unanswered_aborted_after_the_grace(self):
        """A far side that never answers the close is aborted after the grace, not before."""
        from remotedialer.tunnel._websocket import CLOSE_HANDSHAKE_TIMEOUT

        aborted = []
        self.server_io.abortConnection = lambda: aborted.append(self.clock.seconds())
        self.server.close(1001, "server is shutting down")
        self.clock.advance(CLOSE_HANDSHAKE_TIMEOUT - 0.5)  # nothing delivered: no answer
        self.assertEqual(aborted, [])
        self.clock.advance(1.0)
        self.assertEqual(len(aborted), 1)
        self.assertTrue(self.server.wasCloseHandshakeTimeout)

    def test_binary_message_reaches_session(self):
        """Binary messages reach the session: Data for an unknown stream is answered."""
        from remotedialer.protocol._codec import decode, encode_data

        [server_session] = self.server_owner.opened
        [client_session] = self.client_owner.opened
        replies = []
        client_session.message_received = lambda data: replies.append(decode(data))
        self.client.sendMessage(encode_data(1, 9, b"x"), isBinary=True)
        self.pump.flush()
        [reply] = replies
        self.assertEqual(reply.error_text(), f"connection not found foo/{server_session.session_key}/9")


class GoServerKeepaliveTests(SynchronousTestCase):
    """
    Our dialing side (a client, or a server's outgoing peer link: both use
    client_factory) against a peer with Go's keepalive, held far longer than
    two of Go's 60 s deadlines.  Autobahn's auto-ping failed exactly this:
    one ping, an empty pong it did not recognise, no more pings, dropped
    by Go at ~65 s.
    """

    def setUp(self):
        self.clock = MemoryReactorClock()
        previous = txaio.config.loop
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        self.server_owner = _Owner(self.clock)
        self.client_owner = _Owner(self.clock)

    def connect(self, **options):
        sfactory = server_factory(self.server_owner, self.clock)
        cfactory = client_factory(self.client_owner, "ws://127.0.0.1:8123/connect",
                                  {"X-Tunnel-ID": "foo"}, self.clock, **options)
        addr = IPv4Address("TCP", "127.0.0.1", 8123)
        server = sfactory.buildProtocol(addr)
        server.identity = Identity("foo")
        client = cfactory.buildProtocol(addr)
        server_io = iosim.FakeTransport(server, isServer=True)
        client_io = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_io, client, client_io, greet=False, clock=self.clock)
        pump.flush()
        go = GoKeepalive(server, self.clock)
        return go, client_io, pump

    def run_for(self, pump, seconds):
        for _ in range(int(seconds)):
            self.clock.advance(1)
            pump.flush()

    def test_link_outlives_go_deadline(self):
        """Ten minutes against Go's semantics: no drop, a ping every 5 s, all empty."""
        go, client_io, pump = self.connect()
        self.run_for(pump, 600)
        self.assertIsNone(go.dropped_at)
        self.assertFalse(client_io.disconnecting)
        self.assertEqual(len(go.pings), 600 // PING_INTERVAL)
        self.assertEqual(set(go.pings), {b""})
        self.assertEqual(self.client_owner.closed, [])

    def test_options(self):
        """The ping interval is an option; pinging slower than Go's deadline gets dropped."""
        go, client_io, pump = self.connect(ping_interval=2.0, idle_timeout=90.0)
        self.run_for(pump, 20)
        self.assertEqual(len(go.pings), 10)
        go, client_io, pump = self.connect(ping_interval=61.0, idle_timeout=90.0)
        self.run_for(pump, 61)
        self.assertEqual(go.dropped_at, 60.0 + 20)  # this pair started at t=20

    def test_bad_options(self):
        """A ping interval at or over the idle timeout (or not positive) is refused."""
        for ping, idle in [(60.0, 60.0), (0.0, 60.0), (-1.0, 60.0), (5.0, 0.0)]:
            self.assertRaises(ValueError, client_factory, self.client_owner, "ws://h/c", {},
                              self.clock, ping, idle)

    def test_peer_link_uses_server_options(self):
        """A server's outgoing peer links ping on the server's keepalive options."""
        from remotedialer import Server

        server = Server(reactor=self.clock, peer_id="a", peer_token="t",
                        ping_interval=3.0, idle_timeout=30.0)
        server.add_peer("b", "t", "ws://127.0.0.1:9/connect")
        factory = server.peer_link("b")._factory
        self.assertEqual((factory.ping_interval, factory.idle_timeout), (3.0, 30.0))
        self.assertRaises(ValueError, Server, reactor=self.clock, ping_interval=0.0)
        # Pinging slower than the idle timeout matters only where we ping: peer links.
        slow = Server(reactor=self.clock, peer_id="a", peer_token="t", ping_interval=60.0)
        self.assertRaises(ValueError, slow.add_peer, "b", "t", "ws://127.0.0.1:9/connect")


class NVXTests(SynchronousTestCase):
    def test_nvx_active(self):
        """Autobahn's native masking is in use (without it masked traffic crawls)."""
        self.assertTrue(nvx_active())


class DataDebugTests(SynchronousTestCase):
    def test_switch(self):
        """--debug or CATTLE_TUNNEL_DATA_DEBUG=true turn message tracing on."""
        from remotedialer._tap._common import DATA_DEBUG_ENV, data_debug

        self.patch(os, "environ", {})
        self.assertFalse(data_debug(False))
        self.assertTrue(data_debug(True))
        self.patch(os, "environ", {DATA_DEBUG_ENV: "true"})
        self.assertTrue(data_debug(False))
        self.patch(os, "environ", {DATA_DEBUG_ENV: "no"})
        self.assertFalse(data_debug(False))

    def test_trace_lines(self):
        """A tracing session logs WRITE and REQUEST lines with type, connID and size."""
        events = []
        observer = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        sent = []
        session = Session(sent.append, client_key="foo", trace=True)
        session.open_stream("tcp", "127.0.0.1:8125")
        # The Connect, retyped as an Error for stream 2.
        session.message_received(sent[0].replace(b"\x04\x04", b"\x04\x06", 1))
        lines = [formatEvent(e) for e in events if "conn=" in formatEvent(e)]
        self.assertTrue(any(line.startswith("WRITE CONNECT conn=2 size=") for line in lines), lines)
        self.assertTrue(any(line.startswith("REQUEST ") for line in lines), lines)


class WebSocketLimitsTests(SynchronousTestCase):
    """SessionLimits at the WebSocket: message size, message deadline, reply high-water."""

    def connect(self, limits: SessionLimits):
        self.clock = MemoryReactorClock()
        previous = txaio.config.loop
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        self.server_owner = _Owner(self.clock)
        self.client_owner = _Owner(self.clock)
        sfactory = server_factory(self.server_owner, self.clock, limits=limits)
        # The client pings rarely: a ping's bytes would complete a half-sent frame.
        cfactory = client_factory(self.client_owner, "ws://127.0.0.1:8123/connect", {}, self.clock,
                                  ping_interval=59.0, limits=SessionLimits())
        addr = IPv4Address("TCP", "127.0.0.1", 8123)
        self.server = sfactory.buildProtocol(addr)
        self.server.identity = Identity("foo")
        self.client = cfactory.buildProtocol(addr)
        self.server_io = iosim.FakeTransport(self.server, isServer=True)
        self.client_io = iosim.FakeTransport(self.client, isServer=False)
        self.pump = iosim.connect(self.server, self.server_io, self.client, self.client_io,
                                  greet=False, clock=self.clock)
        self.pump.flush()
        self.reading = []
        self.server_io.pauseProducing = lambda: self.reading.append("stop")
        self.server_io.resumeProducing = lambda: self.reading.append("start")

    def test_message_size_at_limit(self):
        """A message of exactly max_message_size is taken; one byte more closes with 1009."""
        self.connect(SessionLimits(max_message_size=1000))
        [server_session] = self.server_owner.opened
        got = []
        server_session.message_received = got.append
        self.client.sendMessage(b"x" * 1000, isBinary=True)
        self.pump.flush()
        self.assertEqual(got, [b"x" * 1000])
        self.client.sendMessage(b"x" * 1001, isBinary=True)
        self.pump.flush()
        self.assertEqual(len(got), 1)
        self.assertEqual(self.server.localCloseCode, 1009)
        self.clock.advance(10)
        self.pump.flush()
        self.assertEqual(self.server_owner.closed, [server_session])

    def test_fragmented_message(self):
        """
        A message in several frames (as Go's writer sends a large one)
        reaches the session whole, once; one over the limit in frames
        that are each under it closes with 1009, and none of it is delivered.
        """
        self.connect(SessionLimits(max_message_size=1000))
        [server_session] = self.server_owner.opened
        got = []
        server_session.message_received = got.append
        payload = bytes(range(256)) * 3
        self.client.sendMessage(payload, isBinary=True, fragmentSize=100)
        self.client.sendMessage(b"one frame", isBinary=True)
        self.pump.flush()
        self.assertEqual(got, [payload, b"one frame"])
        self.client.sendMessage(b"x" * 1001, isBinary=True, fragmentSize=100)
        self.pump.flush()
        self.assertEqual(len(got), 2)
        self.assertEqual(self.server.localCloseCode, 1009)

    def test_own_message_over_limit_refused(self):
        """As Autobahn's sendMessage does, a message over our own limit is refused, not sent."""
        self.connect(SessionLimits(max_message_size=1000))
        sent = len(self.server_io.stream)
        self.server.send_binary(b"y" * 1000)
        self.assertEqual(len(self.server_io.stream), sent + 1)
        self.assertRaises(PayloadExceededError, self.server.send_binary, b"y" * 1001)
        self.assertEqual(len(self.server_io.stream), sent + 1)

    def test_unfinished_message_dropped_at_deadline(self):
        """A frame announced and left half-sent drops the WebSocket at the deadline, not before."""
        self.connect(SessionLimits(message_deadline=30))
        frame = bytearray(b"\x82\x8a" + b"\x00\x00\x00\x00" + b"0123456789")  # masked binary, 10 bytes
        self.client_io.write(bytes(frame[:10]))  # header and 4 of the 10 bytes
        self.pump.flush()
        self.clock.advance(29)
        self.pump.flush()
        self.assertFalse(self.server_io.disconnecting)
        self.clock.advance(2)
        self.assertTrue(self.server_io.disconnecting)

    def test_finished_messages_keep_deadline_away(self):
        """A steady flow of whole messages never trips the deadline."""
        self.connect(SessionLimits(message_deadline=30))
        [server_session] = self.server_owner.opened
        server_session.message_received = lambda data: None
        for _ in range(100):
            self.client.sendMessage(b"\x02\x00\x06", isBinary=True)
            self.clock.advance(1)
            self.pump.flush()
        self.assertFalse(self.server_io.disconnecting)

    def test_replies_over_high_water_stop_reading(self):
        """
        While the far side does not read, the replies it provokes (Errors for
        unknown streams) count up to send_high_water; past it we stop reading
        from it, and start again once it reads.
        """
        self.connect(SessionLimits(send_high_water=2000))
        self.server_io.producer.pauseProducing()  # the far side stopped reading
        data_for_unknown = _codec.encode_data(1, 9, b"x")
        sent = 0
        while not self.reading and sent < 1000:
            self.client.sendMessage(data_for_unknown, isBinary=True)
            self.pump.flush()
            sent += 1
        self.assertEqual(self.reading, ["stop"])
        [server_session] = self.server_owner.opened
        reply = server_session.replies_sent // sent
        self.assertGreater(server_session.replies_sent, 2000)
        self.assertLessEqual(server_session.replies_sent, 2000 + reply)
        self.server_io.producer.resumeProducing()  # it reads again
        self.assertEqual(self.reading, ["stop", "start"])

    def test_own_writes_never_stop_reading(self):
        """Our streams' own writes while the far side is slow do not stop reading (no deadlock)."""
        self.connect(SessionLimits(send_high_water=2000))
        [server_session] = self.server_owner.opened
        stream = server_session.open_stream("tcp", "127.0.0.1:1")
        self.server_io.producer.pauseProducing()
        stream.write(b"y" * 100_000)
        self.client.sendMessage(_codec.encode(_codec.resume(1, stream.conn_id)), isBinary=True)
        self.pump.flush()
        self.assertEqual(self.reading, [])
