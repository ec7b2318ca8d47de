"""
The HTTP/2 header-block bound (remotedialer.server._h2limit): frames read
by their headers only, in any split; a CONTINUATION flood refused, ordinary
traffic (data, settings, many small requests) never.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.server._h2limit import PREFACE, HeaderBlockLimit


def frame(kind: int, flags: int, payload: bytes, stream: int = 1) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream.to_bytes(4, "big") + payload


HEADERS, DATA, SETTINGS, CONTINUATION, END_HEADERS, END_STREAM = 0x1, 0x0, 0x4, 0x9, 0x4, 0x1


def feed_split(limit: HeaderBlockLimit, data: bytes, cuts: list[int]) -> str | None:
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    for start, end in itertools.pairwise(points):
        refused = limit.feed(data[start:end])
        if refused is not None:
            return refused
    return None


ORDINARY = PREFACE + frame(SETTINGS, 0, b"\0" * 12, 0) + b"".join(
    frame(HEADERS, END_HEADERS, b"h" * 200, stream) + frame(DATA, END_STREAM, b"d" * 60000, stream)
    for stream in range(1, 200, 2))


class HeaderBlockLimitTests(SynchronousTestCase):
    def test_continuation_flood_refused(self) -> None:
        limit = HeaderBlockLimit(max_bytes=64 * 1024)
        self.assertIsNone(limit.feed(PREFACE + frame(HEADERS, 0, b"h" * 100)))
        refused = None
        sent = 0
        while refused is None and sent < 10_000_000:
            refused = limit.feed(frame(CONTINUATION, 0, b"c" * 16384))
            sent += 16384
        self.assertEqual(refused, "HTTP/2 header block over 65536 bytes or 64 frames")
        self.assertLess(sent, 70 * 1024)

    def test_many_tiny_continuations_refused(self) -> None:
        limit = HeaderBlockLimit(max_bytes=64 * 1024, max_frames=64)
        data = PREFACE + frame(HEADERS, 0, b"h") + frame(CONTINUATION, 0, b"c") * 70
        self.assertIsNotNone(limit.feed(data))

    def test_block_ended_resets(self) -> None:
        """A block ended by END_HEADERS: the next one counts from zero."""
        limit = HeaderBlockLimit(max_bytes=1000)
        block = frame(HEADERS, 0, b"h" * 400) + frame(CONTINUATION, END_HEADERS, b"c" * 400)
        self.assertIsNone(limit.feed(PREFACE + block * 50))
        self.assertIsNotNone(limit.feed(frame(HEADERS, 0, b"h" * 600) + frame(CONTINUATION, 0, b"c" * 600)))

    @given(st.lists(st.integers(0, len(ORDINARY)), max_size=40))
    def test_ordinary_traffic_in_any_split(self, cuts: list[int]) -> None:
        """Data frames (skipped by length, however large), settings, 100 requests: never refused."""
        self.assertIsNone(feed_split(HeaderBlockLimit(max_bytes=1024), ORDINARY, cuts))

    @given(st.lists(st.integers(0, 5000), max_size=20))
    def test_flood_in_any_split(self, cuts: list[int]) -> None:
        data = PREFACE + frame(HEADERS, 0, b"h" * 10) + frame(CONTINUATION, 0, b"c" * 900) * 5
        self.assertIsNotNone(feed_split(HeaderBlockLimit(max_bytes=2048), data, cuts))
