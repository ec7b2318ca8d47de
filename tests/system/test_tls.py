"""
TLS through tunnel streams, end to end on loopback against a local TLS
server whose certificate only a test CA vouches for: wrapClientTLS over
Server.endpoint, treq/Agent from the server with a TLS policy, and a
client-initiated stream over TLS.  A stream must carry the TLS wrapper
unchanged: its connectionLost never re-enters the wrapper from inside
loseConnection, and what the wrapper calls on a TCP transport exists.
"""

from __future__ import annotations

import os

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import serverFromString, wrapClientTLS
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.trial.unittest import TestCase
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from remotedialer import TunnelClient, allow_all
from tests.support import Collector, Echo, TunnelHarness, eventually, self_signed_certificate


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class _Greeter(Protocol):
    """Writes a line as soon as TLS is up and closes when it is echoed back."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def connectionMade(self) -> None:
        self.transport.write(b"hello over TLS\n")

    def dataReceived(self, data: bytes) -> None:
        self.collector.dataReceived(data)
        if self.collector.received >= 15:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.collector.connectionLost(reason)


class TLSThroughTunnelTests(TestCase):
    timeout = 30

    async def _tls_target(self, factory):
        """A TLS server on 127.0.0.1 with a certificate of a test CA; (port, trust root)."""
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        port = await serverFromString(
            reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}").listen(factory)
        self.addCleanup(port.stopListening)
        with open(cert, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        return port.getHost().port, trust

    async def _harness(self, **server_kwargs):
        harness = TunnelHarness(self, **server_kwargs)
        await harness.start()
        client = await harness.connect_client("foo")
        return harness, client

    def test_wrap_client_tls_over_server_endpoint(self):
        """wrapClientTLS over Server.endpoint: handshake verified, echo, clean close."""

        async def go():
            harness, _ = await self._harness()
            port, trust = await self._tls_target(Factory.forProtocol(Echo))
            endpoint = wrapClientTLS(
                optionsForClientTLS("localhost", trustRoot=trust),
                harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port}"),
            )
            collector = Collector()
            await endpoint.connect(Factory.forProtocol(lambda: _Greeter(collector)))
            data = await collector.done
            self.assertEqual(data, b"hello over TLS\n")
            self.assertTrue(collector.reason.check(ConnectionDone), collector.reason)
            await eventually(lambda: not harness.server.sessions.local_session("foo").streams)

        return run(go())

    def test_wrong_ca_fails_handshake(self):
        """A target certificate the trust root does not vouch for ends the connection."""

        async def go():
            harness, _ = await self._harness()
            port, _ = await self._tls_target(Factory.forProtocol(Echo))
            other_dir = self.mktemp()
            os.makedirs(other_dir)
            other_cert, _ = self_signed_certificate(other_dir)
            with open(other_cert, "rb") as f:
                other = Certificate.loadPEM(f.read())
            endpoint = wrapClientTLS(
                optionsForClientTLS("localhost", trustRoot=other),
                harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port}"),
            )
            collector = Collector()
            await endpoint.connect(Factory.forProtocol(lambda: _Greeter(collector)))
            await collector.done
            self.assertFalse(collector.reason.check(ConnectionDone))
            self.assertEqual(collector.received, 0)

        return run(go())

    def test_treq_agent_with_tls_policy(self):
        """
        Server.http_client (treq over the tunnel agent) with a policy trusting
        the test CA: an HTTPS GET.
        """

        async def go():
            harness, _ = await self._harness()
            root = Resource()
            root.putChild(b"version", Data(b'{"gitVersion": "v1.31.0"}', "application/json"))
            port, trust = await self._tls_target(Site(root))
            http = harness.server.http_client("foo", tls_policy=BrowserLikePolicyForHTTPS(trust))
            response = await http.get(f"https://localhost:{port}/version".encode())
            self.assertEqual(response.code, 200)
            body = await treq.content(response)
            self.assertEqual(body, b'{"gitVersion": "v1.31.0"}')

        return run(go())

    def test_client_initiated_stream_over_tls(self):
        """A client dialing the server's side (where allowed) runs TLS the same way."""

        async def go():
            harness, _ = await self._harness(client_connect_authorizer=allow_all)
            client: TunnelClient = harness.clients[0]
            port, trust = await self._tls_target(Factory.forProtocol(Echo))
            endpoint = wrapClientTLS(
                optionsForClientTLS("localhost", trustRoot=trust),
                client.endpoint("tcp", f"127.0.0.1:{port}"),
            )
            collector = Collector()
            await endpoint.connect(Factory.forProtocol(lambda: _Greeter(collector)))
            data = await collector.done
            self.assertEqual(data, b"hello over TLS\n")
            self.assertTrue(collector.reason.check(ConnectionDone), collector.reason)

        return run(go())


