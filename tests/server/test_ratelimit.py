"""
The brute-force limiter of tunnel authentication, on a simulated clock:
delays double and cap, a success resets them, one address gets fewer than
20 judged attempts a second however many connections it opens, other
addresses are not slowed, memory is bounded, failures are logged once per
interval, and no credential reaches the log.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import provider

from remotedialer.protocol._exceptions import TooManyAttempts
from remotedialer.server._ratelimit import FailureLimiter, address_key
from tests.support import add_handshake

ATTACKER = "203.0.113.7"
OTHER = "198.51.100.2"


def _capture(test: SynchronousTestCase) -> list[str]:
    """The limiter's log lines from now on, formatted."""
    lines: list[str] = []

    @provider(ILogObserver)
    def observe(event: LogEvent) -> None:
        if event.get("log_namespace", "").startswith("remotedialer.server._ratelimit"):
            lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    test.addCleanup(globalLogPublisher.removeObserver, observe)
    return lines


class _Attacker:
    """
    C{connections} parallel connections from one address, each sending its
    next attempt as soon as the last one is answered (a 429 included), at
    the next tick of L{_run}; every call of the check is a judged attempt,
    timed.
    """

    def __init__(
        self, clock: Clock, limiter: FailureLimiter, address: str, connections: int,
        check: Callable[[], bool | defer.Deferred[bool]],
    ) -> None:
        self.clock = clock
        self.limiter = limiter
        self.address = address
        self.check = check
        self.idle = connections
        self.judged: list[float] = []
        self.refused = 0
        _attackers.append(self)
        self.tick()

    def _judged_check(self) -> bool | defer.Deferred[bool]:
        self.judged.append(self.clock.seconds())
        return self.check()

    def tick(self) -> None:
        """Every idle connection sends an attempt."""
        for _ in range(self.idle):
            self.idle -= 1
            d = self.limiter.judge(self.address, self._judged_check)
            d.addErrback(self._refused)
            d.addBoth(self._answered)

    def _refused(self, failure: Failure) -> None:
        failure.trap(TooManyAttempts)
        self.refused += 1

    def _answered(self, _: object) -> None:
        self.idle += 1

    def per_second(self) -> Counter[int]:
        return Counter(int(t) for t in self.judged)

    def most_in_any_second(self) -> int:
        """The most judged attempts in any 1-second window (sliding)."""
        times = sorted(self.judged)
        most, first = 0, 0
        for last, t in enumerate(times):
            while times[first] <= t - 1.0:
                first += 1
            most = max(most, last - first + 1)
        return most


#: The attackers of the running test, driven by L{_run}.
_attackers: list[_Attacker] = []


