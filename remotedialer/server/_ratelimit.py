"""
Brute-force protection for tunnel authentication: only failures cost an
address anything, and what they cost is paid by the attempts that could be
guesses, never by the fleet of valid agents sharing the address.

Without a limit a token (compared with C{hmac.compare_digest}, so in
constant time) can be guessed at thousands of tries a second from one
address, on a hundred connections at once.  A limit that paces every
attempt of an address stops that, but also the agents that share an
address with nobody guessing: a thousand agents behind one load balancer,
Ingress or NAT coming back after a server restart all wait in one queue.
So a L{FailureLimiter} judges at once, and asks the clock only about
attempts that may be guesses:

  - B{the free lane}: an attempt is judged at once, synchronously, unless
    the id it claims (the client id or peer id it names; C{""} when it
    names none) failed from its address in the last C{forget_after}
    seconds or is being judged from there right now, or the address has
    C{max_ids} such ids.  A fleet with valid credentials never leaves this
    lane, however many come at once from one address: no state is kept for
    a success;
  - B{the waiting lane}, for the rest: the address has a B{failure budget}
    of C{failure_burst} failures, refilled at C{failures_per_second}.  An
    attempt in this lane is judged as soon as the budget has room for it
    (at once while it has) and spends one; a success gives it back.  So
    the attempts one address gets judged in this lane over any T seconds
    number at most C{failure_burst + failures_per_second * T} beyond its
    successes.  At most C{max_waiting} attempts of one address wait or are
    being judged in this lane at once; another is refused unjudged
    (L{TooManyAttempts}: answer 429 with C{Retry-After}, the time until
    the budget has room).

Guesses are attempts that fail.  Against one id, the first is judged at
once and every other waits for the address's budget.  Spread over many
ids, each id's first is judged at once, until the address has C{max_ids}
failing ids; then every attempt of the address waits.  So one address gets
at most C{failure_burst + failures_per_second * T + max_ids * (1 + T /
forget_after)} failures judged in any T seconds (with the defaults, 10 +
0.5 T in the long run against the ids it has already failed with, and
one more for each new id it names, at most 256 of them in any 5 minutes).
A valid agent that shares the address is delayed only when its own id
failed from there recently (an attacker guessing its token from behind the
same NAT), or while the address has C{max_ids} failing ids (then it is
judged at the budget's pace, as every attempt of the address is).  A
success frees its id from the waiting lane and gives back what it had
reserved, so a caller holding one valid credential gains nothing for the
ids it guesses.

The address is the caller's (see L{address_key}: an IPv6 caller's /64):
behind a load balancer, the server must be told who the caller is (PROXY
protocol, or a trusted proxy's X-Forwarded-For), or every agent shares the
balancer's address -- which the free lane keeps harmless for valid ones.
At most C{max_tracked} addresses and failing ids are remembered, the least
recently active address forgotten first.

Failures and refusals are logged at most once per C{log_interval} per
address, as counts; the limiter never sees credentials (a check is an
opaque callable, an id only a key of its table), so none can reach the log
through it.

The class does no I/O: it reads C{seconds()} and calls C{callLater} of the
clock it is given, so tests drive it with L{twisted.internet.task.Clock}.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from remotedialer.protocol._exceptions import TooManyAttempts
from remotedialer.protocol._text import printable
from remotedialer.tunnel._deferred import maybe_deferred
from remotedialer.tunnel._logtext import address

__all__ = ["FAILURES_PER_SECOND", "FAILURE_BURST", "FORGET_AFTER", "MAX_IDS", "MAX_WAITING", "FailureLimiter",
           "address_key"]

_T = TypeVar("_T")

#: The defaults of the limiter (and of the server program's --auth-* flags).
FAILURES_PER_SECOND = 0.5
FAILURE_BURST = 10
MAX_WAITING = 4
FORGET_AFTER = 300.0
MAX_IDS = 256

#: An id longer than this is kept as its first characters (the table's memory is bounded).
_MAX_ID_CHARS = 256


@attrs.define
class _Address:
    """What the limiter knows of one address."""

    #: The failure budget as a theoretical arrival time (GCRA): the budget
    #: is whole once the clock reaches C{tat}; each failure pushes it one
    #: interval on.  An attempt may be judged when C{tat - now} is at most
    #: C{(failure_burst - 1)} intervals.
    tat: float = 0.0
    #: Ids that failed from here, and when they last did; least recent first.
    failed: OrderedDict[str, float] = attrs.Factory(OrderedDict)
    #: Ids with an attempt being judged in the free lane (not finished synchronously).
    judging: set[str] = attrs.Factory(set)
    #: Attempts of the waiting lane waiting or being judged.
    waiting: int = 0
    #: Failures and refusals not yet logged.
    unlogged: int = 0
    refused: int = 0


class FailureLimiter:
    """
    Judges authentication attempts at once unless they may be guesses, and
    holds the guesses of each address to its failure budget (see the
    module's docstring for the guarantee).

    The usual way in is L{judge}, around a check; L{delay_for}, L{allowed},
    L{failed} and L{succeeded} are there for callers that judge by
    themselves and for inspection.  L{flush} logs what is pending, e.g.
    when the server stops.

    @param clock: the reactor's time (C{seconds}, C{callLater}).
    @param failures_per_second: how fast an address's failure budget refills.
    @param failure_burst: failures an address may have at once (the
        budget when whole).
    @param max_waiting: attempts of one address in the waiting lane at
        once; more are refused with L{TooManyAttempts}.
    @param forget_after: seconds after its last failure that an id of an
        address is forgotten (a success forgets it at once).
    @param max_ids: failing ids of one address past which every attempt of
        the address waits (an attacker spraying ids gets no more at once).
    @param max_tracked: addresses and failing ids remembered at once; the
        least recently active address is forgotten to make room.
    @param log_interval: seconds between two log lines about one address.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        failures_per_second: float = FAILURES_PER_SECOND,
        failure_burst: int = FAILURE_BURST,
        max_waiting: int = MAX_WAITING,
        forget_after: float = FORGET_AFTER,
        max_ids: int = MAX_IDS,
        max_tracked: int = 100_000,
        log_interval: float = 60.0,
    ) -> None:
        for name, value in [("failures_per_second", failures_per_second), ("failure_burst", failure_burst),
                            ("max_waiting", max_waiting), ("forget_after", forget_after),
                            ("max_ids", max_ids), ("max_tracked", max_tracked),
                            ("log_interval", log_interval)]:
            if not value > 0:
                raise ValueError(f"{name} must be over 0, not {value!r}")
        if failure_burst != int(failure_burst):
            raise ValueError(f"failure_burst must be a whole number, not {failure_burst!r}")
        #: The clock the limiter runs on.
        self.clock = clock
        self._interval = 1.0 / failures_per_second
        #: How far ahead of now the budget's C{tat} may be for an attempt to be judged.
        self._tolerance = (int(failure_burst) - 1) * self._interval
        self._max_waiting = max_waiting
        self._forget_after = forget_after
        self._max_ids = max_ids
        self._max_tracked = max_tracked
        self._log_interval = log_interval
        #: Least recently active first.
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        #: Ids held over all addresses.
        self._ids = 0
        self._log_call: IDelayedCall | None = None

    # -- queries ---------------------------------------------------------

    @property
    def tracked(self) -> int:
        """How many addresses the limiter holds state for."""
        self._prune(self.clock.seconds())
        return len(self._addresses)

    def delay_for(self, address: str, claim: str = "") -> float:
        """
        Seconds an attempt from C{address} claiming C{claim} arriving now
        would wait before it is judged: 0 in the free lane, or while the
        address's failure budget has room; else until it has.
        """
        now = self.clock.seconds()
        entry = self._get(address, now)
        if entry is None or self._free(entry, _id(claim), now):
            return 0.0
        return self._start(entry, now) - now

    def allowed(self, address: str, claim: str = "") -> bool:
        """Whether an attempt from C{address} claiming C{claim} now would be admitted (else: 429 at once)."""
        now = self.clock.seconds()
        entry = self._get(address, now)
        return entry is None or self._free(entry, _id(claim), now) or entry.waiting < self._max_waiting

    # -- outcomes --------------------------------------------------------

    def failed(self, address: str, claim: str = "") -> None:
        """
        Record a failed authentication from C{address} claiming C{claim}
        (judged elsewhere): the id is failing there now; if it already was,
        the failure spends the address's budget, as one in the waiting lane.
        """
        now = self.clock.seconds()
        key = _id(claim)
        entry = self._touch(address, now)
        self._prune_ids(entry, now)
        if key in entry.failed:
            self._spend(entry, now)
        self._failed_id(address, entry, key, now)

    def succeeded(self, address: str, claim: str = "") -> None:
        """Record a success from C{address} claiming C{claim}: the id is no longer failing there."""
        now = self.clock.seconds()
        entry = self._get(address, now)
        if entry is not None:
            self._forget_id(entry, _id(claim))
            self._drop_if_dead(address, entry, now)

    # -- judging ---------------------------------------------------------

    def judge(
        self, address: str, check: Callable[[], _T | defer.Deferred[_T]], claim: str = "",
    ) -> defer.Deferred[_T]:
        """
        Run C{check} for an attempt from C{address} claiming to be C{claim}
        when its time comes, and record the outcome.

        The check is called at once (synchronously) in the free lane or
        while the address's budget has room, else from the clock once it
        has.  A check that returns a false value (C{False}, C{None}, C{""})
        or raises counts as a failure, anything else as a success; either
        way its result (or failure) is the result.  An attempt over the
        limit fails at once with L{TooManyAttempts}, its check not called.

        Cancelling the result while the attempt waits frees its place and
        never calls the check; once the check runs, its outcome is recorded.
        """
        now = self.clock.seconds()
        key = _id(claim)
        entry = self._get(address, now)
        if entry is None or self._free(entry, key, now):
            return _Attempt(self, address, key, check, entry=None).start(0.0)
        self._addresses.move_to_end(address)
        if entry.waiting >= self._max_waiting:
            entry.refused += 1
            self._schedule_log()
            return defer.fail(TooManyAttempts(max(self._start(entry, now) - now, self._interval)))
        start = self._start(entry, now)
        self._spend(entry, start)  # reserved: given back unless the attempt fails
        entry.waiting += 1
        return _Attempt(self, address, key, check, entry=entry).start(start - now)

    def _judging(self, attempt: _Attempt[_T]) -> _Address:
        """A free-lane check did not finish at once: its id waits until it has."""
        entry = self._touch(attempt.address, self.clock.seconds())
        entry.judging.add(attempt.claim)
        self._ids += 1
        self._bound()
        return entry

    def _answered(self, attempt: _Attempt[_T], outcome: object) -> None:
        """An attempt is over: free its place, record a judged outcome."""
        now = self.clock.seconds()
        address_, key = attempt.address, attempt.claim
        mine = attempt.entry
        if mine is not None and self._addresses.get(address_) is not mine:
            mine = None  # (forgotten meanwhile, to make room: its counts went with it)
        if mine is not None:
            if attempt.judging and key in mine.judging:
                mine.judging.discard(key)
                self._ids -= 1
            if attempt.waiting:
                mine.waiting -= 1
        if outcome is _CANCELLED:
            if mine is not None:
                mine.tat -= self._interval  # give back what the wait reserved
                self._drop_if_dead(address_, mine, now)
            return
        if isinstance(outcome, Failure) or not outcome:
            entry = mine if mine is not None else self._touch(address_, now)
            self._failed_id(address_, entry, key, now)  # (a waiting one spent the budget when admitted)
            return
        if mine is not None and attempt.waiting:
            mine.tat -= self._interval
        entry_ = mine if mine is not None else self._get(address_, now)
        if entry_ is not None:
            self._forget_id(entry_, key)
            self._drop_if_dead(address_, entry_, now)

    # -- logging ---------------------------------------------------------

    def flush(self) -> None:
        """Log every pending count now (e.g. as the server stops)."""
        if self._log_call is not None and self._log_call.active():
            self._log_call.cancel()
        self._log_pending()

    def _schedule_log(self) -> None:
        if self._log_call is None:
            self._log_call = self.clock.callLater(self._log_interval, self._log_pending)

    def _log_pending(self) -> None:
        self._log_call = None
        for address_, entry in self._addresses.items():
            self._log_entry(address_, entry)

    def _log_entry(self, address: str, entry: _Address) -> None:
        if entry.unlogged:
            self.log.warn("{count} failed tunnel authentication{s} from {addr} in the last {interval:g} s",
                          count=entry.unlogged, s="" if entry.unlogged == 1 else "s",
                          addr=printable(address), interval=self._log_interval)
        if entry.refused:
            self.log.warn("{count} tunnel authentication attempt{s} from {addr} refused (429) unjudged "
                          "in the last {interval:g} s",
                          count=entry.refused, s="" if entry.refused == 1 else "s",
                          addr=printable(address), interval=self._log_interval)
        entry.unlogged = entry.refused = 0

    # -- the table -------------------------------------------------------

    def _free(self, entry: _Address, key: str, now: float) -> bool:
        """An attempt claiming C{key} goes to the free lane."""
        self._prune_ids(entry, now)
        return key not in entry.failed and key not in entry.judging and len(entry.failed) < self._max_ids

    def _start(self, entry: _Address, now: float) -> float:
        """When the budget has room for one more failure (now, or later)."""
        return max(now, entry.tat - self._tolerance)

    def _spend(self, entry: _Address, at: float) -> None:
        entry.tat = max(entry.tat, at) + self._interval

    def _failed_id(self, address: str, entry: _Address, key: str, now: float) -> None:
        if key not in entry.failed:
            self._ids += 1
        entry.failed[key] = now
        entry.failed.move_to_end(key)
        entry.unlogged += 1
        self._addresses.move_to_end(address)
        self._schedule_log()
        self._bound()

    def _forget_id(self, entry: _Address, key: str) -> None:
        if entry.failed.pop(key, None) is not None:
            self._ids -= 1

    def _prune_ids(self, entry: _Address, now: float) -> None:
        while entry.failed:
            key, when = next(iter(entry.failed.items()))
            if now - when < self._forget_after:
                return
            del entry.failed[key]
            self._ids -= 1

    def _dead(self, entry: _Address, now: float) -> bool:
        """Nothing to remember: nothing pending, the budget whole, no failing id, all logged."""
        self._prune_ids(entry, now)
        return (
            entry.waiting == 0
            and not entry.judging
            and not entry.failed
            and entry.tat <= now
            and entry.unlogged == 0
            and entry.refused == 0
        )

    def _drop_if_dead(self, address: str, entry: _Address, now: float) -> None:
        if self._addresses.get(address) is entry and self._dead(entry, now):
            del self._addresses[address]

    def _prune(self, now: float) -> None:
        """Forget dead entries from the least recently active end (amortised O(1))."""
        while self._addresses:
            address_, entry = next(iter(self._addresses.items()))
            if not self._dead(entry, now):
                return
            del self._addresses[address_]

    def _get(self, address: str, now: float) -> _Address | None:
        self._prune(now)
        entry = self._addresses.get(address)
        if entry is not None and self._dead(entry, now):
            del self._addresses[address]
            return None
        return entry

    def _touch(self, address: str, now: float) -> _Address:
        """C{address}'s entry, made the most recently active (created if need be)."""
        entry = self._get(address, now)
        if entry is not None:
            self._addresses.move_to_end(address)
            return entry
        entry = self._addresses[address] = _Address(tat=now)
        self._bound()
        return entry

    def _bound(self) -> None:
        """Forget the least recently active addresses while over max_tracked (the newest stays)."""
        while len(self._addresses) + self._ids > self._max_tracked and len(self._addresses) > 1:
            oldest, evicted = self._addresses.popitem(last=False)
            self._ids -= len(evicted.failed) + len(evicted.judging)
            self._log_entry(oldest, evicted)  # its counts would be lost


