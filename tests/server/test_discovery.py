"""
Peer discovery through DNS (remotedialer/server/_discovery.py): a twisted.names
zone in memory whose records the tests change between checks -- asked
directly on a Clock, and served by a real twisted.names DNS server on a
random UDP port of 127.0.0.1 that a twisted.names client resolver asks.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.names import authority, dns
from twisted.names.error import DNSServerError
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from remotedialer import Server
from remotedialer._tap import server as server_tap
from remotedialer.server._discovery import PeerDiscovery, peer_address
from tests.ops.test_logging import capture, lines

ZONE = b"peers.test"
NAME = "remotedialer.peers.test"
OWN = "10.0.0.1:8123"


class MemoryZone(authority.FileAuthority):
    """A zone whose records are set in code (FileAuthority's loadFile fills soa and records)."""

    def __init__(self) -> None:
        super().__init__(ZONE)

    def loadFile(self, zone: bytes) -> None:
        self.soa = (zone, dns.Record_SOA(mname=b"ns." + zone, rname=b"admin." + zone, serial=1,
                                         refresh=60, retry=60, expire=60, minimum=0, ttl=0))
        self.records = {zone: [self.soa[1]]}

    def set(self, name: str, addresses: list[str] | None) -> None:
        """C{name} has these A/AAAA records (None: the name does not exist)."""
        key = name.encode().lower()
        if addresses is None:
            self.records.pop(key, None)
            return
        self.records[key] = [dns.Record_AAAA(a, ttl=0) if ":" in a else dns.Record_A(a, ttl=0)
                             for a in addresses]


class _Failing:
    """A resolver whose every lookup fails as a broken DNS server's would."""

    def lookupAddress(self, name, timeout=None):
        return defer.fail(DNSServerError("SERVFAIL"))

    lookupIPV6Address = lookupAddress


def _server(clock, peer_id=OWN) -> Server:
    return Server(reactor=clock, peer_id=peer_id, peer_token="shared")


class DiscoveryTests(SynchronousTestCase):
    """The zone asked directly, checks driven by a Clock."""

    def setUp(self):
        self.clock = Clock()
        self.zone = MemoryZone()
        self.server = _server(self.clock)
        self.events = capture(self)

    def discovery(self, resolver=None, **kwargs):
        discovery = PeerDiscovery(self.server, NAME, 8123, "shared", resolver=resolver or self.zone,
                                  interval=5.0, clock=self.clock, **kwargs)
        discovery.startService()
        self.addCleanup(discovery.stopService)
        return discovery

    def test_replicas_come_and_go(self):
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.2", "fd00::3"])
        discovery = self.discovery()
        # Our own address is skipped; IPv6 ids and URLs are bracketed.
        self.assertEqual(self.server.peers, {"10.0.0.2:8123": "ws://10.0.0.2:8123/connect",
                                             "[fd00::3]:8123": "ws://[fd00::3]:8123/connect"})
        self.assertEqual(self.server._peer_tokens["10.0.0.2:8123"], "shared")
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.4"])  # 2 and 3 went, 4 came
        self.clock.advance(4.9)
        self.assertEqual(set(self.server.peers), {"10.0.0.2:8123", "[fd00::3]:8123"})  # not checked yet
        self.clock.advance(0.1)
        self.assertEqual(set(self.server.peers), {"10.0.0.4:8123"})
        self.assertEqual(discovery.peers, {"10.0.0.4:8123"})
        self.assertEqual(len(lines(self.events, "gone from")), 2)
        self.assertEqual(len(lines(self.events, "found in")), 3)

    def test_a_failing_apply_does_not_stop_the_checks(self):
        """An unexpected error applying an answer is logged; the next check runs all the same."""
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.2"])
        add_peer, calls = self.server.add_peer, []

        def failing_once(*args):
            calls.append(args)
            if len(calls) == 1:
                raise RuntimeError("boom")
            return add_peer(*args)

        self.server.add_peer = failing_once
        discovery = self.discovery()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.server.peers, {})
        self.clock.advance(5.0)
        self.assertEqual(set(self.server.peers), {"10.0.0.2:8123"})
        self.assertEqual(discovery.peers, {"10.0.0.2:8123"})

    def test_other_peers_left_alone(self):
        self.server.add_peer("static", "t", "ws://10.9.9.9:8123/connect")
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.2"])
        self.discovery()
        self.zone.set(NAME, ["10.0.0.1"])
        self.clock.advance(5.0)
        self.assertEqual(set(self.server.peers), {"static"})

    def test_no_such_name_means_no_replicas(self):
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.2"])
        self.discovery()
        self.assertEqual(set(self.server.peers), {"10.0.0.2:8123"})
        self.zone.set(NAME, None)
        self.clock.advance(5.0)
        self.assertEqual(self.server.peers, {})

    def test_failed_lookup_keeps_peers_and_logs_once(self):
        self.zone.set(NAME, ["10.0.0.1", "10.0.0.2"])
        discovery = self.discovery()
        discovery.resolver = _Failing()
        self.clock.advance(5.0)
        self.clock.advance(5.0)
        self.assertEqual(set(self.server.peers), {"10.0.0.2:8123"})
        self.assertEqual(len(lines(self.events, "failed")), 1)
        discovery.resolver = self.zone
        self.clock.advance(5.0)
        self.assertEqual(len(lines(self.events, "works again")), 1)

    def test_own_id_missing_is_warned_once(self):
        self.server = _server(self.clock, peer_id="me")
        self.zone.set(NAME, ["10.0.0.2"])
        self.discovery()
        self.clock.advance(10.0)
        self.assertEqual(len(lines(self.events, "does not list this server's peer id")), 1)

    def test_url_template(self):
        self.zone.set(NAME, ["10.0.0.2", "fd00::3"])
        self.discovery(url_template="wss://{host}:{port}/tunnel")
        self.assertEqual(self.server.peers, {"10.0.0.2:8123": "wss://10.0.0.2:8123/tunnel",
                                             "[fd00::3]:8123": "wss://[fd00::3]:8123/tunnel"})

    def test_slow_lookup_not_doubled(self):
        pending = []

        class _Slow:
            def lookupAddress(self, name, timeout=None):
                d = defer.Deferred()
                pending.append(d)
                return d

            lookupIPV6Address = lookupAddress

        self.discovery(resolver=_Slow())
        self.clock.advance(15.0)
        self.assertEqual(len(pending), 2)  # one check (A and AAAA) still running

    def test_peer_address(self):
        self.assertEqual(peer_address("10.1.2.3", 1), "10.1.2.3:1")
        self.assertEqual(peer_address("fd00::1", 2), "[fd00::1]:2")


