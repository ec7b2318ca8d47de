"""
The WebSocket layer on iosim with a test clock: keepalive pings, the 60 s
silence rule, text messages, and the session registered as the transport's
producer.
"""

from __future__ import annotations

import os

import txaio
from twisted.logger import formatEvent, globalLogPublisher
from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase

from remotedialer import nvx_active
from remotedialer._resource import Identity
from remotedialer._session import Session
from remotedialer._websocket import (
    IDLE_TIMEOUT,
    PING_INTERVAL,
    TunnelLinkError,
    client_factory,
    server_factory,
)


class _Owner:
    """Stands in for the Server / TunnelClient: builds and forgets sessions."""

    def __init__(self):
        self.opened = []
        self.closed = []

    def _session_opened(self, protocol, identity=None):
        session = Session(protocol.send_binary, client_key="foo", drop=protocol.drop)
        self.opened.append(session)
        return session

    def _session_closed(self, session):
        self.closed.append(session)

    def _link_failed(self):
        self.failed = True


class WebSocketLinkTests(SynchronousTestCase):
    def setUp(self):
        self.clock = MemoryReactorClock()
        previous = txaio.config.loop
        txaio.config.loop = self.clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        self.server_owner = _Owner()
        self.client_owner = _Owner()
        sfactory = server_factory(self.server_owner, self.clock)
        cfactory = client_factory(self.client_owner, "ws://127.0.0.1:8123/connect",
                                  {"X-Tunnel-ID": "foo"}, self.clock)
        addr = IPv4Address("TCP", "127.0.0.1", 8123)
        self.server = sfactory.buildProtocol(addr)
        self.server.identity = Identity("foo")
        self.client = cfactory.buildProtocol(addr)
        self.pings = []
        answer = self.server.onPing

        def on_ping(payload):
            self.pings.append(payload)
            answer(payload)  # the default answers with a PONG

        self.server.onPing = on_ping
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
        self.assertIs(self.server_io.producer, server_session)
        self.assertIs(self.client_io.producer, client_session)

    def test_client_pings_every_interval(self):
        """The client pings about every 5 s, so a healthy idle link stays up past 60 s."""
        self.advance(PING_INTERVAL + 1)
        self.assertEqual(len(self.pings), 1)
        self.advance(IDLE_TIMEOUT * 2)
        # one ping per 5 s (Autobahn's batched timer may round each up a little)
        self.assertGreaterEqual(len(self.pings), 2 * IDLE_TIMEOUT // (PING_INTERVAL + 1))
        self.assertEqual(self.server_owner.closed, [])
        self.assertEqual(self.client_owner.closed, [])

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
        self.assertEqual(self.server_owner.closed, [server_session])
        [reason] = lost
        self.assertTrue(reason.check(TunnelLinkError))

    def test_silent_server_is_dead_for_client(self):
        """The client gives up on a server it has not heard from in 60 s."""
        self.advance(IDLE_TIMEOUT - 1, deliver=False)
        self.assertFalse(self.client_io.disconnecting)
        self.advance(2, deliver=False)
        self.assertTrue(self.client_io.disconnecting)

    def test_text_message_ends_session(self):
        """A text message is a protocol error: the receiver drops the whole session."""
        [server_session] = self.server_owner.opened
        self.client.sendMessage(b"hello", isBinary=False)
        self.pump.flush()
        self.assertTrue(server_session.closed)
        self.assertTrue(self.server_io.disconnecting)

    def test_binary_message_reaches_session(self):
        """Binary messages reach the session: Data for an unknown stream is answered."""
        from remotedialer._codec import decode

        [server_session] = self.server_owner.opened
        [client_session] = self.client_owner.opened
        replies = []
        client_session.message_received = lambda data: replies.append(decode(data))
        client_session.send_data(type("S", (), {"conn_id": 9, "has_producer": False})(), b"x")
        self.pump.flush()
        [reply] = replies
        self.assertEqual(reply.error_text(), f"connection not found foo/{server_session.session_key}/9")


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
        session.message_received(sent[0].replace(b"\x04\x04", b"\x04\x06", 1))  # the Connect, retyped as an Error for stream 2
        lines = [formatEvent(e) for e in events if "conn=" in formatEvent(e)]
        self.assertTrue(any(line.startswith("WRITE CONNECT conn=2 size=") for line in lines), lines)
        self.assertTrue(any(line.startswith("REQUEST ") for line in lines), lines)
