"""
Every request on a connection to the server's sites is bounded by the
guard's one set of limits (remotedialer.server._bounds), on StringTransport:
a head the guard takes (up to 64 KiB, 100 headers) is served, not refused
by twisted.web's own 16 KiB limits; a later head over them is 431 with the
guard's text; a Content-Length or chunk size over 2**63-1 is 400 at once
(twisted.web waited for the body until the caller left); on the tunnel
listener's and front door's site, and on the admin endpoint's.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from remotedialer.ops._admin import AdminEndpoint, AdminSite
from remotedialer.protocol._limits import UpgradeLimits
from remotedialer.server._bounds import MAX_BODY_LENGTH, ChunkSizes
from remotedialer.server._guard import HeaderGuardFactory
from remotedialer.server._site import ServerSite

ADDR = IPv4Address("TCP", "127.0.0.1", 50000)
TOO_BIG = "request head over 65536 bytes or 100 headers"


class Echo(Resource):
    """Answers 200 with the request's path and its header count; records what rendered."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.rendered: list[bytes] = []
        self.bodies: list[bytes] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        self.rendered.append(request.uri)
        body = getattr(request, "body_producer", None)
        if body is None:
            self.bodies.append(request.content.read())
        return b"served %d headers\n" % len(list(request.requestHeaders.getAllRawHeaders()))


class Pending(Echo):
    """Answers nothing yet (the front door awaiting its target's answer); records what rendered."""

    def render(self, request):  # type: ignore[no-untyped-def]
        self.rendered.append(request.uri)
        return NOT_DONE_YET


class Later(Resource):
    """Writes its answer's head at once and never finishes (a target answering as the upload goes)."""

    isLeaf = True

    def render(self, request):  # type: ignore[no-untyped-def]
        request.write(b"started")
        return NOT_DONE_YET


def connect(factory) -> tuple[object, StringTransport]:  # type: ignore[no-untyped-def]
    protocol = factory.buildProtocol(ADDR)
    transport = StringTransport(peerAddress=ADDR)
    protocol.makeConnection(transport)
    return protocol, transport


def request(target: bytes = b"/x", headers: list[bytes] = (), method: bytes = b"GET", body: bytes = b"",
            close: bool = False) -> bytes:
    lines = [b"%s %s HTTP/1.1" % (method, target), b"Host: x", *headers]
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def status(answer: bytes) -> bytes:
    return answer.split(b"\r\n", 1)[0]


def body(answer: bytes) -> bytes:
    return answer.partition(b"\r\n\r\n")[2]


class _Sites:
    """The three HTTP listeners of the programs, guarded as the programs guard them."""

    def server_site(self, limits: UpgradeLimits | None = None, prefixes=(b"/client/",)):  # type: ignore[no-untyped-def]
        self.resource = Echo()
        self.front_door = Pending()
        root = Resource()
        root.putChild(b"client", self.front_door)
        root.putChild(b"connect", self.resource)
        self.clock = Clock()
        site = ServerSite(root, stream_prefixes=prefixes, reactor=self.clock)
        return HeaderGuardFactory(site, limits, clock=self.clock)

    def admin_site(self):  # type: ignore[no-untyped-def]
        self.clock = Clock()
        endpoint = AdminEndpoint(registry=None, status=lambda limit: {})  # type: ignore[arg-type]
        return HeaderGuardFactory(AdminSite(endpoint, reactor=self.clock), clock=self.clock)


