"""
Close and error propagation through the tunnel, both directions, on the
simulated network (tests/netsim.py: a target's abortConnection is a reset).
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase

from remotedialer import StreamError, allow_patterns
from tests.netsim import Network
from tests.support import Collector
from tests.system.test_end_to_end import _Factory


class _Resetter(Protocol):
    """A target that answers, then resets the connection (RST, not FIN)."""

    def connectionMade(self):
        self.transport.write(b"bye")
        self.transport.abortConnection()


class _Closer(Protocol):
    def connectionMade(self):
        self.transport.write(b"done")
        self.transport.loseConnection()


class ClosePropagationTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)

    def _harness(self, **client_kwargs):
        site = self.net.serve_tunnel()
        client = self.net.client(site.url, **client_kwargs)
        self.net.result(client.when_connected())
        return site.server, client

    def _dial(self, server, address, protocol):
        return self.net.connect(server.endpoint("foo", "tcp", address), protocol)

    def test_refused_dial_reaches_server_side(self):
        """A dial the target's host refuses ends the stream with the far side's error."""
        server, _ = self._harness()
        port = self.net.listen(Factory.forProtocol(Protocol))
        port.stopListening()
        reader = self._dial(server, port.address, Collector())
        self.net.flush()
        self.assertEqual(self.net.refused[port.address], 1)
        # An IP-literal target is dialed directly (no resolver): refused at once.
        self.successResultOf(reader.done)
        self.assertTrue(reader.reason.check(StreamError))
        self.assertIn("refused", reader.reason.getErrorMessage().lower())

    def test_target_reset_is_an_error(self):
        """A target that resets its connection ends the server-side stream with an error."""
        server, _ = self._harness()
        port = self.net.listen(Factory.forProtocol(_Resetter))
        reader = self._dial(server, port.address, Collector())
        self.net.flush()
        self.successResultOf(reader.done)
        self.assertTrue(reader.reason.check(StreamError), reader.reason)
        self.assertFalse(reader.reason.check(ConnectionDone))

    def test_target_clean_close(self):
        """A target that closes cleanly: its bytes arrive, then ConnectionDone."""
        server, _ = self._harness()
        port = self.net.listen(Factory.forProtocol(_Closer))
        reader = self._dial(server, port.address, Collector())
        self.net.flush()
        self.assertEqual(self.successResultOf(reader.done), b"done")
        self.assertTrue(reader.reason.check(ConnectionDone))

    def test_local_lose_connection_closes_target(self):
        """loseConnection on the server side: the target sees its data, then a clean close."""
        server, client = self._harness()
        sink = _Factory(Collector)
        port = self.net.listen(sink)
        writer = self._dial(server, port.address, Collector())
        writer.transport.write(b"last words")
        writer.transport.loseConnection()
        self.net.flush()
        [target] = sink.instances
        self.assertEqual(self.successResultOf(target.done), b"last words")
        self.assertTrue(target.reason.check(ConnectionDone))
        self.assertTrue(writer.reason.check(ConnectionDone))
        self.assertEqual(client.session.streams, {})

    def test_local_abort_closes_target(self):
        """abortConnection on the server side closes the target's connection too."""
        server, client = self._harness()
        sink = _Factory(Collector)
        port = self.net.listen(sink)
        writer = self._dial(server, port.address, Collector())
        [target] = sink.instances
        writer.transport.abortConnection()
        self.net.flush()
        self.successResultOf(target.done)
        self.assertTrue(writer.reason.check(StreamError))
        self.assertEqual(client.session.streams, {})

    def test_refused_connect_fails_that_stream_only(self):
        """
        A Connect the client's authorizer refuses fails that stream with an
        error; the session and a stream opened beside it live on.
        """
        sink = _Factory(Collector)
        port = self.net.listen(sink)
        server, client = self._harness(connect_authorizer=allow_patterns([f"tcp/{port.address}"]))
        session = client.session
        good = self._dial(server, port.address, Collector())
        refused = self._dial(server, "127.0.0.1:1", Collector())
        self.net.flush()
        self.successResultOf(refused.done)
        self.assertTrue(refused.reason.check(StreamError))
        self.assertIn("not allowed", refused.reason.getErrorMessage())
        self.assertEqual(self.net.refused["127.0.0.1:1"], 0)  # never dialed
        good.transport.write(b"still here")
        self.net.flush()
        [target] = sink.instances
        self.assertEqual(target.received, 10)
        self.assertIs(client.session, session)
        self.assertTrue(server.has_session("foo"))
        good.transport.loseConnection()
        self.net.flush()
        self.successResultOf(target.done)

    def test_tunnel_loss_ends_streams_with_error(self):
        """When the WebSocket goes, every stream on it ends with an error."""
        server, client = self._harness()
        sink = _Factory(Collector)
        port = self.net.listen(sink)
        reader = self._dial(server, port.address, Collector())
        [target] = sink.instances
        server.sessions.local_session("foo")._drop()
        self.net.flush()
        self.successResultOf(reader.done)
        self.assertTrue(reader.reason.check(StreamError) or not reader.reason.check(ConnectionDone))
        self.successResultOf(target.done)
