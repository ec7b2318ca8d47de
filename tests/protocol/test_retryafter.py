"""C{Retry-After} read as seconds: delay-seconds, HTTP-dates, nonsense, bounds."""

from __future__ import annotations

from email.utils import formatdate

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol._retryafter import RETRY_AFTER_MAX, retry_after_seconds

NOW = 1_800_000_000.0


class RetryAfterTests(SynchronousTestCase):
    def test_delay_seconds(self) -> None:
        for value, seconds in (("0", 0.0), ("1", 1.0), (" 120 ", 120.0), (b"7", 7.0), ("299", 299.0)):
            self.assertEqual(retry_after_seconds(value, NOW), seconds)

    def test_capped(self) -> None:
        self.assertEqual(retry_after_seconds("86400", NOW), RETRY_AFTER_MAX)
        self.assertEqual(retry_after_seconds("9" * 400, NOW), RETRY_AFTER_MAX)

    def test_http_date(self) -> None:
        self.assertEqual(retry_after_seconds(formatdate(NOW + 30, usegmt=True), NOW), 30.0)
        self.assertEqual(retry_after_seconds(formatdate(NOW - 30, usegmt=True), NOW), 0.0)
        self.assertEqual(retry_after_seconds(formatdate(NOW + 10**6, usegmt=True), NOW), RETRY_AFTER_MAX)

    def test_nothing_usable(self) -> None:
        for value in (None, "", "soon", "-1", "1.5", "١٢", "Wed, 21 Oct 2015 07:28:00", "\x00"):
            self.assertIsNone(retry_after_seconds(value, NOW), repr(value))

    @given(st.one_of(st.text(max_size=64), st.binary(max_size=64)))
    def test_anything(self, value: str | bytes) -> None:
        seconds = retry_after_seconds(value, NOW)
        self.assertTrue(seconds is None or 0.0 <= seconds <= RETRY_AFTER_MAX)
