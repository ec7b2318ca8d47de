"""
Reading a front-door request (remotedialer.frontdoor._request) from a real
twisted.web request in memory: the front door's own ?timeout= (a number of
seconds; kubectl's ?timeout=32s is the target's), what is passed on for an
upgrade, and when an upgrade is one (HTTP/1.1, Connection naming upgrade).
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.frontdoor._request import DEFAULT_TIMEOUT, DROPPED, Fetch, error_body, parse, upgrade_of
from remotedialer.server._site import ServerSite


class _Parsed(Resource):
    isLeaf = True

    def __init__(self, upgradable: bool) -> None:
        super().__init__()
        self.upgradable = upgradable
        self.parsed: list[Fetch | tuple[int, str]] = []
        self.upgrades: list[bytes | None] = []

    def render(self, request: Request) -> bytes:
        request.prepath, request.postpath = request.postpath[:1], request.postpath[1:]  # (as under /client/)
        self.parsed.append(parse(request, DROPPED, close=False, upgradable=self.upgradable))
        self.upgrades.append(upgrade_of(request))
        return b""


def read(head: bytes, upgradable: bool = True) -> tuple[Fetch | tuple[int, str], bytes | None]:
    resource = _Parsed(upgradable)
    channel = ServerSite(resource, reactor=Clock()).buildProtocol(None)
    channel.makeConnection(StringTransport())
    channel.dataReceived(head)
    return resource.parsed[0], resource.upgrades[0]


class UpgradeTests(SynchronousTestCase):
    WS = (b"GET /client/foo/http/t:80/ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
          b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\nAuthorization: Bearer t\r\n\r\n")

    def test_upgrade_passed_on(self) -> None:
        fetch, upgrade = read(self.WS)
        assert isinstance(fetch, Fetch)
        self.assertEqual((fetch.upgrade, upgrade), (b"websocket", b"websocket"))
        self.assertEqual(fetch.headers[-3:], [(b"Host", b"t"), (b"Connection", b"Upgrade"),
                                              (b"Upgrade", b"websocket")])
        names = [name.lower() for name, _ in fetch.headers]
        self.assertIn(b"sec-websocket-key", names)
        self.assertNotIn(b"authorization", names)  # the caller's credential, as for any request
        self.assertEqual(names.count(b"connection"), 1)  # (keep-alive is this hop's)

    def test_not_upgradable_site(self) -> None:
        fetch, _ = read(self.WS, upgradable=False)
        assert isinstance(fetch, Fetch)
        self.assertIsNone(fetch.upgrade)
        self.assertNotIn(b"upgrade", [name.lower() for name, _ in fetch.headers])

    def test_what_is_an_upgrade(self) -> None:
        cases = [
            (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n\r\n", None),  # Connection does not name it
            (b"GET / HTTP/1.0\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: a\r\n\r\n", None),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n\r\n", None),  # nothing to switch to
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nConnection: UPGRADE\r\nUpgrade: a\r\n\r\n",
             b"a"),
            (b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: a\r\nUpgrade: b\r\n\r\n",
             b"a, b"),
            # kubectl's SPDY upgrade: a POST with no body
            (b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
             b"Content-Length: 0\r\n\r\n", b"SPDY/3.1"),
            # a body would be lost or taken for the new protocol's bytes: not an upgrade passed on
            (b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: a\r\n"
             b"Content-Length: 5\r\n\r\nhello", None),
            (b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: a\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", None),
        ]
        for head, expected in cases:
            self.assertEqual(read(head)[1], expected, head)


class TargetTests(SynchronousTestCase):
    def test_target_over_the_connect_limit_is_400(self) -> None:
        """
        A target a tunnel dial cannot name (its Connect, tcp/host:port, over
        266 bytes) is refused as the request is read: 400, one line.  (It
        was dialed, and the dial's ValueError logged as an unexpected error.)
        """
        for host, expected in ((b"a" * 300 + b":80", 400), (b"127.0.0.1:" + b"0" * 290 + b"80", None),
                               (b"a" * 254 + b":65535", None), (b"a" * 257 + b":65535", 400),
                               (b"[" + b"1:" * 130 + b"1]:80", 400)):
            fetch = read(b"GET /client/foo/http/%s/x HTTP/1.1\r\nHost: x\r\n\r\n" % host)[0]
            if expected is None:
                self.assertIsInstance(fetch, Fetch, host[-20:])
                continue
            status, text = fetch  # type: ignore[misc]
            self.assertEqual(status, expected, host[-20:])
            self.assertIn("is too long: a tunnel dial names at most 266 bytes (tcp/host:port)", text)
            self.assertLess(len(text), 300)


class ErrorBodyTests(SynchronousTestCase):
    def test_escaped_and_cut(self) -> None:
        request = DummyRequest([b""])
        body = error_body(request, 500, "failed to find Session for client \x1b[31mfoo\x00\u009b")
        self.assertEqual(body, b"failed to find Session for client \\x1b[31mfoo\\x00\\x9b\n")
        self.assertEqual(request.responseCode, 500)
        body = error_body(request, 502, "x" * 5000 + "\r\nfake: header")
        self.assertEqual(body.count(b"\n"), 1)
        self.assertLess(len(body), 600)


class TimeoutTests(SynchronousTestCase):
    def fetch(self, query: bytes) -> Fetch | tuple[int, str]:
        return read(b"GET /client/foo/http/t:80/version?%s HTTP/1.1\r\nHost: x\r\n\r\n" % query)[0]

    def test_seconds_are_ours(self) -> None:
        for value, seconds in ((b"15", 15.0), (b"2.5", 2.5), (b"3600", 3600.0)):
            fetch = self.fetch(b"timeout=" + value + b"&limit=500")
            assert isinstance(fetch, Fetch)
            self.assertEqual((fetch.timeout, fetch.path), (seconds, b"/version?limit=500"), value)

    def test_other_forms_are_the_targets(self) -> None:
        """kubectl's ?timeout=32s (a Go duration) goes to the API server untouched; ours is the default."""
        for value in (b"32s", b"1m0s", b"soon", b"nan", b"inf"):
            fetch = self.fetch(b"timeout=" + value + b"&limit=500")
            assert isinstance(fetch, Fetch)
            expected = b"/version?timeout=" + value + b"&limit=500"
            self.assertEqual((fetch.timeout, fetch.path), (DEFAULT_TIMEOUT, expected))

    def test_seconds_out_of_range_are_400(self) -> None:
        for value in (b"0", b"-1", b"1e9"):
            status, text = self.fetch(b"timeout=" + value)
            self.assertEqual(status, 400, value)
            self.assertIn("timeout must be a number of seconds", text)
