"""
The client service on the simulated network (tests/netsim.py): wss:// with
certificate verification (real TLS, in memory), dials from the client to
the server, the on-connect hook, retries with backoff.
"""

from __future__ import annotations

import os

from twisted.internet.protocol import Factory
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.trial.unittest import SynchronousTestCase

from remotedialer import StreamError, allow_patterns
from tests.netsim import Network
from tests.support import Collector, Echo, self_signed_certificate


class SecureTunnelTests(SynchronousTestCase):
    """
    Real TLS (OpenSSL memory BIOs) over the simulated network.  The client's
    TLS layer runs on the reactor the client is given (here the test clock),
    which the network's teardown checks: nothing touches the global reactor.
    """

    def setUp(self):
        self.net = Network(self)
        directory = self.mktemp()
        os.makedirs(directory)
        cert_path, key_path = self_signed_certificate(directory)
        with open(cert_path, "rb") as f:
            cert = f.read()
        with open(key_path, "rb") as f:
            key = f.read()
        self.ca = Certificate.loadPEM(cert)
        server_options = PrivateCertificate.loadPEM(cert + key).options()
        self.site = self.net.serve_tunnel("localhost:8443", tls=server_options)

    def test_wss_with_trusted_ca(self):
        """wss:// with the server's CA: the tunnel opens and carries streams."""
        net, server = self.net, self.site.server
        self.assertTrue(self.site.url.startswith("wss://localhost:"))
        client = net.client(self.site.url, tls_options=optionsForClientTLS("localhost", trustRoot=self.ca),
                            retry_policy=lambda attempt: 0.2)
        net.result(client.when_connected())
        target = net.listen(Factory.forProtocol(Echo))
        reader = net.connect(server.endpoint("foo", "tcp", target.address), Collector())
        reader.transport.write(b"over TLS")
        net.flush()
        self.assertEqual(reader.received, 8)
        reader.transport.loseConnection()
        net.flush()
        self.assertEqual(self.successResultOf(reader.done), b"over TLS")

    def test_wss_untrusted_certificate_refused(self):
        """Verification is on by default: a self-signed server is never connected."""
        client = self.net.client(self.site.url, retry_policy=lambda attempt: 0.2)
        self.net.run(1.0)
        self.assertGreaterEqual(self.site.listener.accepted, 5)  # it kept trying, and was refused each time
        self.assertIsNone(client.session)
        self.assertEqual(self.site.server.clients(), [])


class ClientDialTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)

    def test_client_dial_refused_by_default(self):
        """A client's dial to the server side is refused unless the server allows it."""
        site = self.net.serve_tunnel()
        client = self.net.client(site.url)
        self.net.flush()
        reader = Collector()
        client.open_stream("tcp", "127.0.0.1:1").attach(reader)
        self.net.flush()
        self.successResultOf(reader.done)
        self.assertTrue(reader.reason.check(StreamError))
        self.assertIn("not allowed", reader.reason.getErrorMessage())
        self.assertTrue(site.server.has_session("foo"))

    def test_client_dial_allowed(self):
        """With a client-connect authorizer, the client reaches targets near the server."""
        net = self.net
        target = net.listen(Factory.forProtocol(Echo))
        site = net.serve_tunnel(client_connect_authorizer=allow_patterns([f"tcp/{target.address}"]))
        client = net.client(site.url)
        net.result(client.when_connected())
        reader = Collector()
        stream = client.open_stream("tcp", target.address)
        self.assertGreaterEqual(stream.conn_id, 1 << 48)
        stream.attach(reader)
        stream.write(b"ping")
        net.flush()
        self.assertEqual(reader.received, 4)
        stream.loseConnection()
        net.flush()
        self.assertEqual(self.successResultOf(reader.done), b"ping")


class OnConnectTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)
        self.site = self.net.serve_tunnel()

    def test_on_connect_hook(self):
        """The hook runs with the session each time the tunnel opens."""
        seen = []
        client = self.net.client(self.site.url, on_connect=seen.append, retry_policy=lambda attempt: 0.2)
        self.net.result(client.when_connected())
        self.assertEqual(seen, [client.session])
        self.site.server.sessions.local_session("foo")._drop()
        self.net.run(0.2)
        self.assertIsNotNone(client.session)
        self.assertEqual(seen, [seen[0], client.session])
        self.assertIsNot(seen[1], seen[0])

    def test_failing_hook_drops_tunnel(self):
        """A hook that fails drops the tunnel; it is retried."""
        calls = []

        def hook(session):
            calls.append(session)
            raise RuntimeError("not ready")

        client = self.net.client(self.site.url, on_connect=hook, retry_policy=lambda attempt: 0.1)
        self.net.flush()
        self.assertEqual(len(calls), 1)
        self.assertIsNone(client.session)
        self.assertFalse(self.site.server.has_session("foo"))
        self.net.run(0.15)
        self.assertEqual(len(calls), 2)
        self.assertIsNot(calls[1], calls[0])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)


class BackoffTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)
        self.site = self.net.serve_tunnel()

    def test_refused_upgrade_backs_off(self):
        """A server that refuses the upgrade (401) is retried with a growing attempt count."""
        attempts = []

        def policy(attempt):
            attempts.append(attempt)
            return 0.05

        client = self.net.client(self.site.url, key=None, retry_policy=policy)  # no X-Tunnel-ID: refused
        self.net.run(0.175)
        self.assertEqual(attempts, [1, 2, 3, 4])
        self.assertEqual(self.site.listener.accepted, 4)
        self.assertIsNone(client.session)

    def test_failing_hook_backs_off(self):
        """A tunnel dropped by a failing on-connect hook is retried with a growing attempt count."""
        attempts = []

        def policy(attempt):
            attempts.append(attempt)
            return 0.05

        def hook(session):
            raise RuntimeError("not ready")

        self.net.client(self.site.url, on_connect=hook, retry_policy=policy)
        self.net.run(0.175)
        self.assertEqual(attempts, [1, 2, 3, 4])
        self.flushLoggedErrors(RuntimeError)

    def test_default_backoff_capped(self):
        """The default retry policy starts near 1 s and never waits past RETRY_MAX (10 s)."""
        from remotedialer import TunnelClient, allow_all
        from remotedialer.client._client import RETRY_MAX

        client = TunnelClient("ws://127.0.0.1:9/connect", connect_authorizer=allow_all,
                              reactor=self.net.reactor)
        policy = client._retry_policy
        self.assertTrue(all(0.5 <= policy(1) <= 1.0 for _ in range(50)))  # the first retry within 1 s
        self.assertTrue(all(policy(n) <= RETRY_MAX for n in range(1, 60) for _ in range(10)))
        self.assertEqual(RETRY_MAX, 10.0)