def _run(clock: Clock, seconds: float, step: float = 0.01) -> None:
    """Advance C{clock} by C{seconds}, in steps; the attackers retry at every step."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for attacker in _attackers:
            attacker.tick()


class _TestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(_attackers.clear)


class DelayTests(_TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock)

    def test_fresh_address_no_delay(self) -> None:
        self.assertEqual(self.limiter.delay_for(ATTACKER), 0.0)
        self.assertTrue(self.limiter.allowed(ATTACKER))
        self.assertEqual(self.limiter.tracked, 0)

    def test_delays_double_and_cap(self) -> None:
        delays = []
        for _ in range(10):
            self.limiter.failed(ATTACKER)
            delays.append(self.limiter.delay_for(ATTACKER))
        expected = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0, 10.0]
        for got, want in zip(delays, expected, strict=True):
            self.assertAlmostEqual(got, want)
        for _ in range(1000):  # no overflow however many
            self.limiter.failed(ATTACKER)
        self.assertEqual(self.limiter.delay_for(ATTACKER), 10.0)

    def test_success_resets(self) -> None:
        for _ in range(6):
            self.limiter.failed(ATTACKER)
        self.limiter.succeeded(ATTACKER)
        self.assertEqual(self.limiter.delay_for(ATTACKER), 0.0)
        self.limiter.failed(ATTACKER)
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER), 0.1)

    def test_judge_holds_a_failing_caller(self) -> None:
        """One connection, sending each attempt after the last answer: each waits the doubled delay."""
        holds = []
        for _ in range(10):
            hold = self.limiter.delay_for(ATTACKER)
            d = self.limiter.judge(ATTACKER, lambda: False)
            if hold:
                self.clock.advance(hold * 0.99)
                self.assertNoResult(d)
                self.clock.advance(hold * 0.01)
            self.assertFalse(self.successResultOf(d))
            holds.append(hold)
        expected = [0.0, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]
        for got, want in zip(holds, expected, strict=True):
            self.assertAlmostEqual(got, want)

    def test_judge_runs_at_once_without_failures(self) -> None:
        """No failures, nothing in flight: the check is called synchronously."""
        d = self.limiter.judge(ATTACKER, lambda: "identity")
        self.assertEqual(self.successResultOf(d), "identity")

    def test_judge_success_resets_delay(self) -> None:
        for _ in range(5):
            self.limiter.failed(ATTACKER)
        d = self.limiter.judge(ATTACKER, lambda: True)
        self.assertNoResult(d)
        self.clock.advance(1.6)
        self.assertTrue(self.successResultOf(d))
        self.clock.advance(0.1)  # past the spacing
        self.assertEqual(self.limiter.delay_for(ATTACKER), 0.0)
        self.assertTrue(self.successResultOf(self.limiter.judge(ATTACKER, lambda: True)))

    def test_check_exception_is_a_failure_and_propagates(self) -> None:
        d = self.limiter.judge(ATTACKER, lambda: 1 / 0)
        self.failureResultOf(d, ZeroDivisionError)
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER), 0.1)

    def test_false_values_are_failures(self) -> None:
        for value in (False, None, ""):
            self.clock.advance(20)
            self.limiter.judge(ATTACKER, lambda v=value: v)  # type: ignore[misc]
            self.clock.advance(20)
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER), 0.4)

    def test_async_check(self) -> None:
        pending: defer.Deferred[bool] = defer.Deferred()
        d = self.limiter.judge(ATTACKER, lambda: pending)
        self.assertNoResult(d)
        self.assertEqual(self.limiter.delay_for(ATTACKER), 0.1)  # the spacing holds the next slot
        pending.callback(False)
        self.assertFalse(self.successResultOf(d))
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER), 0.1)

    def test_refused_over_in_flight(self) -> None:
        limiter = FailureLimiter(self.clock, max_in_flight=2)
        limiter.failed(ATTACKER)
        calls: list[int] = []
        waiting = [limiter.judge(ATTACKER, lambda: calls.append(1)) for _ in range(2)]
        self.assertFalse(limiter.allowed(ATTACKER))
        refused = self.failureResultOf(limiter.judge(ATTACKER, lambda: calls.append(1)), TooManyAttempts)
        self.assertGreater(refused.value.retry_after, 0)  # type: ignore[attr-defined]
        self.assertIn("retry in 1 s", refused.getErrorMessage())
        self.assertEqual(calls, [])
        self.clock.advance(0.2)
        self.assertEqual(len(calls), 2)
        for d in waiting:
            self.successResultOf(d)
        self.assertTrue(limiter.allowed(ATTACKER))

    def test_cancel_frees_slot_without_judging(self) -> None:
        limiter = FailureLimiter(self.clock, max_in_flight=1)
        limiter.failed(ATTACKER)
        calls: list[int] = []
        d = limiter.judge(ATTACKER, lambda: calls.append(1))
        self.assertFalse(limiter.allowed(ATTACKER))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(limiter.allowed(ATTACKER))
        self.clock.advance(20)
        self.assertEqual(calls, [])
        self.assertAlmostEqual(limiter.delay_for(ATTACKER), 0.1)  # not counted as a failure

    def test_cancel_while_check_runs(self) -> None:
        pending: defer.Deferred[bool] = defer.Deferred()
        d = self.limiter.judge(ATTACKER, lambda: pending)
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        pending.callback(False)  # its outcome is still recorded
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER), 0.1)

    def test_bad_parameters(self) -> None:
        for kwargs in ({"base_delay": 0}, {"base_delay": 2, "max_delay": 1}, {"max_in_flight": 0},
                       {"max_tracked": 0}, {"forget_after": 0}, {"log_interval": -1}):
            self.assertRaises(ValueError, FailureLimiter, self.clock, **kwargs)


class ParallelTests(_TestCase):
    """Many connections from one address: fewer than 20 judged attempts in any second."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock)

    def assertLimited(self, attacker: _Attacker) -> None:
        _run(self.clock, 10)
        per_second = attacker.per_second()
        self.assertTrue(set(per_second) <= set(range(10)), per_second)
        self.assertGreater(per_second[0], 1)
        self.assertLess(max(per_second.values()), 20, per_second)
        self.assertLess(attacker.most_in_any_second(), 20)
        self.assertLess(len(attacker.judged), 10 * 20)
        self.assertGreater(attacker.refused, 1000)  # the rest were answered 429 at once

    def test_100_parallel_failing(self) -> None:
        attacker = _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: False)
        self.assertLimited(attacker)
        # backoff: most of the judged attempts came early
        self.assertLess(len(attacker.judged), 40)

    def test_100_parallel_slow_check(self) -> None:
        """An authorizer that takes its time does not let more attempts through."""

        def slow() -> defer.Deferred[bool]:
            d: defer.Deferred[bool] = defer.Deferred()
            self.clock.callLater(0.05, d.callback, False)
            return d

        self.assertLimited(_Attacker(self.clock, self.limiter, ATTACKER, 100, slow))

    def test_100_parallel_with_a_valid_credential(self) -> None:
        """Alternating a valid credential with guesses does not lift the limit."""
        outcomes = iter([True, False] * 1000)
        attacker = _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: next(outcomes))
        self.assertLimited(attacker)

    def test_other_addresses_unaffected(self) -> None:
        _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: False)
        _run(self.clock, 5)
        self.assertFalse(self.limiter.allowed(ATTACKER))
        self.assertEqual(self.limiter.delay_for(OTHER), 0.0)
        self.assertTrue(self.limiter.allowed(OTHER))
        d = self.limiter.judge(OTHER, lambda: "ok")
        self.assertEqual(self.successResultOf(d), "ok")  # at once, synchronously
        self.limiter.judge(OTHER, lambda: False)
        self.clock.advance(0.1)
        self.assertAlmostEqual(self.limiter.delay_for(OTHER), 0.1)  # its own count, not the attacker's


