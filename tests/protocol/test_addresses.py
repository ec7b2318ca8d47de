"""
The one reading of address spellings (protocol._addresses.canonical_address),
which the client's dial rules (tests/client/test_acl.py) and the server's
own-listener rule (tests/server/test_own.py) share through SPELLINGS; the
loopback rule; and which addresses may reach which listener.
"""

from __future__ import annotations

import ipaddress
import socket

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol._addresses import (
    canonical_address,
    is_loopback,
    is_loopback_name,
    may_reach,
    split_host_port,
)

#: (spelling, the canonical address it names, or None: not an address).
#: Shared: every reader of targets reads these so.
SPELLINGS = [
    # 127.0.0.1, as the C library's inet_aton (and so the client's dial) reads it.
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0X7F.1", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0x7F.0x0.0.0x1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.0.0.01", "127.0.0.1"),
    ("127.000.000.001", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),  # one trailing dot, as a URL's host parser reads it
    ("0x7f.1.", "127.0.0.1"),
    # IPv6, with or without brackets; IPv4-mapped is IPv4.
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("0:0:0:0:0:0:0:1", "::1"),
    ("[0000:0000:0000:0000:0000:0000:0000:0001]", "::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ("::FFFF:7f00:1", "127.0.0.1"),
    ("0:0:0:0:0:ffff:7f00:0001", "127.0.0.1"),
    ("::ffff:10.0.0.5", "10.0.0.5"),
    ("FD00::0001", "fd00::1"),
    ("fe80::1%eth0", "fe80::1%eth0"),
    ("::127.0.0.1", "::7f00:1"),  # IPv4-compatible: IPv6 as dialed (may_reach counts it as 127.0.0.1)
    # Other addresses in other spellings.
    ("0", "0.0.0.0"),
    ("0.0.0.0", "0.0.0.0"),
    ("0x0", "0.0.0.0"),
    ("::", "::"),
    ("[::]", "::"),
    ("10.1", "10.0.0.1"),
    ("012.0.0.5", "10.0.0.5"),
    ("167772165", "10.0.0.5"),
    ("0xa000005", "10.0.0.5"),
    ("192.168.1", "192.168.0.1"),
    ("255.255.255.255", "255.255.255.255"),
    # Not addresses.
    ("localhost", None),
    ("example.com", None),
    ("127.0.0.1..", None),
    ("127.0.0.1 x", None),
    ("127.0.0.1\x00", None),
    (" 127.0.0.1", None),
    ("256.0.0.1", None),
    ("4294967296", None),
    ("08", None),
    ("0x", None),
    ("127.0.0.0.1", None),
    ("1.2.3.4.5", None),
    ("::1.", None),
    ("[127.0.0.1", None),
    ("deadbeef", None),
    ("", None),
    (".", None),
]

#: Spellings of 127.0.0.1 alone (tests of the rules built on the reading).
LOOPBACK_SPELLINGS = [text for text, canonical in SPELLINGS if canonical == "127.0.0.1"]


def aton_spelling(address: int, parts: int, bases: list[str]) -> str:
    """C{address} as inet_aton reads C{parts} numbers (the last takes the remaining bytes)."""
    widths = [1] * (parts - 1) + [4 - (parts - 1)]
    numbers = []
    rest = address.to_bytes(4, "big")
    for width in widths:
        numbers.append(int.from_bytes(rest[:width], "big"))
        rest = rest[width:]
    texts = []
    for number, base in zip(numbers, bases, strict=False):
        texts.append({"d": str(number), "o": "0" + format(number, "o"), "x": hex(number),
                      "X": "0X" + format(number, "X")}[base])
    return ".".join(texts)


