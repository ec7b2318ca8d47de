"""
The brute-force limiter of tunnel authentication, on a simulated clock:
successes are judged at once and cost nothing, however many come from one
address at once; failures spend the address's budget (a burst, then a
steady rate), and only the attempts that may be guesses (an id that failed
from the address) wait for it, so a guesser mixed into a fleet of valid
agents behind one address is held to the rate while the fleet is not
slowed at all; memory is bounded, failures are logged once per interval,
and no credential reaches the log.
"""

from __future__ import annotations

import hmac
from collections import Counter
from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from zope.interface import provider

from remotedialer.protocol._exceptions import TooManyAttempts
from remotedialer.server._ratelimit import FailureLimiter, address_key
from tests.support import add_handshake

ATTACKER = "203.0.113.7"
OTHER = "198.51.100.2"
#: The documented defaults: a burst of 10 failures, then one every 2 s.
BURST = 10
RATE = 0.5


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
    next attempt (claiming C{claim()}) as soon as the last one is answered
    (a 429 included), at the next tick of L{_run}; every call of the check
    is a judged attempt, timed.
    """

    def __init__(
        self, clock: Clock, limiter: FailureLimiter, address: str, connections: int,
        check: Callable[[], bool | defer.Deferred[bool]], claim: Callable[[], str] = lambda: "victim",
    ) -> None:
        self.clock = clock
        self.limiter = limiter
        self.address = address
        self.check = check
        self.claim = claim
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
            d = self.limiter.judge(self.address, self._judged_check, self.claim())
            d.addErrback(self._refused)
            d.addBoth(self._answered)

    def _refused(self, failure: Failure) -> None:
        failure.trap(TooManyAttempts)
        self.refused += 1

    def _answered(self, _: object) -> None:
        self.idle += 1

    def per_second(self) -> Counter[int]:
        return Counter(int(t) for t in self.judged)

    def most_in_any(self, window: float) -> int:
        """The most judged attempts in any C{window} seconds (sliding)."""
        times = sorted(self.judged)
        most, first = 0, 0
        for last, t in enumerate(times):
            while times[first] <= t - window:
                first += 1
            most = max(most, last - first + 1)
        return most


#: The attackers of the running test, driven by L{_run}.
_attackers: list[_Attacker] = []


def _run(clock: Clock, seconds: float, step: float = 0.01, each: Callable[[], object] | None = None) -> None:
    """Advance C{clock} by C{seconds}, in steps; the attackers retry (and C{each} runs) at every step."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        for attacker in _attackers:
            attacker.tick()
        if each is not None:
            each()


def _most_allowed(seconds: float, ids: int = 1) -> float:
    """What the module's docstring promises: failures judged in any C{seconds}, over C{ids} ids."""
    return ids + BURST + RATE * seconds


class _TestCase(SynchronousTestCase):
    def setUp(self) -> None:
        self.addCleanup(_attackers.clear)