def _id(claim: str) -> str:
    return claim[:_MAX_ID_CHARS]


#: The outcome of an attempt cancelled before its check ran.
_CANCELLED = object()


class _Attempt(Generic[_T]):
    """One admitted attempt: waits for its turn (waiting lane), runs the check, reports back."""

    def __init__(
        self, limiter: FailureLimiter, address: str, claim: str,
        check: Callable[[], _T | defer.Deferred[_T]], entry: _Address | None,
    ) -> None:
        self._limiter = limiter
        self.address = address
        self.claim = claim
        #: The address's entry, for an attempt that holds a place in it
        #: (waiting, or a free-lane check that did not finish at once).
        self.entry = entry
        #: In the waiting lane (else the free lane).
        self.waiting = entry is not None
        #: A free-lane check under way, its id marked as being judged.
        self.judging = False
        self._check = check
        self._call: IDelayedCall | None = None
        self._result: defer.Deferred[_T] = defer.Deferred(self._cancel)

    def start(self, delay: float) -> defer.Deferred[_T]:
        if delay > 0:
            self._call = self._limiter.clock.callLater(delay, self._run)
        else:
            self._run()
        return self._result

    def _run(self) -> None:
        self._call = None
        checked = maybe_deferred(self._check)
        checked.addBoth(self._done)
        if not checked.called and not self.waiting:
            self.judging = True
            self.entry = self._limiter._judging(self)

    def _done(self, outcome: _T | Failure) -> None:
        self._limiter._answered(self, outcome)
        if self._result.called:
            return  # cancelled while the check ran
        if isinstance(outcome, Failure):
            self._result.errback(outcome)
        else:
            self._result.callback(outcome)

    def _cancel(self, result: defer.Deferred[_T]) -> None:
        # Twisted then fails the result with CancelledError; a check that is
        # already running goes on, and its outcome is recorded but not delivered.
        if self._call is not None and self._call.active():
            self._call.cancel()
            self._call = None
            self._limiter._answered(self, _CANCELLED)


def address_key(addr: object) -> str:
    """
    The limiter's key for a caller's address (C{request.getClientAddress()}):
    the IPv4 address; the /64 network of an IPv6 one, since one host commonly
    holds a whole /64 (an IPv4-mapped address counts as IPv4); otherwise the
    address as text.
    """
    host = getattr(addr, "host", None)
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if not isinstance(host, str):
        return address(addr)
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return printable(host)
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
