"""
Keeps a connection up: connect; after an attempt that failed or a
connection that ended, wait as the owner says and connect again; on
stop, cancel what is pending and close what is open.

Twisted's ClientService does this, and the link used it; but it decides
alone what a failed attempt is (a TCP connection whose WebSocket upgrade
is refused is a success to it, and resets its count), and it logs each
wait itself -- "Scheduling retry 2 to connect <endpoint> in
0.8236611718670794 seconds" -- without the reason, from a logger of its
own that no public API silences.  Here the owner decides both: it is told
how each connection ended (C{next_wait(failure)}: the failure of an
attempt that never connected, or None for a connection that was made and
has ended, which the owner itself reports with L{Redialer.ended}), and
answers with the wait, having logged it with the reason in one line.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet import defer
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.python.failure import Failure

__all__ = ["Redialer"]


class Redialer:
    """
    Connects C{factory}'s protocols through C{endpoint}, one at a time,
    until stopped.  The owner calls L{ended} when the connection it was
    given is over (it hears of it first: its protocol tells it).
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        factory: IProtocolFactory,
        next_wait: Callable[[Failure | None], float],
    ) -> None:
        self._clock = clock
        self._endpoint = endpoint
        self._factory = factory
        self._next_wait = next_wait
        self._connecting: defer.Deferred[IProtocol] | None = None
        self._protocol: IProtocol | None = None
        self._waiting: IDelayedCall | None = None
        self._ended_early = False
        self._stopping = False
        self._stopped: list[defer.Deferred[None]] = []

    @property
    def protocol(self) -> IProtocol | None:
        """The connected protocol, if a connection is up."""
        return self._protocol

    def start(self) -> None:
        self._attempt()

    def _attempt(self) -> None:
        self._waiting = None
        self._ended_early = False
        self._connecting = self._endpoint.connect(self._factory)
        self._connecting.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: IProtocol) -> None:
        self._connecting = None
        if self._ended_early:  # (it ended before the endpoint said it was made)
            self._ended_early = False
            self._wait(None)
            return
        self._protocol = protocol

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if not self._stopping:
            self._wait(failure)

    def ended(self) -> None:
        """The connection made is over (closed, lost, or never usable)."""
        if self._stopping:
            self._protocol = None
            stopped, self._stopped = self._stopped, []
            for waiter in stopped:
                waiter.callback(None)
            return
        if self._protocol is None:
            if self._connecting is not None:
                self._ended_early = True
            return
        self._protocol = None
        self._wait(None)

    def _wait(self, failure: Failure | None) -> None:
        self._waiting = self._clock.callLater(self._next_wait(failure), self._attempt)

    def stop(self) -> defer.Deferred[None]:
        """Stop: no more attempts; fires once the connection (if any) is closed."""
        self._stopping = True
        if self._waiting is not None and self._waiting.active():
            self._waiting.cancel()
        self._waiting = None
        if self._connecting is not None:
            self._connecting.cancel()
        protocol = self._protocol
        transport = getattr(protocol, "transport", None)
        if transport is None:
            return defer.succeed(None)
        waiter: defer.Deferred[None] = defer.Deferred()
        self._stopped.append(waiter)
        transport.loseConnection()
        return waiter
