"""
The server's front of house on loopback: authentication at upgrade, peer
headers, unknown clients, HTTP and line protocols through the tunnel.
"""

from __future__ import annotations

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from remotedialer import AuthorizationError, ClientNotConnected, TunnelClient, allow_all

from tests.support import Collector, TunnelHarness, eventually, listen_tcp, wait

UPGRADE = {
    b"Connection": [b"Upgrade"],
    b"Upgrade": [b"websocket"],
    b"Sec-WebSocket-Version": [b"13"],
    b"Sec-WebSocket-Key": [b"dGhlIHNhbXBsZSBub25jZQ=="],
}


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class UpgradeAuthTests(TestCase):
    timeout = 30

    async def _get(self, harness, headers):
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = harness.url.replace("ws://", "http://")
        response = await treq.get(url, headers={**UPGRADE, **headers}, pool=pool)
        body = await response.content()
        return response.code, body

    def test_missing_client_id_is_401(self):
        """No X-Tunnel-ID: 401 with Go's body text."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            code, body = await self._get(harness, {})
            self.assertEqual((code, body), (401, b"failed authentication"))
            self.assertEqual(harness.server.clients(), [])

        return run(go())

    def test_authorizer_error_is_400(self):
        """An authorizer that raises refuses with 400 and the error text."""

        def authorizer(request):
            raise AuthorizationError("token expired")

        async def go():
            harness = TunnelHarness(self, authorizer=authorizer)
            await harness.start()
            code, body = await self._get(harness, {b"X-Tunnel-ID": [b"foo"]})
            self.assertEqual((code, body), (400, b"token expired"))

        return run(go())

    def test_bad_client_keys_are_400(self):
        """Keys that cannot be announced to peers ('/', '::', over 80 bytes) are refused."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            for key in (b"a/b", b"a::tcp", b"k" * 81):
                code, body = await self._get(harness, {b"X-Tunnel-ID": [key]})
                self.assertEqual(code, 400, key)
            self.assertEqual(harness.server.clients(), [])

        return run(go())

    def test_deferred_authorizer(self):
        """An authorizer may answer later, through a Deferred."""

        def authorizer(request):
            return defer.succeed("k-" + request.getHeader("X-Token"))

        async def go():
            harness = TunnelHarness(self, authorizer=authorizer)
            await harness.start()
            client = TunnelClient(harness.url, headers={"X-Token": "abc"}, reactor=reactor,
                                  connect_authorizer=allow_all)
            client.startService()
            self.addCleanup(client.stopService)
            await client.when_connected()
            await eventually(lambda: harness.server.clients() == ["k-abc"])

        return run(go())

    def test_peer_headers(self):
        """A known peer id with its token opens a peer session; a wrong token is refused."""

        async def go():
            harness = TunnelHarness(self, peer_id="server-a", peer_token="a-token")
            await harness.start()
            # a peer whose link never comes up (nothing listens on port 1)
            harness.server.add_peer("server-b", "s3cret", "ws://127.0.0.1:1/connect")
            code, body = await self._get(harness, {b"X-API-Tunnel-ID": [b"server-b"],
                                                   b"X-API-Tunnel-Token": [b"wrong"]})
            self.assertEqual((code, body), (401, b"failed authentication"))
            client = TunnelClient(harness.url, reactor=reactor, connect_authorizer=allow_all,
                                  headers={"X-API-Tunnel-ID": "server-b", "X-API-Tunnel-Token": "s3cret"})
            client.startService()
            self.addCleanup(client.stopService)
            await client.when_connected()
            await eventually(lambda: harness.server.sessions.peer_sessions())
            [peer] = harness.server.sessions.peer_sessions()
            self.assertTrue(peer.is_peer)
            self.assertEqual(peer.client_key, "server-b")
            self.assertEqual(harness.server.clients(), [])

        return run(go())


class DialTests(TestCase):
    timeout = 30

    def test_unknown_client(self):
        """Dialing a client with no session fails at once with a clear error."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            endpoint = harness.server.endpoint("nobody", "tcp", "127.0.0.1:80")
            with self.assertRaises(ClientNotConnected) as caught:
                await endpoint.connect(Factory.forProtocol(Collector))
            self.assertIn("failed to find Session for client nobody", str(caught.exception))

        return run(go())

    def test_treq_through_tunnel(self):
        """treq requests go through the tunnel via the Agent endpoint factory."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            await harness.connect_client("foo")
            root = Resource()
            root.putChild(b"hello", Data(b"hello from behind the NAT", "text/plain"))
            port = await listen_tcp(Site(root), self)
            pool = HTTPConnectionPool(reactor, persistent=False)
            http = treq.client.HTTPClient(harness.server.agent("foo", pool=pool))
            response = await http.get(f"http://127.0.0.1:{port.getHost().port}/hello")
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), b"hello from behind the NAT")
            missing = await http.get(f"http://127.0.0.1:{port.getHost().port}/nope")
            self.assertEqual(missing.code, 404)
            await missing.content()

        return run(go())

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

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            await harness.connect_client("foo")
            port = await listen_tcp(Factory.forProtocol(Upper), self)
            client = Lines()
            await harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}").connect(
                Factory.forProtocol(lambda: client))
            for word in (b"alpha", b"beta", b"gamma"):
                client.sendLine(word)
            await eventually(lambda: len(client.lines) == 3)
            self.assertEqual(client.lines, [b"ALPHA", b"BETA", b"GAMMA"])
            client.transport.loseConnection()

        return run(go())


class ReconnectTests(TestCase):
    timeout = 60

    def test_client_reconnects_after_server_restart(self):
        """The client comes back by itself after the server goes away and returns."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            client = await harness.connect_client("foo", retry_policy=lambda attempt: 0.2)
            first = client.session
            port_number = harness.port.getHost().port
            await harness.stop_listening()
            harness.server.sessions.local_session("foo")._drop()
            await eventually(lambda: client.session is None)
            await wait(0.5)  # a few refused attempts while the server is down
            self.assertIsNone(client.session)
            await harness.start(port_number)
            await eventually(lambda: harness.server.has_session("foo"), timeout=10)
            self.assertIsNot(client.session, first)
            echo = await listen_tcp(Factory.forProtocol(Collector), self)
            reader = Collector()
            await harness.server.endpoint("foo", "tcp", f"127.0.0.1:{echo.getHost().port}").connect(
                Factory.forProtocol(lambda: reader))
            reader.transport.loseConnection()
            await reader.done

        return run(go())
