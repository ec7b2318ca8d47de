"""
The tunnel's resource (remotedialer.server._resource) under a real site in
memory: only a WebSocket opening handshake reaches an authorizer or
Autobahn; anything else is answered 400 with one line, as Go's
gorilla/websocket words it, and nothing is logged of what the caller sent.
"""

from __future__ import annotations

import base64

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from remotedialer import Server, ServerSite

KEY = base64.b64encode(b"0123456789abcdef")
GOOD = {b"Host": b"x", b"Connection": b"keep-alive, Upgrade", b"Upgrade": b"websocket",
        b"Sec-WebSocket-Version": b"13", b"Sec-WebSocket-Key": KEY, b"X-Tunnel-ID": b"foo"}


def answer(method: bytes, target: bytes, headers: dict[bytes, bytes], version: bytes = b"HTTP/1.1") -> bytes:
    """What the server answers to one request on /connect (the authorizer counts its calls)."""
    calls: list[object] = []

    def authorizer(request):  # type: ignore[no-untyped-def]
        calls.append(request)
        return "foo"

    server = Server(authorizer, reactor=Clock())
    root = Resource()
    root.putChild(b"connect", server.resource)
    channel = ServerSite(root, reactor=Clock()).buildProtocol(None)
    transport = StringTransport()
    transport.protocol = channel  # (as a TCP transport has: Autobahn takes the connection over through it)
    channel.makeConnection(transport)
    head = b"".join(b"%s: %s\r\n" % item for item in headers.items())
    channel.dataReceived(b"%s %s %s\r\n%s\r\n" % (method, target, version, head))
    answer.calls = calls  # type: ignore[attr-defined]
    return transport.value()


class HandshakeTests(SynchronousTestCase):
    def refused(self, text: bytes, method: bytes = b"GET", target: bytes = b"/connect",
                version: bytes = b"HTTP/1.1", **changes: bytes | None) -> None:
        headers = dict(GOOD)
        for name, value in changes.items():
            key = name.replace("_", "-").encode()
            headers = {k: v for k, v in headers.items() if k.lower() != key.lower()}
            if value is not None:
                headers[key] = value
        out = answer(method, target, headers, version)
        head, _, body = out.partition(b"\r\n\r\n")
        self.assertIn(b" 400 ", head.split(b"\r\n")[0], out)
        self.assertIn(b"content-type: text/plain; charset=utf-8", head.lower())
        self.assertEqual(body.count(b"\n"), 1, body)
        self.assertIn(text, body)
        self.assertEqual(answer.calls, [])  # type: ignore[attr-defined]  # no authorizer asked

    def test_not_an_upgrade(self) -> None:
        """A plain GET (Autobahn would have served its status page) is a 400."""
        self.refused(b"'upgrade' token not found in 'Connection' header", Connection=None, Upgrade=None)

    def test_redirect_is_not_followed(self) -> None:
        """Autobahn's ?redirect= (an open redirect) and its bad forms never reach Autobahn."""
        for query in (b"redirect=https%3A%2F%2Fevil.example%2F", b"redirect=x&after=abc",
                      b"redirect=http%3A%2F%2F%5B", b"redirect=javascript%3Aalert(1)"):
            self.refused(b"'upgrade' token not found", target=b"/connect?" + query,
                         Connection=None, Upgrade=None)

    def test_wrong_upgrade(self) -> None:
        self.refused(b"'websocket' token not found in 'Upgrade' header", Upgrade=b"h2c")

    def test_not_get(self) -> None:
        self.refused(b"request method is not GET", method=b"POST")

    def test_version(self) -> None:
        self.refused(b"unsupported version", Sec_WebSocket_Version=b"8")
        self.refused(b"unsupported version", Sec_WebSocket_Version=None)

    def test_key(self) -> None:
        """A missing, malformed or huge key, or one with control characters, is refused before Autobahn."""
        for key in (None, b"short", b"A" * 5000, b"\xc2\x9b" * 12, base64.b64encode(b"x" * 17)):
            self.refused(b"'Sec-WebSocket-Key' header must be Base64", Sec_WebSocket_Key=key)

    def test_http_1_0(self) -> None:
        self.refused(b"over HTTP/1.1, not HTTP/1.0", version=b"HTTP/1.0")

    def test_extensions_and_protocols_not_printable(self) -> None:
        """
        Autobahn quoted what it could not parse in these raw, in its status
        line and its log ("illegal extension parameter '\xe2\x9b'"): refused before it.
        """
        for value in (b"permessage-deflate; \xc2\x9b=1", b"a\x1b[31mb", b"x\xff"):
            self.refused(b"'Sec-Websocket-Extensions' header must be printable ASCII",
                         Sec_WebSocket_Extensions=value)
            self.refused(b"'Sec-Websocket-Protocol' header must be printable ASCII",
                         Sec_WebSocket_Protocol=value)
        deflate = b"permessage-deflate; client_max_window_bits"
        out = answer(b"GET", b"/connect", {**GOOD, b"Sec-WebSocket-Extensions": deflate})
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)

    def test_handshake_upgrades(self) -> None:
        """The real thing is authorized and switched (the tests above would pass on one refusing all)."""
        out = answer(b"GET", b"/connect", GOOD)
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)
        self.assertEqual(len(answer.calls), 1)  # type: ignore[attr-defined]
