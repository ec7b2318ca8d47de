"""
The server's front of house on the simulated network (tests/netsim.py):
authentication at upgrade, peer headers, unknown clients, HTTP and line
protocols through the tunnel, clients coming back after a restart.
"""

from __future__ import annotations

import treq
from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from remotedialer import AuthorizationError, ClientNotConnected
from tests.netsim import Network
from tests.support import Collector

UPGRADE = {
    b"Connection": [b"Upgrade"],
    b"Upgrade": [b"websocket"],
    b"Sec-WebSocket-Version": [b"13"],
    b"Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
}


class UpgradeAuthTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)

    def _get(self, site, headers):
        pool = HTTPConnectionPool(self.net.reactor, persistent=False)
        http = treq.client.HTTPClient(Agent(self.net.reactor, pool=pool))
        url = site.url.replace("ws://", "http://")
        d = http.get(url, headers={**UPGRADE, **headers})
        d.addCallback(lambda response: treq.content(response).addCallback(
            lambda body: (response.code, body)))
        return self.net.result(d)

    def test_missing_client_id_is_401(self):
        """No X-Tunnel-ID: 401 with Go's body text."""
        site = self.net.serve_tunnel()
        code, body = self._get(site, {})
        self.assertEqual((code, body), (401, b"failed authentication"))
        self.assertEqual(site.server.clients(), [])

    def test_authorizer_error_is_400(self):
        """An authorizer that raises refuses with 400 and the error text."""

        def authorizer(request):
            raise AuthorizationError("token expired")

        site = self.net.serve_tunnel(authorizer=authorizer)
        code, body = self._get(site, {b"X-Tunnel-ID": [b"foo"]})
        self.assertEqual((code, body), (400, b"token expired"))

    def test_bad_client_keys_are_400(self):
        """Keys that cannot be announced to peers ('/', '::', over 80 bytes) are refused."""
        site = self.net.serve_tunnel()
        for key in (b"a/b", b"a::tcp", b"k" * 81):
            code, body = self._get(site, {b"X-Tunnel-ID": [key]})
            self.assertEqual(code, 400, key)
        self.assertEqual(site.server.clients(), [])

    def test_deferred_authorizer(self):
        """An authorizer may answer later, through a Deferred."""
        answers = []

        def authorizer(request):
            d = defer.Deferred()
            answers.append((d, "k-" + request.getHeader("X-Token")))
            return d

        site = self.net.serve_tunnel(authorizer=authorizer)
        client = self.net.client(site.url, key=None, headers={"X-Token": "abc"})
        self.net.flush()
        self.assertEqual(site.server.clients(), [])  # waiting for the authorizer
        [(d, key)] = answers
        d.callback(key)
        self.net.result(client.when_connected())
        self.assertEqual(site.server.clients(), ["k-abc"])

    def test_peer_headers(self):
        """A known peer id with its token opens a peer session; a wrong token is refused."""
        site = self.net.serve_tunnel(peer_id="server-a", peer_token="a-token")
        # a peer whose link never comes up (the server is not started)
        site.server.add_peer("server-b", "s3cret", "ws://127.0.0.1:1/connect")
        code, body = self._get(site, {b"X-API-Tunnel-ID": [b"server-b"],
                                      b"X-API-Tunnel-Token": [b"wrong"]})
        self.assertEqual((code, body), (401, b"failed authentication"))
        client = self.net.client(site.url, key=None,
                                 headers={"X-API-Tunnel-ID": "server-b", "X-API-Tunnel-Token": "s3cret"})
        self.net.result(client.when_connected())
        [peer] = site.server.sessions.peer_sessions()
        self.assertTrue(peer.is_peer)
        self.assertEqual(peer.client_key, "server-b")
        self.assertEqual(site.server.clients(), [])


class DialTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)

    def test_unknown_client(self):
        """Dialing a client with no session fails at once with a clear error."""
        site = self.net.serve_tunnel()
        endpoint = site.server.endpoint("nobody", "tcp", "127.0.0.1:80")
        d = defer.maybeDeferred(endpoint.connect, Factory.forProtocol(Collector))
        failure = self.failureResultOf(d, ClientNotConnected)
        self.assertIn("failed to find Session for client nobody", str(failure.value))

    def test_treq_through_tunnel(self):
        """treq requests go through the tunnel via the Agent endpoint factory."""
        net = self.net
        site = net.serve_tunnel()
        net.result(net.client(site.url).when_connected())
        root = Resource()
        root.putChild(b"hello", Data(b"hello from behind the NAT", "text/plain"))
        target = net.listen(Site(root, reactor=net.reactor))
        pool = HTTPConnectionPool(net.reactor, persistent=False)
        http = treq.client.HTTPClient(site.server.agent("foo", pool=pool))
        response = net.result(http.get(f"http://{target.address}/hello"))
        self.assertEqual(response.code, 200)
        self.assertEqual(net.result(response.content()), b"hello from behind the NAT")
        missing = net.result(http.get(f"http://{target.address}/nope"))
        self.assertEqual(missing.code, 404)
        net.result(missing.content())
        self.assertEqual(target.accepted, 2)

    def test_line_protocol_over_stream(self):
        """twisted.protocols.basic protocols run over a tunnel stream unchanged."""

        class Upper(LineReceiver):
            def lineReceived(self, line):
                self.sendLine(line.upper())

        class Lines(LineReceiver):
            def __init__(self):
                self.lines = []

            def lineReceived(self, line):
                self.lines.append(line)

        net = self.net
        site = net.serve_tunnel()
        net.result(net.client(site.url).when_connected())
        target = net.listen(Factory.forProtocol(Upper))
        client = net.connect(site.server.endpoint("foo", "tcp", target.address), Lines())
        for word in (b"alpha", b"beta", b"gamma"):
            client.sendLine(word)
        net.flush()
        self.assertEqual(client.lines, [b"ALPHA", b"BETA", b"GAMMA"])
        client.transport.loseConnection()
        net.flush()


class ReconnectTests(SynchronousTestCase):
    def test_client_reconnects_after_server_restart(self):
        """The client comes back by itself after the server goes away and returns."""
        net = Network(self)
        site = net.serve_tunnel()
        client = net.client(site.url, retry_policy=lambda attempt: 0.2)
        first = net.result(client.when_connected())
        site.stop_listening()
        site.server.sessions.local_session("foo")._drop()
        net.flush()
        self.assertIsNone(client.session)
        net.run(1.0)  # refused attempts while the server is down
        self.assertGreaterEqual(net.refused[site.address], 2)
        self.assertIsNone(client.session)
        site.start_listening()
        net.run(0.2 + 0.3)  # the next retry is due within 0.2 s (plus a refusal's 0.3 s)
        self.assertTrue(site.server.has_session("foo"))
        self.assertIsNot(client.session, first)
        echo = net.listen(Factory.forProtocol(Collector))
        reader = net.connect(site.server.endpoint("foo", "tcp", echo.address), Collector())
        reader.transport.loseConnection()
        net.flush()
        self.successResultOf(reader.done)
