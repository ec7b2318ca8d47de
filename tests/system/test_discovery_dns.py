"""
Peer discovery against a real DNS server on loopback UDP, records changed
between checks (the unit tests use an in-memory zone on a Clock).
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.names import client, dns, server
from twisted.trial.unittest import TestCase

from remotedialer.server._discovery import PeerDiscovery
from tests.server.test_discovery import NAME, MemoryZone, _server


class LoopbackDNSTests(TestCase):
    """A real DNS server on 127.0.0.1 and twisted.names' client asking it over UDP."""

    timeout = 20

    def setUp(self):
        self.zone = MemoryZone()
        factory = server.DNSServerFactory(authorities=[self.zone])
        factory.noisy = False
        protocol = dns.DNSDatagramProtocol(factory)
        self.port = reactor.listenUDP(0, protocol, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.resolver = client.Resolver(servers=[("127.0.0.1", self.port.getHost().port)], reactor=reactor)

    async def _records_changed(self):
        srv = _server(reactor)
        discovery = PeerDiscovery(srv, NAME, 8123, "shared", resolver=self.resolver, interval=60.0)
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.2", "fd00::7"])
        await discovery.check()
        self.assertEqual(set(srv.peers), {"10.0.0.2:8123", "[fd00::7]:8123"})
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.5"])
        await discovery.check()
        self.assertEqual(set(srv.peers), {"10.0.0.5:8123"})
        self.zone.set(NAME, None)  # NXDOMAIN over the wire
        await discovery.check()
        self.assertEqual(srv.peers, {})

    def test_records_changed_between_checks(self):
        return defer.Deferred.fromCoroutine(self._records_changed())
