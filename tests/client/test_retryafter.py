"""
A server that answers the upgrade 429 (its limiter) or 503 (its drain)
with C{Retry-After} is taken at its word, on the simulated network: the
client (and a server's link to a peer) comes back after that wait plus a
jitter, and the refusal is not a failure, so the backoff does not grow;
the same answers without Retry-After, or other statuses, still count.
"""

from __future__ import annotations

from email.utils import formatdate

from twisted.logger import formatEvent
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from tests.client.test_attempts import LogCapture
from tests.netsim import Network


class _Refusing(Resource):
    """Answers every request C{code}, with C{Retry-After: retry_after} if given; counts them."""

    isLeaf = True

    def __init__(self, code: int, retry_after: str | None) -> None:
        super().__init__()
        self.code = code
        self.retry_after = retry_after
        self.times: list[float] = []

    def render(self, request):  # type: ignore[no-untyped-def]
        self.times.append(request.channel.site.reactor.seconds())
        request.setResponseCode(self.code, {429: b"Too Many Requests"}.get(self.code))
        if self.retry_after is not None:
            request.setHeader(b"Retry-After", self.retry_after.encode())
        return b"not now\n"


class RetryAfterTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.net = Network(self)
        self.log = LogCapture(self)
        self.policy_calls: list[int] = []

    def policy(self, attempt: int) -> float:
        self.policy_calls.append(attempt)
        return 0.5

    def refusing(self, code: int, retry_after: str | None) -> tuple[_Refusing, str]:
        refusing = _Refusing(code, retry_after)
        root = Resource()
        root.putChild(b"connect", refusing)
        self.net.listen(Site(root, reactor=self.net.reactor), "10.0.0.1:8123")
        return refusing, "ws://10.0.0.1:8123/connect"

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.log.failed()]

    def run_until(self, done, limit: float = 60.0) -> None:  # type: ignore[no-untyped-def]
        """Advance the network in small steps until C{done()}."""
        for _ in range(round(limit / 0.05)):
            if done():
                return
            self.net.run(0.05)
        self.fail("not within the limit")

    def test_429_with_retry_after(self) -> None:
        refusing, url = self.refusing(429, "7")
        client = self.net.client(url, retry_policy=self.policy)
        client.random = lambda: 0.5  # the jitter: half of max(7 / 2, 1)
        self.net.run(30)
        gaps = [b - a for a, b in zip(refusing.times, refusing.times[1:], strict=False)]
        self.assertGreater(len(gaps), 2)
        for gap in gaps:
            self.assertAlmostEqual(gap, 7 + 1.75, delta=0.5)  # (plus the simulated network's round trips)
        self.assertEqual(self.policy_calls, [])  # never a failure: the backoff did not grow
        self.assertEqual(client.asked_to_wait, len(refusing.times))
        self.assertEqual(self.lines()[0], "tunnel to ws://10.0.0.1:8123/connect failed: server answered 429 "
                                          "Too Many Requests, retry after 7 s; retrying in 8.8 s")

    def test_jitter_spreads_a_fleet(self) -> None:
        refusing, url = self.refusing(429, "2")
        waits = []
        for value in (0.0, 0.25, 0.99):
            client = self.net.client(url, retry_policy=self.policy)
            client.random = lambda value=value: value  # type: ignore[misc]
            self.net.run(0.5)
            waits.append(self.log.failed()[-1]["retry_in"])
            self.net.run(0.0)
        self.assertEqual(waits, [2.0, 2.2, 3.0])  # 2 s, plus up to max(2 / 2, 1) s

    def test_503_of_a_draining_server(self) -> None:
        site = self.net.serve_tunnel("10.0.0.1:8123")
        site.server.drain(timeout=0)
        client = self.net.client(site.url, retry_policy=self.policy)
        client.random = lambda: 0.0
        self.net.run(10)
        self.assertEqual(self.policy_calls, [])
        self.assertGreaterEqual(client.asked_to_wait, 8)  # one a second (the drain says Retry-After: 1)
        self.assertEqual(set(self.lines()), {
            "tunnel to ws://10.0.0.1:8123/connect failed: server answered 503 Service Unavailable, "
            "retry after 1 s; retrying in 1.0 s"})

    def test_http_date(self) -> None:
        refusing, url = self.refusing(503, formatdate(self.net.reactor.seconds() + 5, usegmt=True))
        client = self.net.client(url, retry_policy=self.policy)
        client.random = lambda: 0.0
        self.run_until(lambda: len(refusing.times) == 2)
        self.assertEqual(self.policy_calls, [])
        self.assertAlmostEqual(refusing.times[1] - refusing.times[0], 5, delta=0.5)
        self.assertIn("retry after 5 s; retrying in 5.0 s", self.lines()[0])

    def test_without_retry_after_it_is_a_failure(self) -> None:
        for code, retry_after in ((429, None), (503, None), (503, "soon"), (401, "5"), (500, "5")):
            self.policy_calls.clear()
            self.net = Network(self)
            refusing, url = self.refusing(code, retry_after)
            client = self.net.client(url, retry_policy=self.policy)
            self.run_until(lambda: len(self.policy_calls) >= 3)  # (called at once)
            self.assertEqual(self.policy_calls, [1, 2, 3], (code, retry_after))
            self.assertEqual(client.asked_to_wait, 0)

    def test_backoff_resumes_where_it_was(self) -> None:
        """Failures before a Retry-After keep counting after it: it neither grows nor resets the backoff."""
        refusing, url = self.refusing(401, None)
        client = self.net.client(url, retry_policy=self.policy)
        self.run_until(lambda: len(self.policy_calls) == 2)
        refusing.code, refusing.retry_after = 503, "1"
        self.run_until(lambda: client.asked_to_wait == 1)
        refusing.code, refusing.retry_after = 401, None
        self.run_until(lambda: len(self.policy_calls) == 3)
        self.assertEqual(self.policy_calls, [1, 2, 3])
        self.assertEqual(client.asked_to_wait, 1)

    def test_peer_link(self) -> None:
        """A server's link to a draining peer waits as the peer asks."""
        peer = self.net.serve_tunnel("10.0.0.2:8123", peer_id="b", peer_token="t")
        peer.server.drain(timeout=0)
        site = self.net.serve_tunnel("10.0.0.1:8123", peer_id="a", peer_token="t")
        self.net.start(site.server)
        site.server.add_peer("b", "t", peer.url)
        link = site.server.peer_link("b")
        assert link is not None
        link.random = lambda: 0.0
        self.net.run(6)
        lines = [formatEvent(e) for e in self.log.events if "link to" in e.get("log_format", "")
                 and "reason" in e]
        self.assertGreaterEqual(len(lines), 4)
        self.assertEqual(set(lines), {"peer b: link to ws://10.0.0.2:8123/connect failed: server answered "
                                      "503 Service Unavailable, retry after 1 s; retrying in 1.0 s"})
        self.assertEqual(link.asked_to_wait, len(lines))