class FreeLaneTests(_TestCase):
    """What is never a guess is judged at once, and costs nothing."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock)

    def test_fresh_address_no_delay(self) -> None:
        self.assertEqual(self.limiter.delay_for(ATTACKER), 0.0)
        self.assertTrue(self.limiter.allowed(ATTACKER))
        self.assertEqual(self.limiter.tracked, 0)

    def test_storm_of_valid_tokens_from_one_address(self) -> None:
        """
        2,000 agents behind one load balancer, all at the same instant (a
        server restarted): every one is judged at once, synchronously, and
        the limiter keeps nothing of them.
        """
        results = [self.limiter.judge(ATTACKER, lambda i=i: f"agent-{i}", f"agent-{i}")  # type: ignore[misc]
                   for i in range(2000)]
        self.assertEqual([self.successResultOf(d) for d in results], [f"agent-{i}" for i in range(2000)])
        self.assertEqual(self.limiter.tracked, 0)

    def test_same_id_again_at_once(self) -> None:
        """An agent's rolling update (two processes, one token) is not held either."""
        for _ in range(50):
            self.assertTrue(self.successResultOf(self.limiter.judge(ATTACKER, lambda: True, "foo")))

    def test_async_valid_checks_at_once(self) -> None:
        """An authorizer that answers later: a storm of them is judged at once all the same."""
        pending = [defer.Deferred() for _ in range(1000)]
        results = [self.limiter.judge(ATTACKER, lambda d=d: d, f"agent-{i}")  # type: ignore[misc]
                   for i, d in enumerate(pending)]
        for d in pending:
            d.callback(True)
        for d in results:
            self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.limiter.tracked, 0)

    def test_an_id_being_judged_waits_with_its_second_attempt_only(self) -> None:
        """While one attempt for an id is judged, another for that id takes the waiting lane."""
        pending: defer.Deferred[bool] = defer.Deferred()
        first = self.limiter.judge(ATTACKER, lambda: pending, "foo")
        self.assertEqual(self.limiter.delay_for(ATTACKER, "foo"), 0.0)  # the budget is whole
        self.assertFalse(self.limiter.allowed(ATTACKER, "bar") is False)
        second = self.limiter.judge(ATTACKER, lambda: True, "foo")
        self.assertTrue(self.successResultOf(second))
        pending.callback(True)
        self.assertTrue(self.successResultOf(first))
        self.assertEqual(self.limiter.tracked, 0)

    def test_first_failure_of_an_id_costs_the_others_nothing(self) -> None:
        self.assertFalse(self.successResultOf(self.limiter.judge(ATTACKER, lambda: False, "bad")))
        for i in range(100):
            self.assertEqual(self.limiter.delay_for(ATTACKER, f"agent-{i}"), 0.0)
            self.assertTrue(self.successResultOf(self.limiter.judge(ATTACKER, lambda: True, f"agent-{i}")))


