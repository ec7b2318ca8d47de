"""
The client service on loopback: wss:// with certificate verification,
dials from the client to the server, the on-connect hook, SyncConnections.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer import Server, StreamError, TunnelClient, allow_all, allow_patterns

from tests.support import Collector, Echo, TunnelHarness, eventually, listen_tcp, self_signed_certificate, wait


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class SecureTunnelTests(TestCase):
    timeout = 30

    async def _tls_server(self):
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        server = Server(reactor=reactor)
        root = Resource()
        root.putChild(b"connect", server.resource)
        port = await serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}").listen(Site(root))
        self.addCleanup(port.stopListening)
        return server, port, cert

    def _client(self, url, **kwargs):
        client = TunnelClient(url, headers={"X-Tunnel-ID": "foo"}, reactor=reactor,
                              connect_authorizer=allow_all, retry_policy=lambda attempt: 0.2, **kwargs)
        client.startService()
        self.addCleanup(client.stopService)
        return client

    def test_wss_with_trusted_ca(self):
        """wss:// with the server's CA: the tunnel opens and carries streams."""

        async def go():
            server, port, cert = await self._tls_server()
            with open(cert, "rb") as f:
                ca = Certificate.loadPEM(f.read())
            client = self._client(f"wss://localhost:{port.getHost().port}/connect",
                                  tls_options=optionsForClientTLS("localhost", trustRoot=ca))
            await client.when_connected()
            target = await listen_tcp(Factory.forProtocol(Echo), self)
            reader = Collector()
            await server.endpoint("foo", "tcp", f"127.0.0.1:{target.getHost().port}").connect(
                Factory.forProtocol(lambda: reader))
            reader.transport.write(b"over TLS")
            await eventually(lambda: reader.received == 8)
            reader.transport.loseConnection()
            self.assertEqual(await reader.done, b"over TLS")

        return run(go())

    def test_wss_untrusted_certificate_refused(self):
        """Verification is on by default: a self-signed server is never connected."""

        async def go():
            server, port, _ = await self._tls_server()
            client = self._client(f"wss://localhost:{port.getHost().port}/connect")
            await wait(1.0)
            self.assertIsNone(client.session)
            self.assertEqual(server.clients(), [])

        return run(go())


class ClientDialTests(TestCase):
    timeout = 30

    def test_client_dial_refused_by_default(self):
        """A client's dial to the server side is refused unless the server allows it."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            client = await harness.connect_client("foo")
            reader = Collector()
            client.open_stream("tcp", "127.0.0.1:1").attach(reader)
            await reader.done
            self.assertTrue(reader.reason.check(StreamError))
            self.assertIn("not allowed", reader.reason.getErrorMessage())
            self.assertTrue(harness.server.has_session("foo"))

        return run(go())

    def test_client_dial_allowed(self):
        """With a client-connect authorizer, the client reaches targets near the server."""

        async def go():
            target = await listen_tcp(Factory.forProtocol(Echo), self)
            address = f"127.0.0.1:{target.getHost().port}"
            harness = TunnelHarness(self, client_connect_authorizer=allow_patterns([f"tcp/{address}"]))
            await harness.start()
            client = await harness.connect_client("foo")
            reader = Collector()
            stream = client.open_stream("tcp", address)
            self.assertGreaterEqual(stream.conn_id, 1 << 48)
            stream.attach(reader)
            stream.write(b"ping")
            await eventually(lambda: reader.received == 4)
            stream.loseConnection()
            self.assertEqual(await reader.done, b"ping")

        return run(go())


class OnConnectTests(TestCase):
    timeout = 30

    def test_on_connect_hook(self):
        """The hook runs with the session each time the tunnel opens."""

        async def go():
            seen = []
            harness = TunnelHarness(self)
            await harness.start()
            client = await harness.connect_client("foo", on_connect=seen.append)
            self.assertEqual(seen, [client.session])

        return run(go())

    def test_failing_hook_drops_tunnel(self):
        """A hook that fails drops the tunnel; it is retried."""

        async def go():
            calls = []

            def hook(session):
                calls.append(session)
                raise RuntimeError("not ready")

            harness = TunnelHarness(self)
            await harness.start()
            client = TunnelClient(harness.url, headers={"X-Tunnel-ID": "foo"}, reactor=reactor,
                                  connect_authorizer=allow_all, on_connect=hook,
                                  retry_policy=lambda attempt: 0.1)
            client.startService()
            self.addCleanup(client.stopService)
            await eventually(lambda: len(calls) >= 2)
            self.flushLoggedErrors(RuntimeError)

        return run(go())


class BackoffTests(TestCase):
    timeout = 30

    def test_refused_upgrade_backs_off(self):
        """A server that refuses the upgrade (401) is retried with a growing attempt count."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            attempts = []

            def policy(attempt):
                attempts.append(attempt)
                return 0.05

            client = TunnelClient(harness.url, reactor=reactor, connect_authorizer=allow_all,
                                  retry_policy=policy)  # no X-Tunnel-ID: refused
            client.startService()
            self.addCleanup(client.stopService)
            await eventually(lambda: len(attempts) >= 4)
            self.assertEqual(attempts[:4], [1, 2, 3, 4])
            self.assertIsNone(client.session)

        return run(go())

    def test_failing_hook_backs_off(self):
        """A tunnel dropped by a failing on-connect hook is retried with a growing attempt count."""

        async def go():
            harness = TunnelHarness(self)
            await harness.start()
            attempts = []

            def policy(attempt):
                attempts.append(attempt)
                return 0.05

            def hook(session):
                raise RuntimeError("not ready")

            client = TunnelClient(harness.url, headers={"X-Tunnel-ID": "foo"}, reactor=reactor,
                                  connect_authorizer=allow_all, on_connect=hook, retry_policy=policy)
            client.startService()
            self.addCleanup(client.stopService)
            await eventually(lambda: len(attempts) >= 4)
            self.assertEqual(attempts[:4], [1, 2, 3, 4])
            self.flushLoggedErrors(RuntimeError)

        return run(go())
