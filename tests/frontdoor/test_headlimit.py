"""
The front door's bound on response heads (remotedialer.frontdoor._headlimit): a head
at the limit passes, one byte or one header line more is refused with the
limits' text; the body after a head is never counted; a head that does not
start as HTTP is refused at once.  (End to end, a target answering with
endless header lines gets a 502 at once: tests.system.test_frontdoor.)
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from remotedialer.frontdoor._headlimit import NOT_HTTP, HeadLimit


def head(lines: int, pad: int = 0) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(lines - 1)) + \
        b"X-Last: " + b"p" * pad + b"\r\n\r\n"


def feed(limit: HeadLimit, data: bytes, step: int | None = None) -> str | None:
    step = step or len(data) or 1
    for i in range(0, len(data), step):
        refused = limit.feed(data[i:i + step])
        if refused is not None:
            return refused
    return None


class HeadLimitTests(SynchronousTestCase):
    def test_head_at_byte_limit(self) -> None:
        data = head(3)
        limit = HeadLimit(head_bytes=len(data), max_headers=10)
        self.assertIsNone(feed(limit, data, step=7))
        self.assertIsNone(limit.feed(b"body" * 10_000))  # the body is not counted
        refused = HeadLimit(head_bytes=len(data) - 1, max_headers=10).feed(data)
        self.assertEqual(refused, f"the target's response head is over {len(data) - 1} bytes or 10 headers")

    def test_header_count(self) -> None:
        self.assertIsNone(HeadLimit(100_000, 10).feed(head(10)))
        self.assertIsNotNone(HeadLimit(100_000, 10).feed(head(11)))

    def test_endless_head_cut_early(self) -> None:
        """Header lines without end are refused as soon as the limit passes."""
        limit = HeadLimit(head_bytes=1000, max_headers=1000)
        self.assertIsNone(limit.feed(b"HTTP/1.1 200 OK\r\n"))
        sent = 0
        while limit.feed(b"X-A: " + b"a" * 95 + b"\r\n") is None and sent < 100_000:
            sent += 102
        self.assertLess(sent, 1000)

    def test_rearmed_for_each_request(self) -> None:
        """arm() (a kept-alive connection handed out again) counts the next response's head."""
        limit = HeadLimit(100_000, 10)
        self.assertIsNone(limit.feed(head(10) + b"body"))
        self.assertIsNone(limit.feed(head(11)))  # not a head: the first response's body, not counted
        limit.arm()
        self.assertIsNotNone(limit.feed(head(11)))

    def test_informational_head_then_counted_head(self) -> None:
        """After a 1xx head another head follows: it is counted too, in the same read or a later one."""
        informational = b"HTTP/1.1 100 Continue\r\n\r\n"
        for split in (False, True):
            limit = HeadLimit(100_000, 10)
            if split:
                self.assertIsNone(limit.feed(informational))
                self.assertIsNotNone(limit.feed(head(11)), split)
            else:
                self.assertIsNotNone(limit.feed(informational + head(11)), split)
            self.assertIsNone(HeadLimit(100_000, 10).feed(informational + head(10) + b"body"))

    def test_switching_protocols_ends_the_count(self) -> None:
        """After a 101 head come the bytes of the protocol switched to: not a head, not counted."""
        switched = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: SPDY/3.1\r\n\r\n"
        for split in (False, True):
            limit = HeadLimit(100_000, 10)
            if split:
                self.assertIsNone(limit.feed(switched))
                self.assertIsNone(limit.feed(b"\x80\x03\x00\x01 not HTTP" * 1000), split)
            else:
                self.assertIsNone(limit.feed(switched + b"\x80\x03\x00\x01 not HTTP"), split)
            self.assertFalse(limit.counting)

    def test_not_http_refused_at_once(self) -> None:
        """An answer that does not start as HTTP/ is refused from its first bytes, not at a limit."""
        self.assertEqual(HeadLimit().feed(b"SSH-2.0-OpenSSH_9.2\r\n"), NOT_HTTP)
        limit = HeadLimit()
        self.assertIsNone(feed(limit, b"HTT", step=1))
        self.assertEqual(limit.feed(b"X/1.1 200 OK\r\n"), NOT_HTTP)
        self.assertIsNone(feed(HeadLimit(), head(3), step=1))