class BudgetTests(_TestCase):
    """An id that failed from an address waits for the address's failure budget."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock)

    def test_one_connection_guessing(self) -> None:
        """Each guess sent after the last answer: the first free, a burst of 10, then one per 2 s."""
        holds = []
        for _ in range(20):
            hold = self.limiter.delay_for(ATTACKER, "victim")
            d = self.limiter.judge(ATTACKER, lambda: False, "victim")
            if hold:
                self.clock.advance(hold * 0.99)
                self.assertNoResult(d)
                self.clock.advance(hold * 0.01)
            self.assertFalse(self.successResultOf(d))
            holds.append(hold)
        for got, want in zip(holds, [0.0] * 11 + [2.0] * 9, strict=True):
            self.assertAlmostEqual(got, want)

    def test_failed_records_elsewhere(self) -> None:
        self.limiter.failed(ATTACKER, "victim")
        self.assertEqual(self.limiter.delay_for(ATTACKER, "victim"), 0.0)  # failing, the budget whole
        for _ in range(BURST):
            self.limiter.failed(ATTACKER, "victim")
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER, "victim"), 2.0)
        self.assertEqual(self.limiter.delay_for(ATTACKER, "someone-else"), 0.0)
        self.clock.advance(2.0)
        self.assertEqual(self.limiter.delay_for(ATTACKER, "victim"), 0.0)

    def test_success_frees_the_id(self) -> None:
        for _ in range(BURST + 1):
            self.limiter.failed(ATTACKER, "foo")
        d = self.limiter.judge(ATTACKER, lambda: True, "foo")  # the token was fixed
        self.assertNoResult(d)
        self.clock.advance(2.0)
        self.assertTrue(self.successResultOf(d))
        self.assertEqual(self.limiter.delay_for(ATTACKER, "foo"), 0.0)  # free again
        self.assertTrue(self.successResultOf(self.limiter.judge(ATTACKER, lambda: True, "foo")))

    def test_success_gives_back_what_it_reserved(self) -> None:
        for _ in range(6):
            self.limiter.failed(ATTACKER, "foo")  # five spent (the first was the free lane's)
        self.assertTrue(self.successResultOf(self.limiter.judge(ATTACKER, lambda: "x", "foo")))
        for _ in range(6):
            self.limiter.failed(ATTACKER, "foo")  # five more: ten in all, the success none
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER, "foo"), 2.0)  # (eleven: 4.0)

    def test_check_exception_is_a_failure_and_propagates(self) -> None:
        self.failureResultOf(self.limiter.judge(ATTACKER, lambda: 1 / 0, "x"), ZeroDivisionError)
        self.assertFalse(self.limiter.allowed(ATTACKER, "x") is False)
        self.assertEqual(self.limiter.tracked, 1)

    def test_false_values_are_failures(self) -> None:
        for value in (False, None, ""):
            self.limiter.judge(ATTACKER, lambda v=value: v, "x")  # type: ignore[misc]
        for _ in range(BURST - 2):
            self.limiter.failed(ATTACKER, "x")
        self.assertAlmostEqual(self.limiter.delay_for(ATTACKER, "x"), 2.0)

    def test_refused_over_max_waiting(self) -> None:
        limiter = FailureLimiter(self.clock, max_waiting=2)
        for _ in range(BURST + 1):
            limiter.failed(ATTACKER, "x")
        calls: list[int] = []
        waiting = [limiter.judge(ATTACKER, lambda: calls.append(1), "x") for _ in range(2)]
        self.assertFalse(limiter.allowed(ATTACKER, "x"))
        self.assertTrue(limiter.allowed(ATTACKER, "y"))  # another id: the free lane
        refused = self.failureResultOf(limiter.judge(ATTACKER, lambda: calls.append(1), "x"), TooManyAttempts)
        self.assertAlmostEqual(refused.value.retry_after, 6.0)  # type: ignore[attr-defined]  # after both
        self.assertIn("retry in 6 s", refused.getErrorMessage())
        self.assertEqual(calls, [])
        self.clock.advance(4.0)
        self.assertEqual(len(calls), 2)
        for d in waiting:
            self.successResultOf(d)
        self.assertTrue(limiter.allowed(ATTACKER, "x"))

    def test_cancel_frees_place_without_judging(self) -> None:
        limiter = FailureLimiter(self.clock, max_waiting=1)
        for _ in range(BURST + 1):
            limiter.failed(ATTACKER, "x")
        calls: list[int] = []
        d = limiter.judge(ATTACKER, lambda: calls.append(1), "x")
        self.assertFalse(limiter.allowed(ATTACKER, "x"))
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        self.assertTrue(limiter.allowed(ATTACKER, "x"))
        self.assertAlmostEqual(limiter.delay_for(ATTACKER, "x"), 2.0)  # its reservation given back
        self.clock.advance(20)
        self.assertEqual(calls, [])

    def test_cancel_while_check_runs(self) -> None:
        pending: defer.Deferred[bool] = defer.Deferred()
        d = self.limiter.judge(ATTACKER, lambda: pending, "x")
        d.cancel()
        self.failureResultOf(d, defer.CancelledError)
        pending.callback(False)  # its outcome is still recorded
        self.assertEqual(self.limiter.tracked, 1)

    def test_bad_parameters(self) -> None:
        for kwargs in ({"failures_per_second": 0}, {"failure_burst": 0}, {"failure_burst": 2.5},
                       {"max_waiting": 0}, {"max_tracked": 0}, {"forget_after": 0}, {"max_ids": 0},
                       {"log_interval": -1}):
            self.assertRaises(ValueError, FailureLimiter, self.clock, **kwargs)

    def test_other_settings(self) -> None:
        limiter = FailureLimiter(self.clock, failures_per_second=10, failure_burst=1)
        limiter.failed(ATTACKER, "x")
        limiter.failed(ATTACKER, "x")
        self.assertAlmostEqual(limiter.delay_for(ATTACKER, "x"), 0.1)


class ParallelTests(_TestCase):
    """Many connections from one address: the guesses are held to the documented budget."""

    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()
        self.limiter = FailureLimiter(self.clock)

    def assertLimited(self, attacker: _Attacker, seconds: float = 10, ids: int = 1) -> None:
        _run(self.clock, seconds)
        for window in (1.0, 5.0, seconds):
            self.assertLessEqual(attacker.most_in_any(window), _most_allowed(window, ids), window)
        self.assertGreater(attacker.refused, 1000)  # the rest were answered 429 at once

    def test_100_parallel_failing(self) -> None:
        attacker = _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: False)
        self.assertLimited(attacker)
        self.assertGreaterEqual(len(attacker.judged), BURST)

    def test_100_parallel_slow_check(self) -> None:
        """An authorizer that takes its time does not let more attempts through."""

        def slow() -> defer.Deferred[bool]:
            d: defer.Deferred[bool] = defer.Deferred()
            self.clock.callLater(0.05, d.callback, False)
            return d

        self.assertLimited(_Attacker(self.clock, self.limiter, ATTACKER, 100, slow))

    def test_a_valid_credential_lifts_nothing(self) -> None:
        """Alternating its own valid credential with guesses of another id's: the guesses stay held."""
        own: list[float] = []

        def valid() -> bool:
            own.append(self.clock.seconds())
            return True

        guesser = _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: False)
        _Attacker(self.clock, self.limiter, ATTACKER, 100, valid, claim=lambda: "mine")
        self.assertLimited(guesser)
        self.assertGreater(len(own), 100 * 900)  # never held: one per connection per tick

    def test_spraying_ids(self) -> None:
        """A new id at every attempt: the first of each is free until max_ids, then all wait."""
        limiter = FailureLimiter(self.clock, max_ids=50)
        names = (f"id-{i}" for i in range(10**6))
        attacker = _Attacker(self.clock, limiter, ATTACKER, 100, lambda: False, claim=lambda: next(names))
        _run(self.clock, 10)
        self.assertLessEqual(len(attacker.judged), _most_allowed(10, ids=50))
        self.assertGreater(attacker.refused, 1000)
        self.assertGreater(limiter.delay_for(ATTACKER, "a-valid-agent"), 0)  # (a shared address pays)

    def test_other_addresses_unaffected(self) -> None:
        _Attacker(self.clock, self.limiter, ATTACKER, 100, lambda: False)
        _run(self.clock, 5)
        self.assertFalse(self.limiter.allowed(ATTACKER, "victim"))
        self.assertEqual(self.limiter.delay_for(OTHER, "victim"), 0.0)
        self.assertTrue(self.limiter.allowed(OTHER, "victim"))
        d = self.limiter.judge(OTHER, lambda: "ok", "victim")
        self.assertEqual(self.successResultOf(d), "ok")  # at once, synchronously


