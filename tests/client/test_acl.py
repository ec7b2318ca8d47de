"""
Dial rules (remotedialer.client._acl) and the dials made under them
(remotedialer.client._dialer.ACLDialer): tables of tricky rules and targets, and a
fake resolver on a MemoryReactorClock (no real DNS, nothing real dialed).
"""

from __future__ import annotations

import ipaddress

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from remotedialer.client._acl import DialACL, canonical_host, parse_rule
from remotedialer.client._dialer import ACLDialer, LocalDialer, allow_all, allow_patterns
from remotedialer.protocol._exceptions import DialRefused
from tests.protocol.test_addresses import LOOPBACK_SPELLINGS, SPELLINGS

# (rule, fragment of the one-line ValueError)
PARSE_ERRORS = [
    ("tcp/10.0.0.*:443", "use a CIDR range such as 10.0.0.0/24"),
    ("tcp/10.0.*.1:443", "CIDR"),
    ("tcp/*:443", "'*' is not a host"),
    ("tcp/a*.example.com:443", "whole first label"),
    ("tcp/*.*.example.com:443", "whole first label"),
    ("tcp/db?.internal:5432", "glob patterns are gone"),
    ("tcp/[a-z].internal:80", "not glob classes"),
    ("tcp/*.10.0.0.1:80", "not an address"),
    ("tcp/10.0.0.1/24:443", "did you mean 10.0.0.0/24"),
    ("tcp/10.0.0.0/33:443", "not an IP address or CIDR range"),
    ("tcp/0177.0.0.1:22", "write 127.0.0.1"),
    ("tcp/2130706433:22", "write 127.0.0.1"),
    ("tcp/0.0.0.0:80", "never dialed"),
    ("tcp/[::]:80", "never dialed"),
    ("tcp/::1:8080", "need brackets"),
    ("tcp/[::1]", "not [IPv6]:port"),
    ("tcp/[::1:80", "closing ']'"),
    ("tcp/[10.0.0.1]:80", "brackets are for IPv6"),
    ("tcp/[fe80::1%eth0]:80", "zones"),
    ("tcp4/[::1]:80", "tcp4 rule for an IPv6"),
    ("tcp6/10.0.0.1:80", "tcp6 rule for an IPv4"),
    ("udp/10.0.0.1:53", "unknown proto 'udp'"),
    ("10.0.0.1:443", "not proto/host:port"),
    ("tcp/10.0.0.1", "not host:port"),
    ("tcp/10.0.0.1:", "bad port ''"),
    ("tcp/10.0.0.1:0", "out of range"),
    ("tcp/10.0.0.1:65536", "out of range"),
    ("tcp/10.0.0.1:100-99", "backwards"),
    ("tcp/10.0.0.1:80,,443", "bad port ''"),
    ("tcp/10.0.0.1:+80", "bad port '+80'"),
    ("tcp/10.0.0.1:\u0664\u0664\u0663", "bad port"),  # Arabic-Indic 443
    ("tcp/10.0.0.256:80", "neither an IP address nor a valid host name"),
    ("tcp/bad_host!:80", "valid host name"),
    ("tcp/b\u00fccher.example:80", "xn--"),
    ("tcp/:80", "not host:port"),
    ("unix/", "socket path"),
]

ANY_LOOPBACK = ["tcp/127.0.0.1:*"]

