"""
Brute-force protection for tunnel authentication: attempts from one address
are spaced, capped and, after failures, delayed, whatever the number of
connections they come on.

Without it a peer token (compared with C{hmac.compare_digest}, so in
constant time) can still be guessed at thousands of tries a second from one
address.  Holding a refused answer back does not help on its own: a caller
opens a hundred connections and guesses on all of them at once.  So a
L{FailureLimiter} bounds three things for each address:

  - B{spacing}: the checks of one address start at least C{base_delay}
    apart, each attempt taking the next free time slot; so however many
    connections, at most C{floor(T / base_delay) + 1} attempts are judged in
    any T seconds (10 a second with the default 0.1 s);
  - B{concurrency}: at most C{max_in_flight} attempts of one address wait
    for their slot or are being judged; another is refused at once,
    unjudged (L{TooManyAttempts}: answer 429 with C{Retry-After});
  - B{backoff}: after k consecutive failures a new attempt waits
    C{base_delay * 2 ** (k - 1)} (at most C{max_delay}) from its arrival
    before it is judged, so a caller who waits for its answers makes at
    most one guess per delay on each of its C{max_in_flight} slots (0.4 a
    second in the long run with the defaults).

A success resets the backoff but not the spacing, so a caller holding a
valid credential cannot lift the limit by alternating good and bad ones.
An address with no failures and nothing in flight costs nothing: its
attempt is judged at once, synchronously, so authentication without
failures behaves as if the limiter were not there.

The limits are per address (see L{address_key}: an IPv6 caller's /64).
They bind a caller while its address is tracked: at most C{max_tracked}
addresses are, the least recently active evicted first, and an address is
forgotten C{forget_after} seconds after its last failure.  Behind a reverse
proxy every caller has the proxy's address and shares one limit.

Failures are logged at most once per C{log_interval} per address, as a
count; the limiter never sees credentials (a check is an opaque callable),
so none can reach the log through it.

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

__all__ = ["FailureLimiter", "address_key"]

_T = TypeVar("_T")

#: Beyond this many doublings the delay is max_delay anyway (and 2**k stays a float).
_MAX_DOUBLINGS = 64


@attrs.define
class _Address:
    """What the limiter knows of one address."""

    #: Consecutive failures, since the last success.
    failures: int = 0
    last_failure: float = 0.0
    #: Attempts admitted and not yet answered (waiting for their slot, or being judged).
    in_flight: int = 0
    #: The next attempt is judged no earlier than this.
    next_due: float = 0.0
    #: Failures and refusals not yet logged.
    unlogged: int = 0
    refused: int = 0


class FailureLimiter:
    """
    Spaces, caps and delays the authentication attempts of each address (see
    the module's docstring for the guarantee).

    The usual way in is L{judge}, around a check; L{delay_for}, L{allowed},
    L{failed} and L{succeeded} are there for callers that judge by
    themselves (a failure seen elsewhere, such as a TLS client certificate
    refused) and for inspection.  L{flush} logs what is pending, e.g. when
    the server stops.

    @param clock: the reactor's time (C{seconds}, C{callLater}).
    @param base_delay: seconds between two judged attempts of one address,
        and the delay after its first failure.
    @param max_delay: the longest delay, reached by doubling.
    @param max_in_flight: attempts of one address waiting or being judged
        at once; more are refused with L{TooManyAttempts}.
    @param forget_after: seconds after its last failure that an address is
        forgotten (a success forgets its failures at once).
    @param max_tracked: addresses tracked at once; the least recently
        active is forgotten to make room.
    @param log_interval: seconds between two log lines about one address.
    """

    log = Logger()

    def __init__(
        self,
        clock: IReactorTime,
        *,
        base_delay: float = 0.1,
        max_delay: float = 10.0,
        max_in_flight: int = 4,
        forget_after: float = 300.0,
        max_tracked: int = 10000,
        log_interval: float = 60.0,
    ) -> None:
        if not 0 < base_delay <= max_delay:
            raise ValueError(f"need 0 < base_delay <= max_delay, not {base_delay!r}, {max_delay!r}")
        for name, value in [("max_in_flight", max_in_flight), ("forget_after", forget_after),
                            ("max_tracked", max_tracked), ("log_interval", log_interval)]:
            if not value > 0:
                raise ValueError(f"{name} must be over 0, not {value!r}")
        self._clock = clock
        #: The clock the limiter runs on.
        self.clock = clock
        self._base_delay = base_delay
        self._max_delay = max_delay
        self._max_in_flight = max_in_flight
        self._forget_after = forget_after
        self._max_tracked = max_tracked
        self._log_interval = log_interval
        #: Least recently active first.
        self._addresses: OrderedDict[str, _Address] = OrderedDict()
        self._log_call: IDelayedCall | None = None

    # -- queries ---------------------------------------------------------

    @property
    def tracked(self) -> int:
        """How many addresses the limiter holds state for."""
        self._prune(self._clock.seconds())
        return len(self._addresses)

    def delay_for(self, address: str) -> float:
        """
        Seconds an attempt from C{address} arriving now would wait before it
        is judged: 0 for an address without recent failures or attempts;
        C{base_delay * 2 ** (k - 1)} (at most C{max_delay}) after k
        consecutive failures; more if earlier attempts hold the next slots.
        """
        now = self._clock.seconds()
        entry = self._get(address, now)
        if entry is None:
            return 0.0
        return max(self._backoff(entry), entry.next_due - now, 0.0)

    def allowed(self, address: str) -> bool:
        """Whether an attempt from C{address} now would be admitted (else: 429 at once)."""
        entry = self._get(address, self._clock.seconds())
        return entry is None or entry.in_flight < self._max_in_flight

    # -- outcomes --------------------------------------------------------

    def failed(self, address: str) -> None:
        """Record a failed authentication from C{address}: its next delay doubles."""
        now = self._clock.seconds()
        entry = self._touch(address, now)
        entry.failures += 1
        entry.last_failure = now
        entry.unlogged += 1
        self._schedule_log()

    def succeeded(self, address: str) -> None:
        """Record a success from C{address}: its failures are forgotten (not its spacing)."""
        now = self._clock.seconds()
        entry = self._get(address, now)
        if entry is not None:
            entry.failures = 0
            if self._dead(entry, now):
                del self._addresses[address]

    # -- judging ---------------------------------------------------------

    def judge(self, address: str, check: Callable[[], _T | defer.Deferred[_T]]) -> defer.Deferred[_T]:
        """
        Run C{check} for an attempt from C{address} when its time comes, and
        record the outcome.

        The check is called at once (synchronously) when the address has no
        delay, else after it, from the clock.  A check that returns a false
        value (C{False}, C{None}, C{""}) or raises counts as a failure,
        anything else as a success; either way its result (or failure) is
        the result.  An attempt over the limit fails at once with
        L{TooManyAttempts}, its check not called.

        Cancelling the result while the attempt waits frees its slot and
        never calls the check; once the check runs, its outcome is recorded.
        """
        now = self._clock.seconds()
        entry = self._touch(address, now)
        if entry.in_flight >= self._max_in_flight:
            entry.refused += 1
            self._schedule_log()
            retry = max(self._backoff(entry), entry.next_due - now, self._base_delay)
            return defer.fail(TooManyAttempts(retry))
        start = max(now + self._backoff(entry), entry.next_due)
        entry.next_due = start + self._base_delay
        entry.in_flight += 1
        return _Attempt(self, entry, address, check).start(start - now)

    def _answered(self, entry: _Address, address: str, outcome: object) -> None:
        """An admitted attempt is over: free its slot, record a judged outcome."""
        entry.in_flight -= 1
        if outcome is _CANCELLED:
            return
        if isinstance(outcome, Failure) or not outcome:
            self.failed(address)
        else:
            self.succeeded(address)

    # -- logging ---------------------------------------------------------

    def flush(self) -> None:
        """Log every pending count now (e.g. as the server stops)."""
        if self._log_call is not None and self._log_call.active():
            self._log_call.cancel()
        self._log_pending()

    def _schedule_log(self) -> None:
        if self._log_call is None:
            self._log_call = self._clock.callLater(self._log_interval, self._log_pending)

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

    def _backoff(self, entry: _Address) -> float:
        if entry.failures == 0:
            return 0.0
        doublings = min(entry.failures - 1, _MAX_DOUBLINGS)
        return min(self._max_delay, self._base_delay * 2.0**doublings)

    def _dead(self, entry: _Address, now: float) -> bool:
        """Nothing to remember: no attempt pending or spacing to keep, failures old or none, all logged."""
        return (
            entry.in_flight == 0
            and now >= entry.next_due
            and entry.unlogged == 0
            and entry.refused == 0
            and (entry.failures == 0 or now - entry.last_failure >= self._forget_after)
        )

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
        """C{address}'s entry, made the most recently active (created, evicting if full)."""
        entry = self._get(address, now)
        if entry is not None:
            self._addresses.move_to_end(address)
            return entry
        if len(self._addresses) >= self._max_tracked:
            oldest, evicted = self._addresses.popitem(last=False)
            self._log_entry(oldest, evicted)  # its counts would be lost
        entry = self._addresses[address] = _Address()
        return entry


#: The outcome of an attempt cancelled before its check ran.
_CANCELLED = object()


class _Attempt(Generic[_T]):
    """One admitted attempt: waits for its slot, runs the check, reports back."""

    def __init__(
        self, limiter: FailureLimiter, entry: _Address, address: str,
        check: Callable[[], _T | defer.Deferred[_T]],
    ) -> None:
        self._limiter = limiter
        self._entry = entry
        self._address = address
        self._check = check
        self._call: IDelayedCall | None = None
        self._result: defer.Deferred[_T] = defer.Deferred(self._cancel)

    def start(self, delay: float) -> defer.Deferred[_T]:
        if delay > 0:
            self._call = self._limiter._clock.callLater(delay, self._run)
        else:
            self._run()
        return self._result

    def _run(self) -> None:
        self._call = None
        maybe_deferred(self._check).addBoth(self._done)

    def _done(self, outcome: _T | Failure) -> None:
        self._limiter._answered(self._entry, self._address, outcome)
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
            self._limiter._answered(self._entry, self._address, _CANCELLED)


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
