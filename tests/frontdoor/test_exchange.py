"""
A front-door exchange's failures, in memory (a MemoryTunnel, a ServerSite
on StringTransport): what a client or a target sends reaches the caller's
answer and the server's log escaped and cut, and a target no tunnel dial
can name is an ordinary 502, not an unexpected error with a traceback.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from remotedialer.frontdoor._exchange import Exchange, Upstreams
from remotedialer.frontdoor._pool import ClientPools
from remotedialer.frontdoor._request import Fetch
from remotedialer.server._site import ServerSite
from remotedialer.testing import MemoryTunnel
from remotedialer.tunnel._exceptions import ClientNotConnected, StreamError


class _Held(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list = []

    def render(self, request):  # type: ignore[no-untyped-def]
        self.requests.append(request)
        return NOT_DONE_YET


class ExchangeFailureTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.tunnel = MemoryTunnel(self.clock, client_key="foo")
        self.events: list[dict] = []
        self.upstreams = Upstreams(opener=self.tunnel, tls_policy=BrowserLikePolicyForHTTPS(),
                                   pools=ClientPools(self.clock, None), head_limits=(65536, 100),
                                   reactor=self.clock, log=Logger(observer=self.events.append))
        held = _Held()
        root = Resource()
        root.putChild(b"client", held)
        channel = ServerSite(root, stream_prefixes=(b"/client/",), reactor=self.clock).buildProtocol(None)
        self.transport = StringTransport()
        channel.makeConnection(self.transport)
        channel.dataReceived(b"GET /client/foo/http/t/x HTTP/1.1\r\nHost: x\r\n\r\n")
        self.request = held.requests[0]

    def exchange(self, host: str = "10.0.0.5", port: int = 80) -> Exchange:
        fetch = Fetch("foo", "http", host, port, f"{host}:{port}", b"/x", [(b"Host", host.encode())], None,
                      15.0)
        return Exchange(self.upstreams, self.request, fetch)

    def answer(self) -> tuple[bytes, bytes]:
        """The status line and the body (chunks joined) of the answer so far."""
        head, _, rest = self.transport.value().partition(b"\r\n\r\n")
        if b"transfer-encoding: chunked" not in head.lower():
            return head.split(b"\r\n")[0], rest
        body = b""
        while rest:
            size, _, rest = rest.partition(b"\r\n")
            body, rest = body + rest[:int(size, 16)], rest[int(size, 16) + 2:]
        return head.split(b"\r\n")[0], body

    def critical(self) -> list[str]:
        return [formatEvent(e) for e in self.events if e["log_level"] in (LogLevel.critical, LogLevel.error)]

    def test_target_no_connect_can_name_is_502(self) -> None:
        """
        A target over the Connect limit (266 bytes, here through a peer's
        longer form or a caller of the library) fails its dial as any dial
        fails: 502 with the reason.  (The dial raised ValueError, logged as
        "front door: fetching ... failed unexpectedly", with its traceback.)
        """
        self.exchange(host="a" * 300).start()
        self.tunnel.flush()
        status, body = self.answer()
        self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway")
        self.assertIn(b"Connect target is over 266 bytes", body)
        self.assertEqual(body.count(b"\n"), 1)
        self.assertEqual(self.critical(), [])
        self.assertEqual(self.events, [])

    def test_client_error_text_escaped_in_the_answer(self) -> None:
        """A client's Error text (its dial's failure) reaches the caller's terminal escaped."""
        self.exchange().exchange_failed(Failure(StreamError("\x1b[31mrefused\x00\u009b\x07")), False)
        status, body = self.answer()
        self.assertEqual(status, b"HTTP/1.1 502 Bad Gateway")
        self.assertEqual(body, b"http://10.0.0.5:80/x: \\x1b[31mrefused\\x00\\x9b\\x07\n")

    def test_unknown_client_key_escaped_in_the_answer(self) -> None:
        """Go's "failed to find Session for client <key>": a key from the URL, escaped."""
        self.exchange()._fail(Failure(ClientNotConnected("failed to find Session for client \x1b[31mfoo")))
        status, body = self.answer()
        self.assertEqual(status, b"HTTP/1.1 500 Internal Server Error")
        self.assertEqual(body, b"failed to find Session for client \\x1b[31mfoo\n")

    def test_long_error_text_cut(self) -> None:
        self.exchange().exchange_failed(Failure(StreamError("E" * 5000)), False)
        _, body = self.answer()
        self.assertLess(len(body), 700)
        self.assertTrue(body.endswith(b"more characters)\n"), body[-60:])

    def test_mid_body_error_text_escaped_and_cut_in_the_log(self) -> None:
        exchange = self.exchange()
        exchange.response_started(200, b"OK", [(b"content-length", b"100")])
        exchange.body_received(b"partial")
        exchange.exchange_failed(Failure(StreamError("\x1b[31m\x00\u009b" + "A" * 5000)), True)
        lines = [formatEvent(e) for e in self.events]
        self.assertEqual(len(lines), 1)
        self.assertTrue(lines[0].startswith("front door: http://10.0.0.5:80/x failed mid-body: \\x1b[31m\\x00"
                                            "\\x9bAAA"), lines[0])
        self.assertLess(len(lines[0]), 300)
        self.assertTrue(lines[0].isprintable())

    def test_reason_phrase_passed_on_only_as_visible_ascii(self) -> None:
        exchange = self.exchange()
        exchange.response_started(200, b"O\x1b[31mK\xc2\x9b", [(b"content-length", b"0")])
        exchange.response_ended()
        self.assertEqual(self.answer()[0], b"HTTP/1.1 200 OK")

    def test_reason_phrase_of_the_target_kept(self) -> None:
        exchange = self.exchange()
        exchange.response_started(299, b"Fine Thanks", [(b"content-length", b"0")])
        exchange.response_ended()
        self.assertEqual(self.answer()[0], b"HTTP/1.1 299 Fine Thanks")