# (rules, proto, host, port, allowed): DialACL.match on the text of a target.
MATCHES = [
    # CIDR ranges, not globs.
    (["tcp/10.0.0.0/24:443"], "tcp", "10.0.0.7", 443, True),
    (["tcp/10.0.0.0/24:443"], "tcp", "10.0.0.255", 443, True),
    (["tcp/10.0.0.0/24:443"], "tcp", "10.0.1.1", 443, False),
    (["tcp/10.0.0.0/24:443"], "tcp", "10.0.0.evil.example.com", 443, False),
    (["tcp/10.0.0.0/24:443"], "tcp", "10.0.0.7", 444, False),
    (["tcp/10.0.0.0/24:443"], "tcp", "10.0.0.7:443", 443, False),
    (["tcp/10.0.0.0/8:*"], "tcp", "012.0.0.1", 22, True),  # octal 012 is 10
    (["tcp/10.0.0.0/8:*"], "tcp", "12.0.0.1", 22, False),
    # IPv6 literals, bracketed, in any spelling.
    (["tcp/[::1]:8080"], "tcp", "::1", 8080, True),
    (["tcp/[::1]:8080"], "tcp", "0:0:0:0:0:0:0:1", 8080, True),
    (["tcp/[::1]:8080"], "tcp", "::2", 8080, False),
    (["tcp/[::1]:8080"], "tcp", "127.0.0.1", 8080, False),
    (["tcp/[fd00::/8]:443"], "tcp", "fd12:3456::1", 443, True),
    (["tcp/[fd00::/8]:443"], "tcp", "fe00::1", 443, False),
    (["tcp/[::1]:8080"], "tcp", "fe80::1%eth0", 8080, False),
    # One address, many spellings.
    (ANY_LOOPBACK, "tcp", "0177.0.0.1", 22, True),
    (ANY_LOOPBACK, "tcp", "2130706433", 22, True),
    (ANY_LOOPBACK, "tcp", "0x7f.0.0.1", 22, True),
    (ANY_LOOPBACK, "tcp", "0x7f.1", 22, True),
    (ANY_LOOPBACK, "tcp", "127.1", 22, True),
    (ANY_LOOPBACK, "tcp", "::ffff:127.0.0.1", 22, True),
    (ANY_LOOPBACK, "tcp", "::ffff:7f00:1", 22, True),
    (ANY_LOOPBACK, "tcp", "127.0.0.2", 22, False),
    (ANY_LOOPBACK, "tcp", "0", 22, False),  # 0.0.0.0 (reaches this host): never
    (ANY_LOOPBACK, "tcp", "127.0.0.1 junk", 22, False),  # inet_aton would say 127.0.0.1
    (ANY_LOOPBACK, "tcp", "127.0.0.1\n", 22, False),
    (ANY_LOOPBACK, "tcp", "localhost", 22, False),  # a name: not an address rule's
    (ANY_LOOPBACK, "tcp4", "127.0.0.1", 22, True),
    (ANY_LOOPBACK, "tcp6", "127.0.0.1", 22, False),
    (ANY_LOOPBACK, "udp", "127.0.0.1", 22, False),
    (["tcp/[::ffff:10.0.0.0/104]:80"], "tcp", "10.1.2.3", 80, True),
    (["tcp/0.0.0.0/0:80"], "tcp", "0.0.0.0", 80, False),
    # Host names: whole names, without case or trailing dot.
    (["tcp/db.internal:5432"], "tcp", "db.internal", 5432, True),
    (["tcp/db.internal:5432"], "tcp", "DB.Internal", 5432, True),
    (["tcp/db.internal:5432"], "tcp", "db.internal.", 5432, True),
    (["tcp/DB.internal.:5432"], "tcp", "db.internal", 5432, True),
    (["tcp/db.internal:5432"], "tcp", "xdb.internal", 5432, False),
    (["tcp/db.internal:5432"], "tcp", "db.internal.evil.com", 5432, False),
    (["tcp/db.internal:5432"], "tcp", "\u212ab.internal", 5432, False),  # KELVIN SIGN lowers to k
    (["tcp/kb.internal:5432"], "tcp", "\u212ab.internal", 5432, False),
    (["tcp/db.internal:5432"], "tcp", "db.internal:5432", 5432, False),
    # A leading *. label wildcard: one or more whole labels.
    (["tcp/*.svc.cluster.local:443"], "tcp", "api.svc.cluster.local", 443, True),
    (["tcp/*.svc.cluster.local:443"], "tcp", "a.b.svc.cluster.local", 443, True),
    (["tcp/*.svc.cluster.local:443"], "tcp", "svc.cluster.local", 443, False),
    (["tcp/*.svc.cluster.local:443"], "tcp", "evilsvc.cluster.local", 443, False),
    (["tcp/*.svc.cluster.local:443"], "tcp", "api.svc.cluster.local.evil.com", 443, False),
    # Ports: lists and ranges, at their edges.
    (["tcp/10.0.0.1:80,443"], "tcp", "10.0.0.1", 80, True),
    (["tcp/10.0.0.1:80,443"], "tcp", "10.0.0.1", 443, True),
    (["tcp/10.0.0.1:80,443"], "tcp", "10.0.0.1", 81, False),
    (["tcp/10.0.0.1:8000-8100"], "tcp", "10.0.0.1", 7999, False),
    (["tcp/10.0.0.1:8000-8100"], "tcp", "10.0.0.1", 8000, True),
    (["tcp/10.0.0.1:8000-8100"], "tcp", "10.0.0.1", 8100, True),
    (["tcp/10.0.0.1:8000-8100"], "tcp", "10.0.0.1", 8101, False),
    (["tcp/10.0.0.1:22,8000-8100"], "tcp", "10.0.0.1", 22, True),
    (["tcp/10.0.0.1:1-65535"], "tcp", "10.0.0.1", 65535, True),
    # Protos.
    (["*/10.0.0.1:80"], "tcp6", "10.0.0.1", 80, False),
    (["*/10.0.0.1:80"], "tcp4", "10.0.0.1", 80, True),
    (["tcp4/db.internal:80"], "tcp6", "db.internal", 80, False),
    (["unix//run/app.sock"], "unix", "/run/app.sock", 0, True),
    (["unix//run/app.sock"], "unix", "/run//app.sock", 0, False),
    (["unix//run/app.sock"], "unix", "/run/app.sock/", 0, False),
    (["tcp/127.0.0.1:*"], "unix", "/run/app.sock", 0, False),
    ([], "tcp", "127.0.0.1", 80, False),
]


