"""
One forwarded connection: a caller's TCP connection spliced to a stream
through a client's tunnel, with the relay idiom of L{remotedialer.tunnel._relay}
(each side the other's producer, so a slow reader at either end slows the
writer at the other), counted in the listener's L{ForwarderStats}.

The tunnel protocol has no acknowledgement of a Connect: the stream is
usable at once, and a failed dial comes back later as an Error.  A proxy
that must tell its caller whether the dial worked (a CONNECT status, a
SOCKS5 reply) therefore answers on the first sign of either:

  - data from the target: it is connected (success, then the data);
  - an Error from the far side: it failed, and the text says why (the
    client's dial rules, connection refused, a timeout...);
  - C{dial_wait} seconds of neither: taken as success.  Protocols where
    the caller speaks first (TLS, HTTP) get their answer after that wait;
    a dial that fails later than it ends the connection without a status.

A port forward has nobody to answer (C{dial_wait} 0): a failed dial aborts
the caller's connection, which a TCP client sees as a reset.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from remotedialer.protocol._text import printable
from remotedialer.server._access import Route
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.tunnel._endpoint import StreamOpener, TunnelEndpoint
from remotedialer.tunnel._exceptions import ClientNotConnected
from remotedialer.tunnel._logtext import Throttle, failure_text
from remotedialer.tunnel._relay import Relay

__all__ = ["DIAL_WAIT", "Forwarder", "TunnelSplice", "classify"]

#: Seconds a proxy waits for a failed dial to be reported before answering success.
DIAL_WAIT = 0.25


@attrs.define
class Forwarder:
    """
    What the connections of one forwarder listener share: where streams are
    opened (a L{remotedialer.Server}, or any L{StreamOpener}), the
    listener's counters, the clock, and its throttled log.
    """

    opener: StreamOpener
    stats: ForwarderStats
    clock: IReactorTime
    dial_wait: float = DIAL_WAIT
    #: C{client_key -> bool}: a route reaches the client now (L{Server.reaches}).
    reaches: Callable[[str], bool] | None = None
    log: Logger = attrs.field(factory=Logger)
    throttle: Throttle = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        self.throttle = Throttle(self.clock, self.log, "forwarding failures")

    def refused(self, reason: str, text: str, where: str = "") -> None:
        """Count a failure and log it (throttled: a flood makes a bounded amount of log)."""
        self.stats.failed(reason)
        self.throttle.warn("{session}: {where}{text}", session=self.stats.name,
                           where=f"{printable(where)}: " if where else "", text=printable(text))


def classify(failure: Failure) -> str:
    """The L{FAILURE_REASONS} word for a failed dial."""
    if failure.check(ClientNotConnected):
        return "client-not-connected"
    text = failure_text(failure).lower()
    if "not allowed" in text:
        return "dial-refused"
    if "timeout" in text or "timed out" in text or "took over" in text:
        return "dial-timeout"
    return "dial-failed"


class TunnelSplice(Relay):
    """
    The caller's half of a forwarded connection (see module docstring).
    Subclasses answer their caller in L{dial_succeeded} and L{dial_failed}.

    @ivar route: where the stream goes, once L{splice} is called.
    @ivar answered: the caller has been told the dial's outcome.
    """

    def __init__(self, forwarder: Forwarder) -> None:
        super().__init__()
        self.forwarder = forwarder
        self.route: Route | None = None
        self.answered = False
        self._from_target = False
        self._spliced = False
        self._wait: IDelayedCall | None = None

    # What subclasses say to their caller.

    def dial_succeeded(self) -> None:
        """The dial is taken to have worked: tell the caller (before any of the target's data)."""

    def dial_failed(self, reason: str, text: str) -> None:
        """The dial failed (C{reason} a L{FAILURE_REASONS} word): tell the caller and close."""
        self.transport.abortConnection()

    # Splicing.

    def splice(self, route: Route, early: bytes = b"") -> None:
        """
        Open a stream to C{route} and relay; C{early} is what the caller
        already sent past its handshake (sent on once the stream is open).
        """
        self.route = route
        self.no_delay()
        self.transport.pauseProducing()  # until the stream is there to take it
        endpoint = TunnelEndpoint(self.forwarder.opener, route.client_key, route.proto, route.address)
        d = self.connect_peer(endpoint)
        d.addCallbacks(lambda _: self._opened(early), self._not_opened)

    def _opened(self, early: bytes) -> None:
        self._spliced = True
        self.forwarder.stats.stream_opened()
        if early:
            Relay.dataReceived(self, early)
        if self.answered:
            return
        if self.forwarder.dial_wait <= 0:
            self._succeed()
        else:
            self._wait = self.forwarder.clock.callLater(self.forwarder.dial_wait, self._succeed)

    def _not_opened(self, failure: Failure) -> None:
        if self._lost:
            return  # the caller left while we dialed
        self._fail(classify(failure), failure_text(failure))

    def _succeed(self) -> None:
        if self._wait is not None and self._wait.active():
            self._wait.cancel()  # (the target spoke first)
        self._wait = None
        if not self.answered:
            self.answered = True
            self.dial_succeeded()

    def _fail(self, reason: str, text: str) -> None:
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        self._wait = None
        self.answered = True
        self.forwarder.refused(reason, text, str(self.route) if self.route else "")
        self.dial_failed(reason, text)

    # The stream's half calls these.

    def partner_data(self, data: bytes) -> None:
        if not self.answered:
            self._succeed()
        self._from_target = True
        super().partner_data(data)

    def partner_lost(self, reason: Failure) -> None:
        if reason.check(ConnectionDone):
            self._succeed()  # connected, then closed
            super().partner_lost(reason)
        elif not self.answered:
            self._fail(classify(reason), failure_text(reason))
        else:
            where = str(self.route) if self.route else ""
            self.forwarder.refused("stream-error" if self._from_target else classify(reason),
                                   failure_text(reason), where)
            super().partner_lost(reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        self._wait = None
        if self._spliced:
            self._spliced = False
            self.forwarder.stats.stream_closed()
        super().connectionLost(reason)
