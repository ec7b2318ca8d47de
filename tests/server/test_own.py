"""
The server's own listeners (server._own.OwnListeners): one rule by port
bound and by address in any spelling (the spellings table the client's dial
rules read too), for listeners on loopback, on every interface and on one
address; this host's names and addresses are given, never looked up.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from remotedialer.server._own import OwnListeners
from tests.protocol.test_addresses import LOOPBACK_SPELLINGS, SPELLINGS

HOST_NAMES = ["node-1"]
HOST_ADDRESSES = ["192.0.2.10", "2001:db8::10", "127.0.1.1"]


def listeners(*bound: tuple[str, int]) -> OwnListeners:
    own = OwnListeners(HOST_NAMES, HOST_ADDRESSES)
    for host, port in bound:
        own.add(host, port)
    return own


class OwnListenersTests(SynchronousTestCase):
    def test_every_spelling_of_loopback(self):
        own = listeners(("127.0.0.1", 8123))
        for spelling in LOOPBACK_SPELLINGS:
            with self.subTest(spelling=spelling):
                self.assertTrue(own.holds(spelling, 8123))
                self.assertFalse(own.holds(spelling, 8124))
                host = f"[{spelling}]" if ":" in spelling else spelling
                self.assertTrue(own.holds_address(f"{host}:8123"))

    def test_table(self):
        own = listeners(("127.0.0.1", 8123), ("0.0.0.0", 9125), ("::", 6443), ("192.0.2.10", 1080),
                        ("", 8124))
        # (host, port, own)
        table = [
            # A loopback listener: any loopback address or name, or the unspecified address.
            ("127.0.0.1", 8123, True), ("[::1]", 8123, True), ("::1", 8123, True),
            ("localhost", 8123, True), ("LocalHost.", 8123, True), ("app.localhost", 8123, True),
            ("ip6-localhost", 8123, True), ("0.0.0.0", 8123, True), ("0", 8123, True), ("::", 8123, True),
            ("node-1", 8123, True),  # (this host's name resolves to 127.0.1.1 here: loopback)
            ("192.0.2.10", 8123, False), ("10.0.0.5", 8123, False), ("kubernetes", 8123, False),
            # Every interface (0.0.0.0, ::, empty): any address of this host, in any spelling.
            ("192.0.2.10", 9125, True), ("3221225994", 9125, True), ("0xc0.0.2.10", 9125, True),
            ("::ffff:192.0.2.10", 9125, True), ("2001:db8::10", 6443, True), ("192.0.2.10", 6443, True),
            ("node-1", 9125, True), ("NODE-1.", 6443, True), ("127.0.0.1", 8124, True),
            ("192.0.2.10", 8124, True), ("0x7f.1", 6443, True),
            ("192.0.2.11", 9125, False), ("10.0.0.5", 6443, False), ("node-2", 9125, False),
            # One address: that address (any spelling), or the unspecified address.
            ("192.0.2.10", 1080, True), ("0xc000020a", 1080, True), ("0.0.0.0", 1080, True),
            ("127.0.0.1", 1080, False), ("localhost", 1080, False), ("192.0.2.11", 1080, False),
            # Not our ports.
            ("127.0.0.1", 80, False), ("0.0.0.0", 443, False),
        ]
        for host, port, expected in table:
            with self.subTest(host=host, port=port):
                self.assertEqual(own.holds(host, port), expected)

    def test_other_addresses_are_never_own(self):
        """No spelling of an address that is not this host's is one of ours, whatever port it names."""
        own = listeners(("0.0.0.0", 8123))
        for spelling, canonical in SPELLINGS:
            if canonical in ("10.0.0.5", "10.0.0.1", "192.168.0.1", "fd00::1", "255.255.255.255"):
                self.assertFalse(own.holds(spelling, 8123), spelling)

    def test_listeners_join_as_they_bind(self):
        """A listener on port 0 is no listener until it has bound; then it is one by its port."""
        own = OwnListeners()
        own.add("127.0.0.1", 0)
        self.assertEqual(own.ports, frozenset())
        self.assertFalse(own.holds("127.0.0.1", 0))
        own.add("127.0.0.1", 40123)
        self.assertEqual(own.ports, frozenset({40123}))
        self.assertTrue(own.holds("0x7f.1", 40123))
        self.assertIn("127.0.0.1:40123", repr(own))

    def test_interfaces_as_described(self):
        """An interface= given as a name: loopback if a loopback name, else every interface."""
        own = listeners(("localhost", 8123), ("node-1", 9125))
        self.assertTrue(own.holds("127.0.0.1", 8123))
        self.assertFalse(own.holds("192.0.2.10", 8123))
        self.assertTrue(own.holds("192.0.2.10", 9125))

    def test_without_host_addresses(self):
        """Nothing known of this host: a listener on every interface is known at loopback only."""
        own = OwnListeners()
        own.add("0.0.0.0", 8123)
        self.assertTrue(own.holds("127.1", 8123))
        self.assertFalse(own.holds("192.0.2.10", 8123))
        self.assertFalse(own.holds("node-1", 8123))

    def test_not_an_address(self):
        own = listeners(("127.0.0.1", 8123))
        for text in ("nonsense", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999", "::1:8123", ""):
            self.assertFalse(own.holds_address(text), text)