class StormWithGuesserTests(_TestCase):
    """
    A fleet of valid agents and a guesser behind one address, interleaved:
    the fleet is never slowed, the guesser is held to the budget.
    """

    def test_interleaved(self) -> None:
        clock = Clock()
        limiter = FailureLimiter(clock)
        guesser = _Attacker(clock, limiter, ATTACKER, 100, lambda: False, claim=lambda: "victim")
        agents = iter(range(10**6))
        waited: list[int] = []
        answered: list[int] = []

        def fleet() -> None:
            for _ in range(3):  # 300 agents a second, each with its own id and valid token
                i = next(agents)
                d = limiter.judge(ATTACKER, lambda i=i: f"agent-{i}", f"agent-{i}")  # type: ignore[misc]
                if not d.called:
                    waited.append(i)
                answered.append(i) if d.called and d.result == f"agent-{i}" else None

        _run(clock, 20, each=fleet)
        self.assertEqual(waited, [])
        self.assertEqual(len(answered), 6000)
        for window in (1.0, 5.0, 20.0):
            self.assertLessEqual(guesser.most_in_any(window), _most_allowed(window), window)
        self.assertGreater(guesser.refused, 1000)

    def test_interleaved_through_the_resource(self) -> None:
        """
        The same through the tunnel's resource and the token authorizer, on
        the server's site in memory: 500 agents with valid tokens and 500
        wrong tokens for one id, from one address, all at the same instant:
        every agent is upgraded (101) at once; the guesses get at most the
        budget's worth of 401s, the rest 429.
        """
        clock = Clock()
        site, tokens = _token_site(self, clock, agents=500)
        answers: list[bytes] = []
        for i in range(500):
            answers.append(_upgrade(site, f"agent-{i}", tokens[f"agent-{i}"]))
            answers.append(_upgrade(site, "agent-0", f"guess-{i}"))
        statuses = Counter(a.split(b" ", 2)[1] for a in answers if a)
        self.assertEqual(statuses[b"101"], 500, statuses)
        self.assertLessEqual(statuses[b"401"], 1 + BURST, statuses)
        self.assertGreater(statuses[b"429"], 400, statuses)
        self.assertEqual(sum(statuses.values()), len([a for a in answers if a]))


