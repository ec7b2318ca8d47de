"""
A tunnel's caller behind trusted proxies: X-Forwarded-For read from the
right, only as far as each hop is trusted; spoofed, malformed or untrusted
headers change nothing; the session, the logs and the limiter see the
caller (the server's site in memory).
"""

from __future__ import annotations

import base64

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from remotedialer import Server, ServerSite
from remotedialer.server._forwarded import TrustedProxies, parse_network
from remotedialer.server._ratelimit import FailureLimiter

INGRESS = "10.0.0.5"


def _request(peer, *forwarded: str) -> DummyRequest:  # type: ignore[no-untyped-def]
    request = DummyRequest([b""])
    request.client = peer
    if forwarded:
        request.requestHeaders.setRawHeaders(b"X-Forwarded-For", [f.encode() for f in forwarded])
    return request


class TrustedProxiesTests(SynchronousTestCase):
    proxies = TrustedProxies.parse(["10.0.0.0/8", "fd00::/8"])

    def caller(self, peer, *forwarded: str) -> str:  # type: ignore[no-untyped-def]
        return self.proxies.client_address(_request(peer, *forwarded)).host

    def test_one_hop(self) -> None:
        self.assertEqual(self.caller(IPv4Address("TCP", INGRESS, 1), "198.51.100.7"), "198.51.100.7")

    def test_chain_of_trusted_hops(self) -> None:
        """An Ingress behind a cloud balancer: both trusted; what the caller wrote stays unbelieved."""
        peer = IPv4Address("TCP", INGRESS, 1)
        self.assertEqual(self.caller(peer, "6.6.6.6, 198.51.100.7, 10.1.2.3"), "198.51.100.7")
        self.assertEqual(self.caller(peer, "6.6.6.6", "198.51.100.7", "10.1.2.3"), "198.51.100.7")  # lines
        self.assertEqual(self.caller(peer, "10.9.9.9, 10.1.2.3"), "10.9.9.9")  # all trusted: the leftmost

    def test_untrusted_peer_ignored(self) -> None:
        peer = IPv4Address("TCP", "203.0.113.1", 1)
        self.assertIs(self.proxies.client_address(_request(peer, "1.2.3.4")), peer)

    def test_garbage(self) -> None:
        peer = IPv4Address("TCP", INGRESS, 1)
        self.assertIs(self.proxies.client_address(_request(peer, "unknown")), peer)
        self.assertIs(self.proxies.client_address(_request(peer, "")), peer)
        self.assertIs(self.proxies.client_address(_request(peer)), peer)
        self.assertEqual(self.caller(peer, "evil\x1b[2J, 198.51.100.7"), "198.51.100.7")

    def test_forms(self) -> None:
        peer = IPv6Address("TCP", "fd00::1", 1)
        self.assertEqual(self.caller(peer, "2001:db8::9"), "2001:db8::9")
        self.assertEqual(self.caller(peer, "[2001:db8::9]:443"), "2001:db8::9")
        self.assertEqual(self.caller(peer, "198.51.100.7:5000"), "198.51.100.7")
        mapped = IPv6Address("TCP", "::ffff:10.0.0.5", 1)  # a dual-stack listener's IPv4 proxy
        self.assertEqual(self.caller(mapped, "198.51.100.7"), "198.51.100.7")
        self.assertIsInstance(self.proxies.client_address(_request(peer, "2001:db8::9")), IPv6Address)

    def test_nobody_trusted_by_default(self) -> None:
        peer = IPv4Address("TCP", INGRESS, 1)
        self.assertIs(TrustedProxies().client_address(_request(peer, "198.51.100.7")), peer)

    def test_parse(self) -> None:
        self.assertEqual(str(parse_network("10.1.2.3")), "10.1.2.3/32")
        self.assertEqual(str(parse_network(" 10.1.2.3/8 ")), "10.0.0.0/8")
        for bad in ("10.0.0.0/33", "ingress", ""):
            self.assertRaises(ValueError, parse_network, bad)


class ThroughTheServerTests(SynchronousTestCase):
    def upgrade(self, site: ServerSite, client_id: str, peer: str, forwarded: str | None) -> bytes:
        channel = site.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        transport.protocol = channel
        channel.makeConnection(transport)
        head = (b"GET /connect HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(b"0" * 16) + b"\r\n")
        if client_id:
            head += b"X-Tunnel-ID: " + client_id.encode() + b"\r\n"
        if forwarded:
            head += b"X-Forwarded-For: " + forwarded.encode() + b"\r\n"
        channel.dataReceived(head + b"\r\n")
        return transport.value()

    def test_session_and_limiter_see_the_caller(self) -> None:
        clock = Clock()
        limiter = FailureLimiter(clock)
        server = Server(reactor=clock, auth_limiter=limiter, trusted_proxies=["10.0.0.0/8"])
        root = Resource()
        root.putChild(b"connect", server.resource)
        site = ServerSite(root, reactor=clock)
        self.assertTrue(self.upgrade(site, "foo", INGRESS, "198.51.100.7").startswith(b"HTTP/1.1 101 "))
        self.assertTrue(self.upgrade(site, "bar", "203.0.113.1", "198.51.100.8").startswith(b"HTTP/1.1 101 "))
        self.assertEqual(server.sessions.local_session("foo").remote_addr, "198.51.100.7:0")
        self.assertEqual(server.sessions.local_session("bar").remote_addr, "203.0.113.1:40000")
        self.assertTrue(self.upgrade(site, "", INGRESS, "198.51.100.9").startswith(b"HTTP/1.1 401 "))
        self.assertEqual(list(limiter._addresses), ["198.51.100.9"])  # not the Ingress's address


class ClaimedIdTests(SynchronousTestCase):
    def test_ids(self) -> None:
        from remotedialer.server._resource import claimed_id

        def claim(**headers: bytes) -> str:
            request = DummyRequest([b""])
            for name, value in headers.items():
                request.requestHeaders.setRawHeaders(name.replace("_", "-").encode(), [value])
            return claimed_id(request)

        self.assertEqual(claim(X_Tunnel_ID=b"foo"), "foo")
        self.assertEqual(claim(X_API_Tunnel_ID=b"b", X_Tunnel_ID=b"foo"), "peer b")
        self.assertEqual(claim(), "")
        self.assertEqual(claim(X_Tunnel_ID=b"\xbc\xff"), "\ufffd\ufffd")  # not UTF-8: an id all the same
        self.assertEqual(claim(X_API_Tunnel_ID=b"\xbc"), "peer \ufffd")

    def test_not_utf8_through_the_resource(self) -> None:
        """An X-Tunnel-ID that is not UTF-8 gets the authorizer's answer, not a traceback (the fuzzer's)."""
        clock = Clock()
        server = Server(reactor=clock, auth_limiter=FailureLimiter(clock))
        root = Resource()
        root.putChild(b"connect", server.resource)
        channel = ServerSite(root, reactor=clock).buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "203.0.113.1", 40000))
        transport.protocol = channel
        channel.makeConnection(transport)
        channel.dataReceived(
            b"GET /connect HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(b"0" * 16)
            + b"\r\nX-Tunnel-ID: \xbc\xff\r\n\r\n")
        self.assertRegex(transport.value(), rb"^HTTP/1.1 (400|401) ")
        self.flushLoggedErrors()
        self.assertEqual(self.flushLoggedErrors(UnicodeDecodeError), [])