class PeersDnsOptionsTests(SynchronousTestCase):
    BASE = ["--insecure-any-client", "--token", "t"]

    def parse(self, argv):
        options = server_tap.Options()
        options.parseOptions(self.BASE + argv)
        return options

    def test_good(self):
        options = self.parse(["--id", "10.0.0.1:8123", "--peers-dns", "rd-peers.ns.svc.cluster.local:8123",
                              "--peers-dns-server", "127.0.0.1:5353", "--peers-dns-interval", "2"])
        self.assertEqual(options["peers_dns"],
                         ("rd-peers.ns.svc.cluster.local", 8123, [("127.0.0.1", 5353)]))
        top = server_tap.makeService(options)
        [discovery] = [s for s in top.server if isinstance(s, PeerDiscovery)]
        self.assertEqual((discovery.dns_name, discovery.port, discovery.interval),
                         ("rd-peers.ns.svc.cluster.local", 8123, 2.0))
        self.parse(["--id", "[fd00::1]:8123", "--peers-dns", "n:8123"])

    def test_mistakes(self):
        cases = [
            (["--id", "10.0.0.1:8123", "--peers-dns", "name"], "--peers-dns 'name' is not NAME:PORT"),
            (["--id", "10.0.0.1:8123", "--peers-dns", "name:0"], "is not NAME:PORT"),
            (["--id", "me", "--peers-dns", "name:8123"], "must be this server's address"),
            (["--id", "fd00::1:8123", "--peers-dns", "name:8123"], "must be this server's address"),
            (["--id", "10.0.0.1:8123", "--peers-dns", "n:1", "--peers-dns-interval", "0"],
             "--peers-dns-interval"),
            (["--id", "10.0.0.1:8123", "--peers-dns", "n:1", "--peers-dns-url", "http://{address}/"],
             "--peers-dns-url"),
            (["--id", "10.0.0.1:8123", "--peers-dns", "n:1", "--peers-dns-url", "ws://{nope}/"],
             "--peers-dns-url"),
            (["--id", "10.0.0.1:8123", "--peers-dns", "n:1", "--peers-dns-server", "dns.example:53"],
             "--peers-dns-server"),
        ]
        for argv, expected in cases:
            with self.assertRaises(usage.UsageError) as caught:
                self.parse(argv)
            self.assertIn(expected, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))

    def test_needs_id_and_token(self):
        options = server_tap.Options()
        with self.assertRaises(usage.UsageError) as caught:
            options.parseOptions(["--insecure-any-client", "--id", "10.0.0.1:1", "--peers-dns", "n:1"])
        self.assertIn("--peers-dns needs --id", str(caught.exception))
