"""
HEAD is answered without a body on every site of the programs (the
tunnel listener and front door's ServerSite, the admin endpoint's
AdminSite), wherever the answer comes from (a resource's error text, a
page, twisted.web's own 404, the tunnel path's handshake refusal, the
front door's refusals), and twisted.web logs nothing about it: before,
each such answer logged "Warning: HEAD request <the request's repr, with
its whole URI> ... I think I'll eat it" (15 KB for a 15 KB URI), and a URI
with a byte that is not ASCII made that repr fail ("MESSAGE LOST", with
tracebacks).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from remotedialer.frontdoor._resource import FrontDoor
from remotedialer.ops._admin import AdminEndpoint, AdminSite
from remotedialer.server._access import FrontDoorAccess
from remotedialer.server._guard import HeaderGuardFactory
from remotedialer.server._server import Server
from remotedialer.server._site import ServerSite

ADDR = IPv4Address("TCP", "127.0.0.1", 50000)
LONG = b"?" + b"a" * 15000


class Text(Resource):
    isLeaf = True

    def render_GET(self, request):  # type: ignore[no-untyped-def]
        request.setResponseCode(400)
        return b"a one-line error text\n"


class HeadTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def server_site(self):  # type: ignore[no-untyped-def]
        clock = Clock()
        server = Server(lambda request: "foo", reactor=clock)
        root = Resource()
        root.putChild(b"connect", server.resource)
        root.putChild(b"text", Text())
        root.putChild(b"client", FrontDoor(server, reactor=clock, access=FrontDoorAccess()))
        site = ServerSite(root, stream_prefixes=(b"/client/",), reactor=clock)
        return HeaderGuardFactory(site, clock=clock)

    def admin_site(self):  # type: ignore[no-untyped-def]
        endpoint = AdminEndpoint(registry=None, status=lambda limit: {"clients": []})  # type: ignore[arg-type]
        return HeaderGuardFactory(AdminSite(endpoint, reactor=Clock()))

    def head(self, factory, target: bytes) -> bytes:  # type: ignore[no-untyped-def]
        protocol = factory.buildProtocol(ADDR)
        transport = StringTransport(peerAddress=ADDR)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"HEAD %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % target)
        return transport.value()

    def assert_bodiless(self, answer: bytes, status: bytes, target: bytes) -> None:
        head, sep, body = answer.partition(b"\r\n\r\n")
        self.assertTrue(sep, answer)
        self.assertEqual(head.split(b"\r\n")[0], b"HTTP/1.1 " + status, target[:60])
        self.assertEqual(body, b"", target[:60])
        self.assertEqual([formatEvent(e)[:200] for e in self.events], [], target[:60])  # (nothing logged)

    def test_server_site(self) -> None:
        for target, status in [
                (b"/text" + LONG, b"400 Bad Request"),  # a resource's error text
                (b"/nothing" + LONG, b"404 Not Found"),  # twisted.web's own 404 page
                (b"/nope\x9b", b"404 Not Found"),  # (its repr failed: MESSAGE LOST)
                (b"/connect" + LONG, b"400 Bad Request"),  # the tunnel path: not an upgrade
        ]:
            self.assert_bodiless(self.head(self.server_site(), target), status, target)

    def test_front_door_refusals(self) -> None:
        for target, status in [
                (b"/client/", b"404 Not Found"),  # usage
                (b"/client/foo/gopher/x" + LONG, b"400 Bad Request"),  # scheme
                (b"/client/foo/http/\x9b.0.0.1:80/x", b"400 Bad Request"),  # target
        ]:
            answer = self.head(self.server_site(), target)
            self.assert_bodiless(answer, status, target)
            self.assertIn(b"content-length: ", answer.lower())  # (the length a GET's body would have)

    def test_admin_site(self) -> None:
        for target, status in [(b"/" + LONG, b"200 OK"), (b"/status" + LONG, b"200 OK"),
                               (b"/nope" + LONG, b"404 Not Found"), (b"/nope\x9b", b"404 Not Found"),
                               (b"/healthz", b"200 OK")]:
            answer = self.head(self.admin_site(), target)
            self.assert_bodiless(answer, status, target)

    def test_get_unchanged(self) -> None:
        protocol = self.admin_site().buildProtocol(ADDR)
        transport = StringTransport(peerAddress=ADDR)
        protocol.makeConnection(transport)
        protocol.dataReceived(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok\n"))
        self.assertIn(b"Content-Length: 3", transport.value())