class ParseTests(SynchronousTestCase):
    def test_errors(self):
        """Each bad rule is a one-line ValueError naming the problem."""
        self.assertGreaterEqual(len(PARSE_ERRORS), 30)
        for text, fragment in PARSE_ERRORS:
            with self.subTest(rule=text):
                with self.assertRaises(ValueError) as caught:
                    parse_rule(text)
                message = str(caught.exception)
                self.assertIn(fragment, message)
                self.assertNotIn("\n", message)

    def test_good(self):
        for text in ["tcp/127.0.0.1:*", "tcp/10.0.0.0/8:443", "tcp/[::1]:8080", "tcp/[fd00::/8]:80,443",
                     "tcp/db.internal:5432", "tcp/*.svc.cluster.local:8000-8100", "*/10.0.0.1:1",
                     "tcp4/10.0.0.1:1", "tcp6/[::1]:1", "unix//run/docker.sock", "tcp/0.0.0.0/0:443",
                     "tcp/[::/0]:443", "tcp/_http._tcp.example.com:80"]:
            with self.subTest(rule=text):
                self.assertEqual(str(parse_rule(text)), text)

    def test_canonical(self):
        self.assertEqual(parse_rule("tcp/DB.Internal.:1").name, "db.internal")
        self.assertEqual(str(parse_rule("tcp/[::ffff:10.0.0.0/104]:1").network), "10.0.0.0/8")
        self.assertEqual(parse_rule("*/10.0.0.1:1").proto, "tcp")
        self.assertEqual(str(canonical_host("[::ffff:127.0.0.1]".strip("[]"))), "127.0.0.1")
        self.assertEqual(str(canonical_host("0x7F.0.0.1")), "127.0.0.1")
        self.assertEqual(canonical_host("Example.COM."), "example.com")


class MatchTests(SynchronousTestCase):
    def test_table(self):
        self.assertGreaterEqual(len(MATCHES), 30)
        for rules, proto, host, port, allowed in MATCHES:
            with self.subTest(rules=rules, target=f"{proto}/{host}:{port}"):
                self.assertEqual(DialACL(rules).match(proto, host, port), allowed)

    def test_as_authorizer(self):
        """Called as a connect-authorizer, a DialACL decides from the text of proto/address."""
        acl = allow_patterns(["tcp/127.0.0.1:*", "tcp/[::1]:8080", "unix//run/app.sock"])
        self.assertTrue(acl("tcp", "0177.0.0.1:22"))
        self.assertTrue(acl("tcp", "[0:0:0:0:0:0:0:1]:8080"))
        self.assertTrue(acl("unix", "/run/app.sock"))
        self.assertFalse(acl("tcp", "[::1]:8081"))
        self.assertFalse(acl("tcp", "127.0.0.1"))  # no port
        self.assertFalse(acl("tcp", "127.0.0.1:99999"))

    def test_bad_pattern_raises(self):
        self.assertRaises(ValueError, allow_patterns, ["tcp/10.0.0.*:443"])


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name):
        self.name = name

    def cancel(self):
        raise NotImplementedError()  # (as Twisted's own resolver)


