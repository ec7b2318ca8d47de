"""
Reading a front-door request (remotedialer.frontdoor._request): the
front door's own ?timeout=, in seconds or as the Go duration client-go
(kubectl) sends.
"""

from __future__ import annotations

import math

from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from remotedialer.frontdoor._request import DROPPED, Fetch, parse, parse_timeout


def request(query: bytes) -> DummyRequest:
    r = DummyRequest([b"foo", b"http", b"10.0.0.5:6443", b"version"])
    r.prepath = [b"client"]
    r.uri = b"/client/foo/http/10.0.0.5:6443/version" + (b"?" + query if query else b"")
    for pair in filter(None, query.split(b"&")):
        name, _, value = pair.partition(b"=")
        r.args.setdefault(name, []).append(value)
    return r


class TimeoutTests(SynchronousTestCase):
    def test_seconds_and_go_durations(self) -> None:
        for text, seconds in (("15", 15.0), ("2.5", 2.5), ("32s", 32.0), ("1m0s", 60.0), ("1h0m0s", 3600.0),
                              ("500ms", 0.5), ("1.5m", 90.0)):
            value = parse_timeout(text)
            self.assertEqual(value, seconds, text)
        for text in ("soon", "s", "1x", "", "32S", "1m 0s"):
            self.assertTrue(math.isnan(parse_timeout(text)), text)

    def test_client_go_timeout_taken_and_not_passed_on(self) -> None:
        """kubectl's ?timeout=32s is the front door's wait; the target gets the rest of the query."""
        fetch = parse(request(b"timeout=32s&limit=500"), DROPPED, close=False)
        self.assertIsInstance(fetch, Fetch)
        self.assertEqual((fetch.timeout, fetch.path), (32.0, b"/version?limit=500"))

    def test_bad_timeouts_are_400(self) -> None:
        for value in (b"soon", b"0", b"-1", b"nan", b"inf", b"2h"):
            status, text = parse(request(b"timeout=" + value), DROPPED, close=False)
            self.assertEqual(status, 400, value)
            self.assertIn("Go duration such as 32s", text)