class MemoryTests(_TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()

    def test_max_tracked_evicts_oldest(self) -> None:
        limiter = FailureLimiter(self.clock, max_tracked=100)
        for i in range(1000):
            limiter.failed(f"10.0.{i // 256}.{i % 256}")
            self.assertLessEqual(limiter.tracked, 100)
        self.assertEqual(limiter.tracked, 100)
        self.assertEqual(limiter.delay_for("10.0.0.0"), 0.0)  # evicted
        self.assertAlmostEqual(limiter.delay_for("10.0.3.231"), 0.1)  # the last one, kept

    def test_recently_active_kept(self) -> None:
        limiter = FailureLimiter(self.clock, max_tracked=3)
        for name in "abc":
            limiter.failed(name)
        limiter.failed("a")  # a is now the most recent: b goes first
        limiter.failed("d")
        self.assertEqual(limiter.delay_for("b"), 0.0)
        self.assertAlmostEqual(limiter.delay_for("a"), 0.2)

    def test_forget_after(self) -> None:
        limiter = FailureLimiter(self.clock, forget_after=300.0)
        for i in range(50):
            limiter.failed(f"10.0.0.{i}")
        self.clock.advance(299)
        self.assertEqual(limiter.tracked, 50)
        self.assertAlmostEqual(limiter.delay_for("10.0.0.7"), 0.1)
        self.clock.advance(1)
        self.assertEqual(limiter.delay_for("10.0.0.7"), 0.0)
        self.assertEqual(limiter.tracked, 0)

    def test_successes_not_kept(self) -> None:
        limiter = FailureLimiter(self.clock)
        for i in range(50):
            self.successResultOf(limiter.judge(f"10.0.0.{i}", lambda: True))
        self.clock.advance(0.1)
        self.assertEqual(limiter.tracked, 0)

    def test_parallel_attacker_stays_one_entry(self) -> None:
        limiter = FailureLimiter(self.clock)
        _Attacker(self.clock, limiter, ATTACKER, 100, lambda: False)
        _run(self.clock, 2)
        self.assertEqual(limiter.tracked, 1)


class LogTests(_TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock, log_interval=60.0)
        self.lines = _capture(self)

    def test_one_line_per_interval(self) -> None:
        for _ in range(30):
            self.limiter.failed(ATTACKER)
            self.clock.advance(1.9)
        self.assertEqual(self.lines, [])
        self.clock.advance(3.1)
        self.assertEqual(self.lines, [f"30 failed tunnel authentications from {ATTACKER} in the last 60 s"])
        for _ in range(59):
            self.limiter.failed(ATTACKER)
            self.clock.advance(1)
        self.limiter.failed(OTHER)
        self.clock.advance(120)
        self.assertEqual(self.lines[1:], [
            f"59 failed tunnel authentications from {ATTACKER} in the last 60 s",
            f"1 failed tunnel authentication from {OTHER} in the last 60 s",
        ])

    def test_parallel_attacker_logged_once_per_interval(self) -> None:
        _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: False)
        _run(self.clock, 181, step=0.25)
        failures = [line for line in self.lines if "failed" in line]
        refusals = [line for line in self.lines if "refused (429)" in line]
        self.assertEqual(len(failures), 3)
        self.assertEqual(len(refusals), 3)
        self.assertTrue(all(ATTACKER in line for line in self.lines))

    def test_eviction_logs_pending_count(self) -> None:
        limiter = FailureLimiter(self.clock, max_tracked=1)
        limiter.failed(ATTACKER)
        limiter.failed(OTHER)
        self.assertEqual(self.lines, [f"1 failed tunnel authentication from {ATTACKER} in the last 60 s"])

    def test_flush(self) -> None:
        self.limiter.failed(ATTACKER)
        self.limiter.flush()
        self.assertEqual(len(self.lines), 1)
        self.clock.advance(120)
        self.assertEqual(len(self.lines), 1)

    def test_address_escaped(self) -> None:
        self.limiter.failed("evil\x1b[2J")
        self.limiter.flush()
        self.assertIn("evil\\x1b[2J", self.lines[0])

    def test_no_token_in_any_log_line(self) -> None:
        token = "s3cr3t-Peer-Token-0123456789abcdef"
        expected = "the-right-token-fedcba9876543210"
        events: list[LogEvent] = []

        @provider(ILogObserver)
        def everything(event: LogEvent) -> None:
            events.append(event)

        globalLogPublisher.addObserver(everything)
        self.addCleanup(globalLogPublisher.removeObserver, everything)

        def check() -> bool:
            return hmac.compare_digest(token.encode(), expected.encode())

        def raising() -> bool:
            raise ValueError("refused")

        _Attacker(self.clock, self.limiter, ATTACKER, 100, check)
        _Attacker(self.clock, self.limiter, OTHER, 10, raising)
        _run(self.clock, 130, step=0.25)
        self.limiter.flush()
        self.assertGreater(len(self.lines), 2)
        for event in events:
            self.assertNotIn(token, formatEvent(event))
            self.assertNotIn(token, repr(event))
            self.assertNotIn(expected, repr(event))


class AddressKeyTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        self.assertEqual(address_key(IPv4Address("TCP", "203.0.113.7", 50123)), "203.0.113.7")

    def test_ipv6_is_its_64(self) -> None:
        one = address_key(IPv6Address("TCP", "2001:db8:1:2:aaaa::1", 443))
        two = address_key(IPv6Address("TCP", "2001:db8:1:2:bbbb::9", 443))
        self.assertEqual(one, "2001:db8:1:2::/64")
        self.assertEqual(one, two)
        self.assertNotEqual(one, address_key(IPv6Address("TCP", "2001:db8:1:3::1", 443)))

    def test_ipv4_mapped(self) -> None:
        self.assertEqual(address_key(IPv6Address("TCP", "::ffff:203.0.113.7", 443)), "203.0.113.7")

    def test_scoped_ipv6(self) -> None:
        self.assertEqual(address_key(IPv6Address("TCP", "fe80::1%eth0", 443)), "fe80::/64")

    def test_other_addresses(self) -> None:
        self.assertEqual(address_key(None), "?")
        self.assertEqual(address_key(UNIXAddress(b"/run/sock")), address_key(UNIXAddress(b"/run/sock")))


class TunnelResourceLimiterTests(SynchronousTestCase):
    """The tunnel resource with the limiter: peer tokens cannot be guessed at speed."""

    def test_guessing_peer_tokens(self) -> None:
        from twisted.internet.address import IPv4Address
        from twisted.web.test.requesthelper import DummyRequest

        from remotedialer.server._resource import TunnelResource, header_authorizer

        clock = Clock()
        limiter = FailureLimiter(clock)
        resource = TunnelResource(object(), header_authorizer, lambda: {"peer": "right"},  # type: ignore[arg-type]
                                  limiter=limiter)
        answered: dict[int, int] = {}

        def attempt() -> DummyRequest:
            request = DummyRequest([b""])
            request.clientproto = b"HTTP/1.1"
            request.client = IPv4Address("TCP", "203.0.113.7", 40000)
            request.requestHeaders.setRawHeaders(b"X-API-Tunnel-ID", [b"peer"])
            request.requestHeaders.setRawHeaders(b"X-API-Tunnel-Token", [b"guess"])
            add_handshake(request)
            resource.render(request)
            return request

        requests = []
        for _ in range(100):  # ten seconds of a guesser with ten connections at once
            requests += [attempt() for _ in range(10)]
            clock.advance(0.1)
        clock.advance(20)
        for request in requests:
            answered[request.responseCode] = answered.get(request.responseCode, 0) + 1
        self.assertLess(answered.get(401, 0), 20 * 10, answered)  # judged: under 20 a second
        self.assertGreater(answered.get(429, 0), 0)
        self.assertEqual(set(answered), {401, 429})
