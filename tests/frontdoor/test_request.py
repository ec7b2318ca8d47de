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

from remotedialer.frontdoor._request import DEFAULT_TIMEOUT, DROPPED, Fetch, parse, upgrade_of
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
