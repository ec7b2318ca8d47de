"""
The header guard in front of the server's site (remotedialer.server._guard), on
StringTransport and a Clock: slowloris closed at the deadline, request heads
over the size or header-count limit answered 431, a cap on connections still
sending their heads; each at the limit and one past it.  On TLS (in memory,
iosim) the guard names the site's protocols for ALPN, so clients offering
ALPN complete the handshake.
"""

from __future__ import annotations

import os

from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import Certificate, PrivateCertificate, optionsForClientTLS
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.test import iosim
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site as WebSite
from zope.interface import implementer
from zope.interface.verify import verifyObject

from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.server._guard import HTTP_1_1_ONLY, HeaderGuardFactory
from remotedialer.server._h2limit import PREFACE
from remotedialer.server._site import ServerSite
from tests.support import self_signed_certificate

ADDR = IPv4Address("TCP", "127.0.0.1", 50000)


class Site(Protocol):
    """Stands in for the site's channel: records what it is given."""

    def __init__(self) -> None:
        self.received = b""
        self.lost = None

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class Recording(Factory):
    def __init__(self) -> None:
        self.built: list[Site] = []
        self.started = self.stopped = 0

    def buildProtocol(self, addr):
        protocol = Site()
        self.built.append(protocol)
        return protocol

    def doStart(self) -> None:
        self.started += 1

    def doStop(self) -> None:
        self.stopped += 1


def head(headers: int = 1, pad: int = 0) -> bytes:
    lines = [b"GET /connect HTTP/1.1"] + [b"X-H%d: v" % i for i in range(headers)]
    lines[-1] += b"x" * pad
    return b"\r\n".join(lines) + b"\r\n\r\n"


class GuardTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = Recording()

    def guard(self, **limits) -> HeaderGuardFactory:
        return HeaderGuardFactory(self.site, UpgradeLimits(**limits), clock=self.clock)

    def connect(self, factory: HeaderGuardFactory):
        protocol = factory.buildProtocol(ADDR)
        if protocol is None:
            return None, None
        transport = StringTransport(peerAddress=ADDR)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_head_then_site(self) -> None:
        """A complete head (even in pieces) reaches the site's protocol on the real transport."""
        factory = self.guard()
        protocol, transport = self.connect(factory)
        data = head(3) + b"body"
        protocol.dataReceived(data[:7])
        self.assertEqual(self.site.built, [])
        protocol.dataReceived(data[7:])
        [site] = self.site.built
        self.assertIs(site.transport, transport)
        self.assertEqual(site.received, data)
        protocol.dataReceived(b"more")
        self.assertEqual(site.received, data + b"more")
        self.assertEqual(factory.pending, 0)
        protocol.connectionLost(None)
        self.assertIsNone(site.lost)  # forwarded (None here)

    def test_http2_continuation_flood_closed(self) -> None:
        """
        HTTP/2 after the preface: ordinary frames pass; a header block of
        CONTINUATION frames past the head limit closes the connection before
        the site (h2) holds it.
        """
        factory = self.guard(header_bytes=16 * 1024)
        protocol, transport = self.connect(factory)

        def frame(kind: int, flags: int, payload: bytes) -> bytes:
            return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + (1).to_bytes(4, "big") + payload

        protocol.dataReceived(PREFACE + frame(0x4, 0, b""))  # the preface, SETTINGS
        [site] = self.site.built
        protocol.dataReceived(frame(0x1, 0x4 | 0x1, b"h" * 100))  # one whole request
        protocol.dataReceived(frame(0x1, 0, b"h" * 100))  # a block that never ends
        for _ in range(3):
            protocol.dataReceived(frame(0x9, 0, b"c" * 4096))
        self.assertFalse(transport.disconnecting)
        received = len(site.received)
        for _ in range(2):
            protocol.dataReceived(frame(0x9, 0, b"c" * 4096))
        self.assertTrue(transport.disconnected)  # aborted
        self.assertLess(len(site.received), received + 2 * 4096)  # the frame over the limit was not passed on

    def test_slowloris_closed_at_deadline(self) -> None:
        """A byte every few seconds: still open just before the timeout, aborted at it."""
        factory = self.guard(timeout=10)
        protocol, transport = self.connect(factory)
        for byte in head()[:9]:
            protocol.dataReceived(bytes([byte]))
            self.clock.advance(1.1)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(factory.pending, 0)
        self.assertEqual(self.site.built, [])

    def test_complete_head_cancels_deadline(self) -> None:
        factory = self.guard(timeout=10)
        protocol, transport = self.connect(factory)
        protocol.dataReceived(head())
        self.clock.advance(60)
        self.assertFalse(transport.disconnecting)

    def test_header_bytes(self) -> None:
        """A head of exactly header_bytes is taken; one byte more is answered 431 and closed."""
        size = len(head(pad=100))
        protocol, transport = self.connect(self.guard(header_bytes=size))
        protocol.dataReceived(head(pad=100))
        self.assertEqual(len(self.site.built), 1)
        protocol, transport = self.connect(self.guard(header_bytes=size))
        protocol.dataReceived(head(pad=101))
        self.assertEqual(len(self.site.built), 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))
        self.assertIn(b"request head over", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_endless_head_refused_early(self) -> None:
        """A head that never ends is refused as soon as it passes the limit, not buffered on."""
        protocol, transport = self.connect(self.guard(header_bytes=1000))
        for _ in range(20):
            protocol.dataReceived(b"X-Junk: " + b"j" * 92 + b"\r\n")
            if transport.disconnecting:
                break
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(len(protocol._head), 1100)

    def test_max_headers(self) -> None:
        """max_headers header lines are taken; one more is answered 431."""
        protocol, transport = self.connect(self.guard(max_headers=5))
        protocol.dataReceived(head(5))
        self.assertEqual(len(self.site.built), 1)
        protocol, transport = self.connect(self.guard(max_headers=5))
        protocol.dataReceived(head(6))
        self.assertEqual(len(self.site.built), 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "))

    def test_max_pending(self) -> None:
        """max_pending connections may be sending heads; the next is refused until one finishes."""
        factory = self.guard(max_pending=3)
        held = [self.connect(factory) for _ in range(3)]
        self.assertEqual(factory.pending, 3)
        refused, transport = self.connect(factory)  # closed at once
        self.assertTrue(transport.disconnected)
        self.assertEqual(factory.pending, 3)
        held[0][0].dataReceived(head())
        protocol, _ = self.connect(factory)
        self.assertIsNotNone(protocol)
        held[1][0].connectionLost(None)
        self.assertEqual(factory.pending, 2)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_site_started_and_stopped(self) -> None:
        factory = self.guard()
        factory.doStart()
        factory.doStop()
        self.assertEqual((self.site.started, self.site.stopped), (1, 1))


class EarlyAnswerTests(SynchronousTestCase):
    """A request with a body for a client nobody reaches is answered before its body is read."""

    def setUp(self) -> None:
        from remotedialer.frontdoor._resource import refuse_unknown_client

        class Server:
            def reaches(self, key: str) -> bool:
                return key == "known"

        self.site = Recording()
        self.factory = HeaderGuardFactory(self.site, clock=Clock(), early=refuse_unknown_client(Server()))

    def send(self, head: bytes):
        protocol = self.factory.buildProtocol(ADDR)
        transport = StringTransport(peerAddress=ADDR)
        protocol.makeConnection(transport)
        protocol.dataReceived(head + b"x" * 1000)  # the start of a large body
        return transport

    def test_unknown_client_post_answered_before_body(self) -> None:
        transport = self.send(b"POST /client/evil%2Fone/http/10.0.0.1/x HTTP/1.1\r\n"
                              b"Content-Length: 67108864\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 Internal Server Error\r\n"))
        self.assertIn(b"failed to find Session for client evil/one\n", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.site.built, [])  # the site never saw it, nor a byte of the body

    def test_chunked_body_too(self) -> None:
        transport = self.send(b"PUT /client/nobody/http/h/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 "))

    def test_known_client_or_no_body_or_other_path_goes_on(self) -> None:
        for head in (b"POST /client/known/http/h/x HTTP/1.1\r\nContent-Length: 5\r\n\r\n",
                     b"GET /client/nobody/http/h/x HTTP/1.1\r\n\r\n",
                     b"POST /client/nobody/http/h/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                     b"POST /connect HTTP/1.1\r\nContent-Length: 5\r\n\r\n"):
            transport = self.send(head)
            self.assertEqual(transport.value(), b"", head)
        self.assertEqual(len(self.site.built), 4)


class _Greeter(Protocol):
    """A TLS client's protocol: sends a request head once TLS is up; records a lost connection."""

    lost = None

    def connectionMade(self) -> None:
        self.transport.write(head())

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class NegotiationTests(SynchronousTestCase):
    """
    The guard is a TLS listener's factory: it names the site's protocols
    for ALPN (all of them, or those within C{alpn}).  With none named,
    Twisted's ALPN callback selects nothing and OpenSSL aborts the
    handshake of every client that offers ALPN.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        with open(cert, "rb") as f, open(key, "rb") as g:
            cert_pem, key_pem = f.read(), g.read()
        self.server_options = PrivateCertificate.loadPEM(cert_pem + key_pem).options()
        self.trust = Certificate.loadPEM(cert_pem)

    def handshake(self, guard: HeaderGuardFactory, offered: list[bytes] | None):
        """
        A TLS client offering C{offered} (None: no ALPN) against a TLS
        listener of C{guard}, in memory: (the client's wrapped protocol,
        the protocol TLS negotiated as the site's channel sees it).
        """
        clock = Clock()  # TLS gathers small writes until the reactor's next turn
        server = TLSMemoryBIOFactory(self.server_options, False, guard, clock=clock).buildProtocol(ADDR)
        greeter = _Greeter()
        options = optionsForClientTLS("localhost", trustRoot=self.trust, acceptableProtocols=offered)
        client = TLSMemoryBIOFactory(options, True, Factory.forProtocol(lambda: greeter),
                                     clock=clock).buildProtocol(ADDR)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                             client, iosim.FakeTransport(client, isServer=False), clock=clock)
        pump.flush()
        self.assertIsNone(greeter.lost)
        [site] = guard.wrapped.built
        self.assertEqual(site.received, head())  # TLS is up and the site has the request
        self.assertEqual(client.negotiatedProtocol, site.transport.negotiatedProtocol)
        return site.transport.negotiatedProtocol

    def test_refused_under_tls(self) -> None:
        """
        Over the pending limit on a TLS listener: the connection is closed,
        with no traceback (TLS wrapped the None this used to return).
        """
        guard = HeaderGuardFactory(Recording(), UpgradeLimits(max_pending=1), clock=Clock())
        guard.pending = 1  # (one connection is still sending its head)
        server = TLSMemoryBIOFactory(self.server_options, False, guard, clock=Clock()).buildProtocol(ADDR)
        transport = StringTransport()
        server.makeConnection(transport)
        self.assertTrue(transport.disconnected)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_provides_protocol_negotiation(self) -> None:
        verifyObject(IProtocolNegotiationFactory, HeaderGuardFactory(Recording(), clock=Clock()))

    def test_passes_on_the_sites_protocols(self) -> None:
        """twisted.web's Site (h2 is installed with the package) and ours: h2, then http/1.1."""
        for site in (WebSite(Resource()), ServerSite(Resource(), stream_prefixes=(b"/client/",))):
            guard = HeaderGuardFactory(site, clock=Clock())
            self.assertEqual(guard.acceptableProtocols(), site.acceptableProtocols())
            self.assertEqual(guard.acceptableProtocols(), [b"h2", b"http/1.1"])

    def test_restricted(self) -> None:
        """C{alpn} keeps the site's protocols within it (the admin endpoint: HTTP/1.1 only)."""
        guard = HeaderGuardFactory(WebSite(Resource()), clock=Clock(), alpn=HTTP_1_1_ONLY)
        self.assertEqual(guard.acceptableProtocols(), [b"http/1.1"])
        guard = HeaderGuardFactory(WebSite(Resource()), clock=Clock(), alpn=[b"http/1.1", b"h2"])
        self.assertEqual(guard.acceptableProtocols(), [b"h2", b"http/1.1"])  # the site's order

    def test_site_naming_none(self) -> None:
        """A factory that names no protocols: http/1.1, which the guard itself speaks."""
        self.assertEqual(HeaderGuardFactory(Recording(), clock=Clock()).acceptableProtocols(), [b"http/1.1"])

    def test_restricted_to_nothing_refused(self) -> None:
        with self.assertRaises(ValueError) as caught:
            HeaderGuardFactory(WebSite(Resource()), clock=Clock(), alpn=[b"spdy/3"])
        self.assertIn("spdy/3", str(caught.exception))

    def test_handshake_negotiates(self) -> None:
        """Clients offering h2 and http/1.1, http/1.1 only, or nothing: each gets through."""

        @implementer(IProtocolNegotiationFactory)
        class NegotiatingRecording(Recording):
            def __init__(self, protocols: list[bytes]) -> None:
                super().__init__()
                self.protocols = protocols

            def acceptableProtocols(self) -> list[bytes]:
                return self.protocols

        cases = [
            ([b"h2", b"http/1.1"], None, [b"h2", b"http/1.1"], b"h2"),
            ([b"h2", b"http/1.1"], None, [b"http/1.1"], b"http/1.1"),
            ([b"h2", b"http/1.1"], None, None, None),
            ([b"h2", b"http/1.1"], HTTP_1_1_ONLY, [b"h2", b"http/1.1"], b"http/1.1"),
            ([b"h2", b"http/1.1"], HTTP_1_1_ONLY, None, None),
        ]
        for site_protocols, alpn, offered, negotiated in cases:
            site = NegotiatingRecording(site_protocols)
            guard = HeaderGuardFactory(site, clock=Clock(), alpn=alpn)
            self.assertEqual(self.handshake(guard, offered), negotiated, (alpn, offered))

    def test_handshake_site_naming_none(self) -> None:
        """A site that names no protocols: a client offering h2 and http/1.1 gets http/1.1."""
        guard = HeaderGuardFactory(Recording(), clock=Clock())
        self.assertEqual(self.handshake(guard, [b"h2", b"http/1.1"]), b"http/1.1")
