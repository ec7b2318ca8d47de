"""
Who may use the front door (FrontDoorAccess): loopback callers only by
default, callers anywhere with a listed Proxy-Authorization bearer token,
or anyone when opened; targets that are the server's own listeners refused.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._auth import hash_token


def request(host: str, proxy_authorization: bytes | None = None, v6: bool = False) -> DummyRequest:
    r = DummyRequest([b"foo", b"http", b"10.0.0.5:80"])
    r.client = (IPv6Address if v6 else IPv4Address)("TCP", host, 50000)
    if proxy_authorization is not None:
        r.requestHeaders.setRawHeaders(b"Proxy-Authorization", [proxy_authorization])
    return r


class AccessTests(SynchronousTestCase):
    def test_default_loopback_only(self) -> None:
        access = FrontDoorAccess()
        self.assertIsNone(access.refusal(request("127.0.0.1")))
        self.assertIsNone(access.refusal(request("127.5.6.7")))
        self.assertIsNone(access.refusal(request("::1", v6=True)))
        # A dual-stack listener's local IPv4 caller (ipaddress: not loopback before 3.13).
        self.assertIsNone(access.refusal(request("::ffff:127.0.0.1", v6=True)))
        self.assertEqual(access.refusal(request("::ffff:10.1.2.3", v6=True))[0], 403)
        code, text = access.refusal(request("10.1.2.3"))
        self.assertEqual(code, 403)
        self.assertIn("only loopback callers", text)

    def test_open(self) -> None:
        self.assertIsNone(FrontDoorAccess(open=True).refusal(request("203.0.113.9")))

    def test_tokens(self) -> None:
        access = FrontDoorAccess(token_hashes=frozenset({bytes.fromhex(hash_token("t0ken"))}))
        self.assertIsNone(access.refusal(request("203.0.113.9", b"Bearer t0ken")))
        for value in (None, b"Bearer wrong", b"Basic dDBrZW4=", b"Bearer "):
            code, _ = access.refusal(request("203.0.113.9", value))
            self.assertEqual(code, 407, value)
        # With tokens configured, loopback callers need one too.
        self.assertEqual(access.refusal(request("127.0.0.1"))[0], 407)

    def test_nested_into_itself(self) -> None:
        access = FrontDoorAccess(own_ports=frozenset({8123}))
        for target in ("127.0.0.1:8123", "localhost:8123", "[::1]:8123", "127.1.1.1:8123"):
            self.assertTrue(access.nested(target), target)
        for target in ("127.0.0.1:8125", "10.0.0.5:8123", "kubernetes:6443", "nonsense"):
            self.assertFalse(access.nested(target), target)