@implementer(IHostnameResolver)
class FakeResolver:
    """C{hosts}: name -> addresses; records every query; C{hang} names never complete."""

    def __init__(self, hosts, hang=()):
        self.hosts = hosts
        self.hang = set(hang)
        self.queries = []
        self.pending = []

    def resolveHostName(self, receiver, hostName, portNumber=0, addressTypes=None,
                        transportSemantics="TCP"):
        self.queries.append((hostName, portNumber, addressTypes))
        resolution = _Resolution(hostName)
        receiver.resolutionBegan(resolution)
        if hostName in self.hang:
            self.pending.append(receiver)
            return resolution
        for host in self.hosts.get(hostName, []):
            address = IPv6Address("TCP", host, portNumber) if ":" in host else IPv4Address(
                "TCP", host, portNumber)
            receiver.addressResolved(address)
        receiver.resolutionComplete()
        return resolution


HOSTS = {
    "db.internal": ["10.0.0.5"],
    "DB.internal.": ["10.0.0.5"],
    "evil.example.com": ["10.0.0.5", "127.0.0.1"],
    "rebind.example.com": ["127.0.0.1"],
    "meta.example.com": ["169.254.169.254"],
    "mapped.example.com": ["::ffff:127.0.0.1"],
    "dual.internal": ["fd00::5", "10.0.0.5"],
    "localhost": ["127.0.0.1", "::1"],
    "api.svc.cluster.local": ["10.96.0.10"],
    "tenant.svc.cluster.local": ["127.0.0.1"],
    "ten.example.com": ["10.0.0.9"],
    "far.example.com": ["192.0.2.1"],
}


