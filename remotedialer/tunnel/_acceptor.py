"""
The far side of a Connect: ask the dial policy where C{proto/address}
leads, dial it, and relay bytes between the new stream and the target.

This is what the client does for a server's dials (and a server for a
peer's forwarded dials, or for a client's own dials where allowed).  A
refused or failed dial ends only that stream, with the reason as its Error
text (Go drops the whole session when its authorizer says no), and is
logged through the session's L{Throttle}: a far side sending Connect after
Connect that are refused (or fail) makes a few lines and a summary per
window, not a line each.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.protocol._exceptions import TooManyDials
from remotedialer.protocol._text import printable
from remotedialer.tunnel._deferred import maybe_deferred
from remotedialer.tunnel._interfaces import IDialPolicy
from remotedialer.tunnel._logtext import Throttle, failure_text
from remotedialer.tunnel._relay import Relay
from remotedialer.tunnel._stream import TunnelStream


@implementer(IDialPolicy)
class RefuseAll:
    """A dial policy refusing every Connect (the server's default for client dials)."""

    def endpoint_for(self, proto: str, address: str) -> None:
        return None


class Acceptor:
    """
    Serves inbound Connects of one session under C{policy} (an
    L{IDialPolicy}), with at most C{max_pending} dials in progress at once.
    Given C{clock} and C{on_dialed}, each dial's outcome is reported as
    C{on_dialed(seconds, failure or None)} (for metrics).  Refused and
    failed dials are logged through C{throttle} (default: one of its own),
    naming C{source} (the session, as text: no reference to it).
    """

    log = Logger()

    def __init__(
        self,
        policy: IDialPolicy,
        max_pending: int = 1024,
        clock: IReactorTime | None = None,
        on_dialed: Callable[[float, Failure | None], object] | None = None,
        throttle: Throttle | None = None,
        source: str = "",
    ) -> None:
        self._policy = policy
        self._max_pending = max_pending
        self._clock = clock
        self._on_dialed = on_dialed if clock is not None else None
        if throttle is None:
            if clock is None:
                from twisted.internet import reactor

                clock = reactor
            throttle = Throttle(clock, Acceptor.log, "refused or failed dials")
        self._failures = throttle
        self._source = source
        #: Dials whose target is not connected yet.
        self.pending = 0

    def accept(self, stream: TunnelStream, proto: str, address: str) -> None:
        """Dial C{proto}/C{address} for C{stream} and relay (or end the stream)."""
        relay = Relay()
        stream.attach(relay)
        if self.pending >= self._max_pending:
            text = f"too many dials in progress (limit {self._max_pending})"
            if self._on_dialed is not None:
                self._on_dialed(0.0, Failure(TooManyDials(text)))
            stream.close_with_error(text)
            return
        self.pending += 1
        d = maybe_deferred(self._policy.endpoint_for, proto, address)
        on_dialed, clock = self._on_dialed, self._clock
        started = clock.seconds() if clock is not None else 0.0

        def settled(result: object) -> object:
            self.pending -= 1
            if on_dialed is not None and clock is not None and not stream.closed:
                on_dialed(clock.seconds() - started, result if isinstance(result, Failure) else None)
            return result

        def connect(endpoint: IStreamClientEndpoint | None) -> defer.Deferred[IProtocol] | None:
            if stream.closed:  # the far side gave up while we decided
                return None
            if endpoint is None:
                raise PermissionError(f"connect to {proto}/{address} not allowed")
            return relay.connect_peer(endpoint)

        d.addCallback(connect)
        d.addBoth(settled)
        d.addErrback(self._dial_failed, stream, proto, address)

    def _dial_failed(self, failure: Failure, stream: TunnelStream, proto: str, address: str) -> None:
        if failure.check(defer.CancelledError) or stream.closed:
            return
        reason = failure_text(failure)
        self._failures.info("{session}: stream {stream_id}: dial {target} failed: {reason}",
                            session=self._source, stream_id=stream.conn_id,
                            target=printable(f"{proto}/{address}"), reason=printable(reason))
        stream.close_with_error(reason)