def _token_site(test: SynchronousTestCase, clock: Clock, agents: int):  # type: ignore[no-untyped-def]
    """A server site in memory with a clients file of C{agents} tokens; the tokens by id."""
    import os

    from remotedialer import Server, ServerSite
    from remotedialer.server._auth import TokenAuthorizer, hash_token

    tokens = {f"agent-{i}": f"token-{i}-0123456789abcdef" for i in range(agents)}
    path = os.path.abspath(test.mktemp())
    with open(path, "w") as f:
        f.writelines(f"{key} sha256:{hash_token(token)}\n" for key, token in tokens.items())
    server = Server(TokenAuthorizer(path), reactor=clock, auth_limiter=FailureLimiter(clock))
    root = Resource()
    root.putChild(b"connect", server.resource)
    return ServerSite(root, reactor=clock), tokens


def _upgrade(site, client_id: str, token: str, peer: str = ATTACKER) -> bytes:  # type: ignore[no-untyped-def]
    """One upgrade on its own connection from C{peer}; what the server answered so far."""
    import base64

    channel = site.buildProtocol(None)
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
    transport.protocol = channel
    channel.makeConnection(transport)
    key = base64.b64encode(b"0123456789abcdef")
    head = (b"GET /connect HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"X-Tunnel-ID: " + client_id.encode() + b"\r\n"
            b"Authorization: Bearer " + token.encode() + b"\r\n\r\n")
    channel.dataReceived(head)
    return transport.value()


class MemoryTests(_TestCase):
    def setUp(self) -> None:
        super().setUp()
        self.clock = Clock()

    def test_max_tracked_evicts_oldest(self) -> None:
        limiter = FailureLimiter(self.clock, max_tracked=100)
        for i in range(1000):
            limiter.failed(f"10.0.{i // 256}.{i % 256}", "x")
            self.assertLessEqual(limiter.tracked * 2, 100)  # (each: an address and one failing id)
        self.assertEqual(limiter.tracked, 50)
        self.assertTrue(limiter.allowed("10.0.0.0", "x"))
        self.assertEqual(limiter.tracked, 50)

    def test_recently_active_kept(self) -> None:
        limiter = FailureLimiter(self.clock, max_tracked=6)
        for name in "abc":
            limiter.failed(name, "x")
        limiter.failed("a", "x")  # a is now the most recent: b goes first
        limiter.failed("d", "x")
        for name, kept in (("a", True), ("b", False), ("c", True), ("d", True)):
            for _ in range(BURST):
                limiter.failed(name, "x") if kept else None
            self.assertEqual(limiter.delay_for(name, "x") > 0, kept, name)

    def test_forget_after(self) -> None:
        limiter = FailureLimiter(self.clock, forget_after=300.0)
        for i in range(50):
            limiter.failed(f"10.0.0.{i}", "x")
        self.clock.advance(299)
        self.assertEqual(limiter.tracked, 50)
        self.clock.advance(1)
        self.assertEqual(limiter.tracked, 0)

    def test_successes_not_kept(self) -> None:
        limiter = FailureLimiter(self.clock)
        for i in range(50):
            self.successResultOf(limiter.judge(f"10.0.0.{i}", lambda: True, "x"))
        self.assertEqual(limiter.tracked, 0)

    def test_parallel_attacker_stays_one_entry(self) -> None:
        limiter = FailureLimiter(self.clock)
        _Attacker(self.clock, limiter, ATTACKER, 100, lambda: False)
        _run(self.clock, 2)
        self.assertEqual(limiter.tracked, 1)

    def test_long_ids_cut(self) -> None:
        limiter = FailureLimiter(self.clock)
        limiter.failed(ATTACKER, "x" * 10000)
        self.assertEqual(limiter.delay_for(ATTACKER, "x" * 256 + "y"), 0.0)  # (the same id: failing)
        self.assertEqual([len(k) for k in limiter._addresses[ATTACKER].failed], [256])


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
        limiter = FailureLimiter(self.clock, max_tracked=2)
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