class HeadLimitTests(_Sites, SynchronousTestCase):
    """One head limit: the guard's, on the first request and every later one."""

    def test_heads_between_16_and_64_kib_are_served(self) -> None:
        """
        Heads the guard takes are served: twisted.web's own limits (16 KiB
        of header lines, 16 KiB for a line) no longer refuse them with a
        bare 400 or a close.
        """
        cases = {
            "16.5 KiB URI": request(b"/connect?" + b"q" * 16500),
            "one 32 KiB header": request(b"/connect", [b"X-Pad: " + b"p" * 32000]),
            "30 headers, 60 KiB": request(b"/connect", [b"X-Pad-%d: " % i + b"p" * 2000 for i in range(30)]),
            "100 headers": request(b"/connect", [b"X-H%d: v" % i for i in range(99)]),
        }
        for name, data in cases.items():
            protocol, transport = connect(self.server_site())
            protocol.dataReceived(data)
            self.assertEqual(status(transport.value()), b"HTTP/1.1 200 OK", name)
            self.assertEqual(len(self.resource.rendered), 1, name)

    def test_admin_endpoint_too(self) -> None:
        protocol, transport = connect(self.admin_site())
        protocol.dataReceived(request(b"/healthz", [b"X-Pad: " + b"p" * 32000], close=True))
        self.assertEqual(status(transport.value()), b"HTTP/1.1 200 OK")
        self.assertEqual(body(transport.value()), b"ok\n")

    def test_later_head_over_the_limit_is_431(self) -> None:
        """On a kept-alive connection, a later head over the limit gets the guard's 431, not a bare 400."""
        for name, second in {
            "70 KiB in one header": request(b"/connect", [b"X-Pad: " + b"p" * 70000]),
            "70 KiB in 35 headers": request(b"/connect",
                                            [b"X-Pad-%d: " % i + b"p" * 2000 for i in range(35)]),
            "101 headers": request(b"/connect", [b"X-H%d: v" % i for i in range(101)]),
        }.items():
            protocol, transport = connect(self.server_site())
            protocol.dataReceived(request(b"/connect"))
            first = transport.value()
            transport.clear()
            protocol.dataReceived(second)
            self.assertEqual(status(first), b"HTTP/1.1 200 OK", name)
            answer = transport.value()
            self.assertEqual(status(answer), b"HTTP/1.1 431 Request Header Fields Too Large", name)
            self.assertEqual(body(answer), TOO_BIG.encode() + b"\n", name)
            self.assertTrue(transport.disconnecting, name)
            self.assertEqual(len(self.resource.rendered), 1, name)

    def test_first_head_at_the_limit_served_one_over_431(self) -> None:
        """At the guard's limit exactly the head is served; one byte over, 431: by guard and channel alike."""
        limits = UpgradeLimits(header_bytes=1000, max_headers=10)
        base = request(b"/connect", [b"X-Pad: "])
        at_limit = request(b"/connect", [b"X-Pad: " + b"p" * (1000 - len(base))])
        self.assertEqual(len(at_limit), 1000)
        over = request(b"/connect", [b"X-Pad: " + b"p" * (1001 - len(base))])
        for first in (True, False):
            for data, expected in ((at_limit, b"HTTP/1.1 200 OK"),
                                   (over, b"HTTP/1.1 431 Request Header Fields Too Large")):
                protocol, transport = connect(self.server_site(limits))
                if not first:  # (a kept-alive connection's second request: the channel's count)
                    protocol.dataReceived(request(b"/connect"))
                    transport.clear()
                protocol.dataReceived(data)
                self.assertEqual(status(transport.value()), expected, (first, len(data)))
                if expected.endswith(b"Large"):
                    self.assertIn(b"request head over 1000 bytes or 10 headers", transport.value())


