"""
Memory is released when a session or stream ends, without waiting for the
cyclic garbage collector: after a tunnel with streams (relayed to targets,
some with data buffered for paused readers) is dropped, no object of ours
is left in a reference cycle.  Twisted's own TCP transport does the same
(it forgets its protocol after connectionLost, which the test's in-memory
transports are made to do too).
"""

from __future__ import annotations

import gc

import txaio
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from remotedialer.tunnel._identity import Identity
from remotedialer.tunnel._interfaces import ISessionOwner
from remotedialer.tunnel._session import Session
from remotedialer.tunnel._websocket import client_factory, server_factory
from tests.memory import FakeDialer, Recorder


@implementer(ISessionOwner)
class _Owner:
    def __init__(self, clock, dialer=None):
        self.clock = clock
        self.dialer = dialer
        self.sessions = []

    def session_opened(self, protocol, identity):
        session = Session(protocol.send_binary, client_key="foo", drop=protocol.drop,
                          clock=self.clock, dialer=self.dialer, dials_as_client=identity is None)
        self.sessions.append(session)
        return session

    def session_closed(self, session):
        self.sessions.remove(session)

    def link_failed(self, reason, retry_after=None):
        pass


#: Objects of ours that Autobahn keeps in cycles of its own: the WebSocket
#: protocol (through its is_closed/is_open Deferreds), what only it refers
#: to (its factory's limits, the upgrade's Identity), and the exception it
#: closed with.  Nothing of the session or its streams is reachable from them.
_AUTOBAHN_HELD = {"TunnelServerProtocol", "TunnelClientProtocol", "SessionLimits", "Identity",
                  "TunnelLinkError"}


def _ours(objects) -> list[object]:
    return [o for o in objects
            if type(o).__module__.startswith("remotedialer") and type(o).__name__ not in _AUTOBAHN_HELD]


class CycleTests(SynchronousTestCase):
    def run_tunnel(self, clock) -> None:
        """A tunnel with streams in every state, then dropped; every reference ends with this frame."""
        server_owner = _Owner(clock)
        client_owner = _Owner(clock, FakeDialer())
        server = server_factory(server_owner, clock).buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        server.identity = Identity("foo")
        client = client_factory(client_owner, "ws://127.0.0.1:1/connect", {}, clock).buildProtocol(None)
        server_io = iosim.FakeTransport(server, isServer=True)
        client_io = iosim.FakeTransport(client, isServer=False)
        pump = iosim.connect(server, server_io, client, client_io, greet=False, clock=clock)
        pump.flush()
        [session] = server_owner.sessions
        readers = [Recorder() for _ in range(4)]
        streams = [session.dial("tcp", f"127.0.0.1:{8000 + i}", r) for i, r in enumerate(readers)]
        pump.flush()
        streams[0].write(b"hello")
        streams[1].pauseProducing()
        for endpoint in client_owner.dialer.endpoints:
            endpoint.protocol.dataReceived(b"x" * 100_000)
        pump.flush()
        client_owner.dialer.endpoints[2].protocol.connectionLost(Failure(ConnectionDone()))  # ends first
        streams[3].loseConnection()
        pump.flush()
        clock.advance(0)
        server_io.loseConnection()
        pump.flush()
        clock.advance(0)
        clock.advance(10)
        self.assertEqual(server_owner.sessions, [])
        self.assertTrue(all(r.lost == 1 for r in readers))
        # As Twisted's TCP transport does after connectionLost (iosim's
        # fakes hold on to their protocols for ever).
        for io in (server_io, client_io):
            del io.protocol
        del pump.client, pump.server
        client_owner.dialer.endpoints.clear()  # the fixture's own record of its targets

    def test_nothing_of_ours_left_for_the_collector(self) -> None:
        previous = txaio.config.loop
        clock = MemoryReactorClock()
        txaio.config.loop = clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.set_debug, 0)
        try:
            self.run_tunnel(clock)
            gc.collect()
            left = _ours(gc.garbage)
        finally:
            gc.garbage.clear()
        self.assertEqual(sorted({type(o).__name__ for o in left}), [], [type(o).__name__ for o in left])
