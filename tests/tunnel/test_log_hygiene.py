"""
Log hygiene: what a peer sends reaches our log escaped, cut short and
rate-limited; client keys and peer ids that are not printable text are
refused at the upgrade (400), so they never reach logs or metrics.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.protocol import _codec
from remotedialer.protocol._text import LOG_TEXT_LIMIT, printable
from remotedialer.server._resource import TunnelResource, header_authorizer
from remotedialer.tunnel._logtext import Throttle, address
from remotedialer.tunnel._session import Session
from tests.memory import Direction
from tests.support import add_handshake


class PrintableTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        self.assertEqual(printable("foo-agent.1"), "foo-agent.1")

    def test_control_characters_escaped(self) -> None:
        self.assertEqual(printable("a\x1b[31mred\x07\n\\"), "a\\x1b[31mred\\x07\\n\\\\")
        self.assertEqual(printable(b"\xff\x00"), "\ufffd\\x00")

    def test_cut_to_limit(self) -> None:
        text = printable("k" * 15000)
        self.assertTrue(text.startswith("k" * LOG_TEXT_LIMIT + "...("))
        self.assertIn("14872 more characters", text)
        self.assertLess(len(text), LOG_TEXT_LIMIT + 40)

    def test_address(self) -> None:
        from twisted.internet.address import IPv4Address, IPv6Address

        self.assertEqual(address(IPv4Address("TCP", "10.0.0.1", 443)), "10.0.0.1:443")
        self.assertEqual(address(IPv6Address("TCP", "::1", 80)), "[::1]:80")
        self.assertEqual(address(None), "?")


class LogCapture:
    def __init__(self, testcase: SynchronousTestCase) -> None:
        self.events: list[dict] = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    @property
    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events]


class FloodTests(SynchronousTestCase):
    def test_ten_thousand_bad_messages_bounded_log(self) -> None:
        """
        10,000 malformed messages for streams (each is answered, the session
        goes on) add a few lines and a summary per 10 s, far under 1 MB, and
        no raw control character.
        """
        capture = LogCapture(self)
        clock = Clock()
        session = Session(Direction().send, client_key="foo", clock=clock)
        evil = b"\x1b]0;pwned\x07" + b"x" * 300
        for i in range(10_000):
            session.message_received(_codec.encode(_codec.Message(i, 9, _codec.MessageType.CONNECT, evil)))
            if i % 1000 == 999:
                clock.advance(2)
        clock.advance(10)
        lines = capture.lines
        size = sum(len(line) for line in lines)
        self.assertLess(size, 10_000)
        self.assertLessEqual(len(lines), 5 * 3 + 3)
        self.assertTrue(any("more protocol errors in the last 10 s" in line for line in lines), lines)
        self.assertFalse(any("\x1b" in line or "\x07" in line for line in lines))
        self.assertFalse(session.closed)

    def test_refused_connects_bounded_log(self) -> None:
        """
        2,500 Connects that the session's dial policy refuses (the server's
        RefuseAll, for a client that sends Connects) each end their stream
        with an Error, but make a few lines and a summary: under 64 KiB of
        log (one 418-byte line each made 1 MB before).
        """
        capture = LogCapture(self)
        clock = Clock()
        sent = Direction()
        session = Session(sent.send, client_key="foo", clock=clock)
        target = "10.0.0.5.very-long-name." + "x" * 200 + ":6443"
        for i in range(2_500):
            session.message_received(_codec.encode(_codec.connect(i + 1, 2 * i + 1, "tcp", target)))
            if i % 500 == 499:
                clock.advance(1)
        clock.advance(10)
        lines = capture.lines
        self.assertLess(sum(len(line) for line in lines), 64 * 1024)
        summaries = [line for line in lines if "more refused or failed dials in the last 10 s" in line]
        self.assertEqual(len(summaries), 1, lines)
        self.assertIn("<Session client foo/", summaries[0])
        self.assertTrue(any("dial tcp/10.0.0.5.very-long-name." in line and "failed: connect to" in line
                            for line in lines), lines)
        self.assertFalse(session.closed)
        self.assertEqual(session.stream_count, 0)  # every one answered with an Error

    def test_dial_failures_summarised_when_the_session_ends(self) -> None:
        """What a throttled session left out is summed up as it ends, not lost."""
        capture = LogCapture(self)
        clock = Clock()
        session = Session(Direction().send, client_key="foo", clock=clock)
        for i in range(20):
            session.message_received(_codec.encode(_codec.connect(i + 1, 2 * i + 1, "tcp", "10.0.0.5:22")))
        session.drop()
        self.assertTrue(any("15 more refused or failed dials" in line for line in capture.lines),
                        capture.lines)

    def test_throttle_windows(self) -> None:
        """Burst lines per window, then one summary; a new window logs again."""
        capture = LogCapture(self)
        clock = Clock()
        from twisted.logger import Logger

        throttle = Throttle(clock, Logger(), "things", burst=2, window=10.0)
        for _ in range(5):
            throttle.warn("thing {n}", session="s", n=1)
        self.assertEqual(len(capture.lines), 2)
        clock.advance(10)
        self.assertEqual(capture.lines[-1], "s: 3 more things in the last 10 s, not logged one by one")
        throttle.warn("thing {n}", session="s", n=2)
        self.assertEqual(capture.lines[-1], "thing 2")


class UpgradeRefusalTests(SynchronousTestCase):
    def render(self, headers: dict[bytes, bytes], peers=None) -> DummyRequest:
        resource = TunnelResource(object(), header_authorizer, lambda: peers or {})
        request = DummyRequest([b""])
        request.clientproto = b"HTTP/1.1"
        for name, value in headers.items():
            request.requestHeaders.setRawHeaders(name, [value])
        add_handshake(request)
        resource.render(request)
        return request

    def test_control_characters_in_client_key(self) -> None:
        """ESC, BEL, NUL, newline or edge spaces in X-Tunnel-ID: 400, nothing upgraded."""
        for key in (b"foo\x1b[2J", b"bell\x07", b"nul\x00", b" padded", b"tab\tkey"):
            request = self.render({b"X-Tunnel-ID": key})
            self.assertEqual(request.responseCode, 400, key)
            self.assertIn(b"printable", b"".join(request.written))

    def test_control_characters_in_peer_id(self) -> None:
        request = self.render({b"X-API-Tunnel-ID": b"peer\x1b", b"X-API-Tunnel-Token": b"t"})
        self.assertEqual(request.responseCode, 400)
        self.assertIn(b"peer id must be printable", b"".join(request.written))


class DialFailureTextTests(SynchronousTestCase):
    """Why a dial failed, for a log line: never a Failure's repr, whatever an endpoint wrapped."""

    def test_wrapped_failures(self) -> None:
        from twisted.internet import error
        from twisted.python.failure import Failure

        from remotedialer.tunnel._logtext import dial_failure_text

        refused = Failure(error.ConnectionRefusedError())
        cases = [
            (error.ConnectError(osError=refused), "connection to h:1 refused"),
            (error.ConnectError(osError=error.DNSLookupError()), "name resolution failed for h"),
            (error.ConnectError(string=str(refused)), "cannot connect to h:1 (ConnectError)"),
            (ValueError(f"wrapped: {refused!s}"), "cannot connect to h:1 (ValueError)"),
        ]
        for exception, expected in cases:
            text = dial_failure_text(Failure(exception), "h", 1)
            self.assertEqual(text, expected)
            self.assertNotIn("Failure instance", text)