class CanonicalAddressTests(SynchronousTestCase):
    def test_table(self):
        self.assertGreaterEqual(len(LOOPBACK_SPELLINGS), 14)
        for text, canonical in SPELLINGS:
            with self.subTest(spelling=text):
                found = canonical_address(text)
                self.assertEqual(None if found is None else str(found), canonical)

    def test_the_c_library_agrees(self):
        """Every IPv4 spelling in the table is what this host's inet_aton reads (bar the one trailing dot)."""
        for text, canonical in SPELLINGS:
            if canonical is None or ":" in canonical + text or text.endswith("."):
                continue
            with self.subTest(spelling=text):
                self.assertEqual(str(ipaddress.IPv4Address(socket.inet_aton(text))), canonical)

    @given(st.integers(0, 2**32 - 1), st.integers(1, 4), st.lists(st.sampled_from("doxX"), min_size=4,
                                                                   max_size=4), st.booleans())
    def test_every_inet_aton_spelling(self, address, parts, bases, trailing_dot):
        text = aton_spelling(address, parts, bases) + ("." if trailing_dot else "")
        self.assertEqual(canonical_address(text), ipaddress.IPv4Address(address), text)

    @given(st.integers(0, 2**32 - 1), st.sampled_from(["::ffff:{v4}", "[::ffff:{v4}]", "::FFFF:{hex}",
                                                       "0:0:0:0:0:ffff:{hex}", "[0::ffff:{hex}]"]))
    def test_ipv4_mapped_is_ipv4(self, address, form):
        v4 = ipaddress.IPv4Address(address)
        text = form.format(v4=v4, hex=f"{address >> 16:x}:{address & 0xFFFF:x}")
        self.assertEqual(canonical_address(text), v4, text)

    @given(st.integers(0, 2**128 - 1))
    def test_ipv6_any_form(self, address):
        ip = ipaddress.IPv6Address(address)
        expected = ip.ipv4_mapped or ip
        for text in (ip.compressed, ip.exploded, ip.exploded.upper(), f"[{ip.compressed}]"):
            self.assertEqual(canonical_address(text), expected, text)

    @given(st.text(max_size=20))
    def test_anything_else_is_none_or_an_address(self, text):
        found = canonical_address(text)
        self.assertIn(type(found), (type(None), ipaddress.IPv4Address, ipaddress.IPv6Address))


class LoopbackTests(SynchronousTestCase):
    def test_loopback(self):
        for host in [*LOOPBACK_SPELLINGS, "127.5.6.7", "::1", "[::1]", "::1%lo", "localhost", "LOCALHOST",
                     "localhost.", "app.localhost", "ip6-localhost", "ip6-loopback", "0x7f.0x2.1"]:
            self.assertTrue(is_loopback(host), host)
        for host in ["10.0.0.5", "::ffff:10.0.0.5", "0.0.0.0", "::", "example.com", "127.example.com",
                     "localhost.example.com", "notlocalhost", "", "128.0.0.1"]:
            self.assertFalse(is_loopback(host), host)

    def test_names(self):
        self.assertTrue(is_loopback_name("Localhost."))
        self.assertFalse(is_loopback_name("127.0.0.1"))

    def test_split_host_port(self):
        self.assertEqual(split_host_port("[::ffff:127.0.0.1]:80"), ("::ffff:127.0.0.1", 80))
        self.assertEqual(split_host_port("0x7f.1:8123"), ("0x7f.1", 8123))


def ip(text: str):
    found = canonical_address(text)
    assert found is not None, text
    return found


class MayReachTests(SynchronousTestCase):
    HOST = [ip("192.0.2.10"), ip("2001:db8::10")]

    def test_table(self):
        # (target, bound, may reach)
        table = [
            ("127.0.0.1", "127.0.0.1", True),
            ("127.0.0.2", "127.0.0.1", True),  # (any loopback: erring on "may")
            ("::1", "127.0.0.1", True),
            ("127.0.0.1", "::1", True),
            ("0.0.0.0", "127.0.0.1", True),  # the unspecified address reaches this host
            ("::", "192.0.2.10", True),
            ("192.0.2.10", "127.0.0.1", False),
            ("127.0.0.1", "0.0.0.0", True),  # every interface
            ("192.0.2.10", "0.0.0.0", True),
            ("2001:db8::10", "::", True),
            ("192.0.2.10", "::", True),
            ("192.0.2.11", "0.0.0.0", False),  # another host
            ("10.0.0.5", "::", False),
            ("192.0.2.10", "192.0.2.10", True),  # the address bound
            ("127.0.0.1", "192.0.2.10", False),
            ("192.0.2.11", "192.0.2.10", False),
            ("::127.0.0.1", "127.0.0.1", True),  # IPv4-compatible: its IPv4 address too
            ("::c000:20a", "0.0.0.0", True),
            ("::1%lo", "127.0.0.1", True),
            ("fe80::1%eth0", "fe80::1", True),
        ]
        for target, bound, reaches in table:
            with self.subTest(target=target, bound=bound):
                self.assertEqual(may_reach(ip(target), ip(bound), self.HOST), reaches)

    def test_without_host_addresses_only_loopback_reaches_every_interface(self):
        self.assertTrue(may_reach(ip("127.0.0.1"), ip("0.0.0.0")))
        self.assertFalse(may_reach(ip("192.0.2.10"), ip("0.0.0.0")))
