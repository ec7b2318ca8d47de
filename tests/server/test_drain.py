"""
Graceful drain (remotedialer/server/_drain.py) on the simulated network: new
tunnels and streams refused, peers told, streams in flight finish (or are
cut at the timeout), then the clients are sent away -- to another server.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.server._drain import DrainGate, DrainOnStop
from remotedialer.tunnel._exceptions import ServerDraining
from tests.netsim import Network
from tests.ops.test_logging import capture, lines
from tests.server.test_peering import _Mesh
from tests.support import Collector, Echo


class _Leaf(Resource):
    isLeaf = True

    def render(self, request):
        return b"inner"


class DrainTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)
        self.events = capture(self)

    def _two_servers_and_client(self):
        net = self.net
        a = net.serve_tunnel("10.0.0.1:8123")
        b = net.serve_tunnel("10.0.0.2:8123")
        client = net.client([a.url, b.url], "foo", retry_policy=lambda attempt: 0.5)
        net.result(client.when_connected())
        self.assertTrue(a.server.has_session("foo"))
        return a, b, client

    def _stream(self, server):
        echo = self.net.listen(Factory.forProtocol(Echo))
        reader = self.net.connect(server.endpoint("foo", "tcp", echo.address), Collector())
        return reader

    def test_in_flight_stream_finishes_then_client_moves(self):
        net = self.net
        a, b, client = self._two_servers_and_client()
        reader = self._stream(a.server)
        reader.transport.write(b"before ")
        net.flush()

        done = a.server.drain(10.0)
        net.run(2.0)
        self.assertNoResult(done)  # the stream is still open
        self.assertTrue(a.server.draining)
        # New dials are refused; the stream in flight still works.
        with self.assertRaises(ServerDraining):
            a.server.open_stream("foo", "tcp", "127.0.0.1:1")
        reader.transport.write(b"during")
        net.flush()
        self.assertEqual(b"".join(reader.chunks), b"before during")
        self.assertTrue(a.server.has_session("foo"))

        reader.transport.loseConnection()
        net.run(0.5)
        self.successResultOf(done)
        self.assertEqual(b"".join(reader.chunks), b"before during")
        self.assertEqual(a.server.clients(), [])
        self.assertEqual(len(lines(self.events, "drain: streams finished")), 1)
        # The client goes to the other server.
        net.run(2.0)
        self.assertTrue(b.server.has_session("foo"))
        self.assertFalse(a.server.has_session("foo"))
        down = [e for e in lines(self.events, "down after") if e.get("kind") == "client"]
        self.assertEqual([e["reason"] for e in down], ["server is shutting down"])
        # The client says why, from the close frame (not "closed uncleanly").
        [client_down] = lines(self.events, "tunnel to {url} down after")
        self.assertEqual(client_down["reason"], "tunnel closed: server is shutting down")

    def test_sessions_closed_with_going_away(self):
        """
        At the end of the drain each client session gets a WebSocket close,
        1001 "going away" with the reason; the client answers it, so the
        close is clean on both ends and nothing is aborted.
        """
        net = self.net
        a, _b, client = self._two_servers_and_client()
        [server_session] = a.server.sessions.local_sessions()
        server_end, client_end = server_session._connection, client.session._connection
        done = a.server.drain(10.0)
        net.run(0.5)
        self.successResultOf(done)
        self.assertEqual((server_end.localCloseCode, server_end.localCloseReason),
                         (1001, b"server is shutting down"))
        self.assertEqual((client_end.remoteCloseCode, client_end.remoteCloseReason),
                         (1001, "server is shutting down"))
        self.assertTrue(server_end.wasClean)
        self.assertTrue(client_end.wasClean)
        self.assertFalse(server_end.wasCloseHandshakeTimeout)
        self.assertEqual(a.server.clients(), [])

    def test_silent_client_aborted_after_the_close_grace(self):
        """
        A client that does not answer the close (it reads nothing) keeps its
        connection through the grace, and is aborted once it has passed; the
        drain waits for that.
        """
        from remotedialer.tunnel._websocket import CLOSE_HANDSHAKE_TIMEOUT

        net = self.net
        a, _b, client = self._two_servers_and_client()
        [server_session] = a.server.sessions.local_sessions()
        server_end = server_session._connection
        client.session._connection.transport.pauseProducing()  # reads nothing from now on
        done = a.server.drain(10.0)
        net.run(CLOSE_HANDSHAKE_TIMEOUT - 0.3)
        self.assertEqual(server_end.localCloseCode, 1001)
        self.assertTrue(server_session.closed)  # its streams are over...
        self.assertEqual(a.server.sessions.local_sessions(), [server_session])  # ...its WebSocket waits
        self.assertFalse(server_end.droppedByMe)
        self.assertNoResult(done)
        net.run(1.0)
        self.assertTrue(server_end.droppedByMe)
        self.assertTrue(server_end.wasCloseHandshakeTimeout)
        self.assertEqual(a.server.sessions.local_sessions(), [])
        self.successResultOf(done)

    def test_new_tunnels_refused_while_draining(self):
        net = self.net
        a, _b, _client = self._two_servers_and_client()
        reader = self._stream(a.server)  # keeps the drain going
        a.server.drain(10.0)
        net.flush()
        refused = net.client(a.url, "bar", retry_policy=lambda attempt: 60.0)
        net.run(0.5)
        self.assertIsNone(refused.session)
        self.assertFalse(a.server.has_session("bar"))
        [failed, *_] = lines(self.events, "; retrying in")
        self.assertTrue(failed["reason"].startswith("server answered 503"), failed["reason"])
        reader.transport.loseConnection()
        net.flush()

    def test_timeout_cuts_what_is_left(self):
        net = self.net
        a, _b, _client = self._two_servers_and_client()
        reader = self._stream(a.server)
        done = a.server.drain(3.0)
        net.run(2.9)
        self.assertNoResult(done)
        net.run(1.5)
        self.successResultOf(done)
        self.successResultOf(reader.done)  # cut
        self.assertEqual(len(lines(self.events, "streams still open after")), 1)

    def test_no_streams_drains_at_once(self):
        a, _b, _client = self._two_servers_and_client()
        done = a.server.drain(30.0)
        self.net.run(0.2)
        self.successResultOf(done)
        again = a.server.drain(30.0)
        self.successResultOf(again)  # drained already

    def test_second_caller_waits_for_the_same_drain(self):
        a, _b, _client = self._two_servers_and_client()
        reader = self._stream(a.server)
        first, second = a.server.drain(30.0), a.server.drain(30.0)
        self.net.run(1.0)
        self.assertNoResult(first)
        self.assertNoResult(second)
        reader.transport.loseConnection()
        self.net.run(0.5)
        self.successResultOf(first)
        self.successResultOf(second)

    def test_peers_told_client_is_leaving(self):
        """RemoveClient goes to the peers at once; their stream through us in flight still finishes."""
        net = self.net
        mesh = _Mesh(net)
        client = mesh.client(mesh.sites["A"].url)
        net.result(client.when_connected())
        self.assertEqual(mesh.reachable(), "ABC")
        reader = self._stream(mesh.server("C"))  # C -> A -> foo
        reader.transport.write(b"hello")
        net.flush()
        done = mesh.server("A").drain(10.0)
        net.flush()
        self.assertEqual(mesh.reachable(), "A")  # B and C forgot foo
        reader.transport.write(b" again")
        net.flush()
        self.assertEqual(b"".join(reader.chunks), b"hello again")
        self.assertNoResult(done)
        reader.transport.loseConnection()
        net.run(0.5)
        self.successResultOf(done)


    def test_peer_found_while_draining_is_not_told_of_clients(self):
        net = self.net
        mesh = _Mesh(net, names=("A", "B"))
        client = mesh.client(mesh.sites["A"].url)
        net.result(client.when_connected())
        reader = self._stream(mesh.server("A"))  # keeps A draining
        mesh.server("A").drain(10.0)
        net.flush()
        late = net.serve_tunnel("10.0.0.9:8123", peer_id="L", peer_token="token-L")
        late.server.add_peer("A", "token-A", mesh.sites["A"].url)
        mesh.server("A").add_peer("L", "token-L", late.url)
        net.start(late.server)
        net.run(1.0)
        self.assertTrue(late.server.sessions.peer_sessions())  # A linked to L...
        self.assertNotIn("foo", late.server.sessions.reachable_clients())  # ...and did not offer foo
        reader.transport.loseConnection()
        net.run(0.5)


class DrainGateTests(SynchronousTestCase):
    def test_503_while_draining(self):
        class _Server:
            draining = False

        server = _Server()
        gate = DrainGate(_Leaf(), server)
        request = DummyRequest([b""])
        self.assertEqual(gate.render(request), b"inner")
        server.draining = True
        request = DummyRequest([b""])
        self.assertEqual(gate.render(request), b"server is shutting down")
        self.assertEqual(request.responseCode, 503)
        self.assertEqual(request.responseHeaders.getRawHeaders(b"connection"), [b"close"])
        Site(gate)  # a resource like any other


class DrainOnStopTests(SynchronousTestCase):
    def test_children_stop_after_the_drain(self):
        """The listeners (children) keep running, and answering 503, until the drain is over."""
        drained: defer.Deferred[None] = defer.Deferred()

        class _Server:
            def drain(self, timeout):
                self.timeout = timeout
                return drained

        top = DrainOnStop()
        top.server = _Server()
        top.drain_timeout = 7.0
        child = Service()
        child.setServiceParent(top)
        top.startService()
        stopped = top.stopService()
        self.assertEqual(top.server.timeout, 7.0)
        self.assertTrue(child.running)
        self.assertNoResult(stopped)
        drained.callback(None)
        self.assertFalse(child.running)
        self.successResultOf(stopped)