class DialTests(SynchronousTestCase):
    """What ACLDialer dials, exactly, and what it refuses."""

    def setUp(self):
        self.reactor = MemoryReactorClock()
        self.resolver = FakeResolver(HOSTS, hang={"slow.internal"})
        self.reactor.installNameResolver(self.resolver)

    def dialer(self, *rules):
        return LocalDialer(self.reactor, allow_patterns(rules), timeout=30)

    def dialed(self, dialer, proto, address):
        """The (endpoint, host, port) dialed for an allowed target."""
        endpoint = self.successResultOf(dialer.endpoint_for(proto, address))
        endpoint.connect(Factory.forProtocol(Protocol))
        host, port, *_ = self.reactor.tcpClients[-1]
        return endpoint, host, port

    def refused(self, dialer, proto, address, *fragments):
        dials = len(self.reactor.tcpClients)
        failure = self.failureResultOf(dialer.endpoint_for(proto, address), DialRefused)
        message = failure.getErrorMessage()
        self.assertNotIn("\n", message)
        self.assertIn(f"connect to {proto}/{address} not allowed: ", message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        self.assertEqual(len(self.reactor.tcpClients), dials)
        return message

    def test_shared_spellings_table(self):
        """
        The client reads every spelling as the server's own-listener rule does
        (the one table, tests/protocol/test_addresses.py): what the rules
        check and what is dialed is the table's canonical address.
        """
        dialer = self.dialer("tcp/0.0.0.0/0:*", "tcp/[::/0]:*")
        for spelling, canonical in SPELLINGS:
            if canonical is None or "%" in canonical or canonical in ("0.0.0.0", "::"):
                continue
            with self.subTest(spelling=spelling):
                self.assertEqual(str(canonical_host(spelling)), canonical)
                address = f"[{spelling.strip('[]')}]:22" if ":" in spelling else f"{spelling}:22"
                _, host, port = self.dialed(dialer, "tcp", address)
                self.assertEqual((host, port), (str(ipaddress.ip_address(canonical)), 22))
        for spelling in LOOPBACK_SPELLINGS:
            self.assertTrue(DialACL(["tcp/127.0.0.1:*"]).match("tcp", spelling, 22), spelling)

    def test_spellings_dialed_canonical(self):
        """An address in any spelling is checked and dialed as its canonical form, unresolved."""
        dialer = self.dialer("tcp/127.0.0.1:*", "tcp/[::1]:8080")
        for address, kind, host in [
            ("0177.0.0.1:22", TCP4ClientEndpoint, "127.0.0.1"),
            ("2130706433:22", TCP4ClientEndpoint, "127.0.0.1"),
            ("0x7f.0.0.1:22", TCP4ClientEndpoint, "127.0.0.1"),
            ("[::ffff:127.0.0.1]:22", TCP4ClientEndpoint, "127.0.0.1"),
            ("[0:0:0:0:0:0:0:1]:8080", TCP6ClientEndpoint, "::1"),
        ]:
            with self.subTest(address=address):
                endpoint, dialed_host, port = self.dialed(dialer, "tcp", address)
                self.assertIsInstance(endpoint, kind)
                self.assertEqual(dialed_host, host)
        self.assertEqual(self.resolver.queries, [])

    def test_address_refused(self):
        dialer = self.dialer("tcp/127.0.0.1:*")
        self.refused(dialer, "tcp", "127.0.0.2:22", "no rule allows 127.0.0.2 on port 22")
        self.refused(dialer, "tcp", "0:22", "0.0.0.0 is never dialed")
        self.refused(dialer, "tcp6", "127.0.0.1:22", "tcp6 cannot dial an IPv4")
        self.refused(dialer, "tcp", "127.0.0.1:notaport", "bad port")
        self.refused(dialer, "tcp", "[fe80::1%eth0]:22", "zones")
        self.refused(dialer, "tcp", "bad_host!:22", "valid host name")
        self.refused(dialer, "sctp", "127.0.0.1:22", "unsupported protocol 'sctp'")

    def test_name_dialed_as_its_address(self):
        """A name is resolved once and its checked address dialed as itself."""
        dialer = self.dialer("tcp/db.internal:5432")
        endpoint, host, port = self.dialed(dialer, "tcp", "DB.internal.:5432")
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        self.assertEqual((host, port), ("10.0.0.5", 5432))
        self.assertEqual(self.resolver.queries, [("DB.internal.", 5432, None)])

    def test_name_by_address_rule(self):
        """A name no rule names is allowed when its every address is."""
        dialer = self.dialer("tcp/10.0.0.0/24:443")
        endpoint, host, port = self.dialed(dialer, "tcp", "ten.example.com:443")
        self.assertEqual((host, port), ("10.0.0.9", 443))
        self.refused(dialer, "tcp", "far.example.com:443", "far.example.com resolves to 192.0.2.1",
                     "which no rule allows on port 443")

    def test_name_not_resolved_when_nothing_could_allow_it(self):
        dialer = self.dialer("tcp/10.0.0.0/24:443", "tcp/db.internal:5432")
        self.refused(dialer, "tcp", "ten.example.com:80", "no rule allows ten.example.com on port 80")
        self.refused(dialer, "tcp6", "ten.example.com:443", "no rule allows")
        self.assertEqual(self.resolver.queries, [])

    def test_name_resolving_to_forbidden_address(self):
        """A name an address rule would not allow, resolving (only) to loopback, is refused."""
        dialer = self.dialer("tcp/10.0.0.0/8:443")
        self.refused(dialer, "tcp", "rebind.example.com:443", "resolves to 127.0.0.1")
        self.refused(dialer, "tcp", "mapped.example.com:443", "resolves to 127.0.0.1")

    def test_one_forbidden_address_of_several(self):
        dialer = self.dialer("tcp/10.0.0.0/8:443")
        self.refused(dialer, "tcp", "evil.example.com:443", "evil.example.com resolves to 127.0.0.1")
        dialer = self.dialer("tcp/10.0.0.0/8:443")
        self.refused(dialer, "tcp", "dual.internal:443", "resolves to fd00::5")

    def test_name_rule_does_not_cover_loopback_or_link_local(self):
        """A name rule trusts DNS, but not to point the name at this host or the metadata address."""
        dialer = self.dialer("tcp/rebind.example.com:443", "tcp/meta.example.com:80",
                             "tcp/*.svc.cluster.local:443", "tcp/mapped.example.com:443")
        self.refused(dialer, "tcp", "rebind.example.com:443", "127.0.0.1, a loopback address")
        self.refused(dialer, "tcp", "meta.example.com:80", "169.254.169.254, a link-local address")
        self.refused(dialer, "tcp", "tenant.svc.cluster.local:443", "a loopback address")
        self.refused(dialer, "tcp", "mapped.example.com:443", "127.0.0.1, a loopback address")
        _, host, _ = self.dialed(dialer, "tcp", "api.svc.cluster.local:443")
        self.assertEqual(host, "10.96.0.10")

    def test_name_rule_with_address_rule_for_loopback(self):
        dialer = self.dialer("tcp/rebind.example.com:443", "tcp/127.0.0.1:443")
        _, host, _ = self.dialed(dialer, "tcp", "rebind.example.com:443")
        self.assertEqual(host, "127.0.0.1")

    def test_localhost(self):
        """localhost may resolve to loopback; the first address is dialed."""
        dialer = self.dialer("tcp/localhost:8080")
        endpoint, host, port = self.dialed(dialer, "tcp", "localhost:8080")
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        self.assertEqual((host, port), ("127.0.0.1", 8080))
        self.refused(dialer, "tcp", "localhost:8081", "no rule allows localhost on port 8081")

    def test_family_of_proto(self):
        """tcp6 asks for, and dials, IPv6 only; a tcp4 rule does not cover IPv6 addresses."""
        dialer = self.dialer("tcp/dual.internal:443")
        endpoint, host, _ = self.dialed(dialer, "tcp6", "dual.internal:443")
        self.assertIsInstance(endpoint, TCP6ClientEndpoint)
        self.assertEqual(host, "fd00::5")
        self.assertEqual(self.resolver.queries[-1][2], [IPv6Address])
        dialer = self.dialer("tcp4/dual.internal:443")
        self.refused(dialer, "tcp", "dual.internal:443", "resolves to fd00::5")

    def test_name_does_not_resolve(self):
        dialer = self.dialer("tcp/nowhere.internal:443")
        self.refused(dialer, "tcp", "nowhere.internal:443", "nowhere.internal does not resolve")

    def test_resolution_timeout(self):
        dialer = self.dialer("tcp/slow.internal:443")
        d = dialer.endpoint_for("tcp", "slow.internal:443")
        self.assertNoResult(d)
        self.reactor.advance(30)
        failure = self.failureResultOf(d, DialRefused)
        self.assertIn("resolving slow.internal took over 30 s", failure.getErrorMessage())
        [late] = self.resolver.pending
        late.addressResolved(IPv4Address("TCP", "127.0.0.1", 443))
        late.resolutionComplete()  # too late, and harmless
        self.assertEqual(self.reactor.tcpClients, [])

    def test_resolver_raises(self):
        def broken(*args, **kwargs):
            raise RuntimeError("no resolver today")

        self.resolver.resolveHostName = broken
        dialer = self.dialer("tcp/db.internal:5432")
        self.refused(dialer, "tcp", "db.internal:5432", "resolving db.internal failed: no resolver today")
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_unix(self):
        dialer = self.dialer("unix//run/app.sock", "tcp/127.0.0.1:*")
        endpoint = self.successResultOf(dialer.endpoint_for("unix", "/run/app.sock"))
        self.assertIsInstance(endpoint, UNIXClientEndpoint)
        self.refused(dialer, "unix", "/run/../run/app.sock", "socket path")
        self.refused(dialer, "unix", "/run/other.sock", "socket path")

    def test_direct_acl_dialer(self):
        """ACLDialer is an IDialPolicy of its own."""
        dialer = ACLDialer(self.reactor, DialACL(["tcp/[fd00::/8]:443"]))
        endpoint, host, _ = self.dialed(dialer, "tcp", "[fd00::1]:443")
        self.assertIsInstance(endpoint, TCP6ClientEndpoint)
        self.assertEqual(host, "fd00::1")

    def test_plain_authorizer_dials_canonical_address(self):
        """Under another authorizer, an odd spelling of an address is still dialed canonically."""
        dialer = LocalDialer(self.reactor, allow_all)
        endpoint, host, _ = self.dialed(dialer, "tcp", "0177.0.0.1:22")
        self.assertIsInstance(endpoint, TCP4ClientEndpoint)
        self.assertEqual(host, "127.0.0.1")