class BodyFramingTests(_Sites, SynchronousTestCase):
    """Content-Length and chunk sizes over 2**63-1: 400 at once, on every listener."""

    def sites(self):  # type: ignore[no-untyped-def]
        return {"tunnel listener": (self.server_site, b"/connect"),
                "front door (streamed)": (self.server_site, b"/client/foo/http/t/"),
                "admin endpoint": (self.admin_site, b"/status")}

    def refused(self, data: bytes, text: bytes) -> None:
        for name, (make, target) in self.sites().items():
            protocol, transport = connect(make())
            protocol.dataReceived(data.replace(b"TARGET", target))
            self.clock.advance(0)
            answer = transport.value()
            self.assertEqual(status(answer), b"HTTP/1.1 400 Bad Request", name)
            self.assertEqual(body(answer), text + b"\n", name)
            self.assertTrue(transport.disconnecting, name)
            if make == self.server_site:
                self.assertEqual(self.resource.rendered, [], name)
                self.assertEqual(self.front_door.rendered, [], name)  # (a streamed one is never rendered)

    def test_content_length_over_int64(self) -> None:
        self.refused(request(b"TARGET", [b"Content-Length: %d" % 10**23], b"POST", b"abc"),
                     b"Content-Length over 9223372036854775807 bytes")

    def test_content_length_of_5000_digits(self) -> None:
        """Past 4300 digits, int() refuses to convert (and twisted.web's parser raised)."""
        self.refused(request(b"TARGET", [b"Content-Length: " + b"9" * 5000], b"POST", b"abc"),
                     b"Content-Length over 9223372036854775807 bytes")

    def test_chunk_size_over_int64(self) -> None:
        self.refused(request(b"TARGET", [b"Transfer-Encoding: chunked"], b"POST", b"%x\r\nabc" % 2**112),
                     b"chunk size over 9223372036854775807 bytes")

    def test_chunk_size_in_a_later_read_and_chunk(self) -> None:
        """The size of a later chunk, its line split over reads, is read too."""
        for name, (make, target) in self.sites().items():
            protocol, transport = connect(make())
            protocol.dataReceived(request(target, [b"Transfer-Encoding: chunked"], b"POST", b"3\r\nab"))
            self.clock.advance(0)
            protocol.dataReceived(b"c\r\n1;ext=1\r\nd\r\n1000000")
            protocol.dataReceived(b"0000000000000000\r\n")
            self.assertIn(b"HTTP/1.1 400 Bad Request", transport.value(), name)
            self.assertTrue(transport.disconnecting, name)

    def test_largest_values_taken(self) -> None:
        """2**63-1 itself (and leading zeros) is a size like any other: the body is awaited."""
        for name, (make, target) in self.sites().items():
            for data in (request(target, [b"Content-Length: %d" % MAX_BODY_LENGTH], b"POST", b"abc"),
                         request(target, [b"Content-Length: 000000000000000000000000000000001"], b"POST"),
                         request(target, [b"Transfer-Encoding: chunked"], b"POST",
                                 b"%x\r\nabc" % MAX_BODY_LENGTH),
                         request(target, [b"Transfer-Encoding: chunked"], b"POST",
                                 b"00000000000000000000000000000003\r\nabc\r\n")):
                protocol, transport = connect(make())
                protocol.dataReceived(data)
                self.assertNotIn(b" 400 ", transport.value(), (name, data[-40:]))
                self.assertFalse(transport.disconnecting, (name, data[-40:]))

    def test_chunked_bodies_on_a_kept_alive_connection(self) -> None:
        """Chunked bodies, their trailers, then the next request: each read right, each served."""
        protocol, transport = connect(self.server_site())
        protocol.dataReceived(request(b"/connect", [b"Transfer-Encoding: chunked"], b"POST",
                                      b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n")
                              + request(b"/connect", [b"Transfer-Encoding: chunked"], b"POST",
                                        b"1\r\nf\r\n0\r\n\r\n"))
        self.assertEqual(transport.value().count(b"HTTP/1.1 200 OK"), 2)
        self.assertEqual(self.resource.bodies, [b"abcde", b"f"])
        protocol.dataReceived(request(b"/connect", [b"Content-Length: %d" % 10**23], b"POST"))
        self.assertIn(b"HTTP/1.1 400 Bad Request", transport.value())

    def test_answer_under_way_cut_short(self) -> None:
        """A streamed request whose answer has begun is not answered twice: its connection is aborted."""
        root = Resource()
        root.putChild(b"client", Later())
        clock = Clock()
        site = ServerSite(root, stream_prefixes=(b"/client/",), reactor=clock)
        guard = HeaderGuardFactory(site, clock=clock)
        protocol, transport = connect(guard)
        protocol.dataReceived(request(b"/client/foo", [b"Transfer-Encoding: chunked"], b"POST",
                                      b"3\r\nabc\r\n"))
        clock.advance(0)
        self.assertIn(b"started", transport.value())
        protocol.dataReceived(b"%x\r\n" % 2**112)
        self.assertNotIn(b"400", transport.value())
        self.assertTrue(transport.disconnecting)


class ChunkSizesTests(SynchronousTestCase):
    """The chunk-size reader alone: it follows the framing as twisted.web's decoder does."""

    def test_sizes_data_and_trailer(self) -> None:
        chunks = ChunkSizes()
        for piece in (b"3\r", b"\nab", b"c\r\n10", b";a=b\r\n", b"x" * 16, b"\r\n0\r\nT: 1\r\n\r", b"\n"):
            self.assertIsNone(chunks.feed(piece))
        self.assertTrue(chunks.done)

    def test_over_the_bound(self) -> None:
        for size in (2**63, 2**64, 2**112):
            self.assertEqual(ChunkSizes().feed(b"%x\r\n" % size), "chunk size over 9223372036854775807 bytes")
        self.assertIsNone(ChunkSizes().feed(b"%x\r\n" % (2**63 - 1)))

    def test_many_small_chunks_in_one_read(self) -> None:
        chunks = ChunkSizes()
        self.assertIsNone(chunks.feed(b"1\r\nx\r\n" * 20000 + b"0\r\n\r\n"))
        self.assertTrue(chunks.done)

    def test_what_the_decoder_refuses_is_left_to_it(self) -> None:
        for data in (b"zz\r\n", b"-1\r\n", b"1" * 2000):
            chunks = ChunkSizes()
            self.assertIsNone(chunks.feed(data))
            self.assertTrue(chunks.done)
