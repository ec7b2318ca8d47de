"""
An outgoing WebSocket kept up (L{Redialer}): what the client and a
server's peer links share.

Each connection ends one of three ways, and the link tells them apart:
the attempt failed before a connection was made (name resolution,
refused, the proxy's answer: the endpoint's failure); a connection was
made but gave no usable tunnel (the upgrade refused, TLS failed, the
client's on-connect hook failed: L{link_failed} or L{attempt_failed} say
why); or a usable tunnel ended (L{link_closed}, logged by the subclass
with its reason and how long it lived).  Failed attempts back off (the
retry policy is given their count since the last usable tunnel) and each
is logged once, in one line, with its reason and the wait before the
next; after a usable tunnel ends, the first retry comes at the policy's
first wait.  A server that refuses the upgrade with 429 (its limiter) or
503 (it drains) and says C{Retry-After} is taken at its word: the next
attempt comes after that wait plus a jitter (up to half of it, at least
1 s, so that a fleet told the same does not come back at one instant), and
the refusal is not a failure that grows the backoff -- the server could
take us, just not now.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.client._redial import Redialer
from remotedialer.tunnel._interfaces import ISession, ISessionOwner, ITunnelConnection
from remotedialer.tunnel._logtext import dial_failure_text
from remotedialer.tunnel._session import Session
from remotedialer.tunnel._websocket import TunnelClientFactory, TunnelProtocol

if TYPE_CHECKING:
    from remotedialer.tunnel._identity import Identity

#: The dialing side hears which streams we hold this often (Go: 60 s).
SYNC_INTERVAL = 60
#: A wait the server asked for gets a jitter of up to half of it, and at least this.
RETRY_AFTER_JITTER = 1.0
#: The shortest wait after a refusal with Retry-After (one of 0, or a date past, is not "at once").
RETRY_AFTER_MIN = 0.1


@implementer(IStreamClientEndpoint)
class _CountedEndpoint:
    """Counts the link's connection attempts (metrics)."""

    def __init__(self, link: WebSocketLink, endpoint: IStreamClientEndpoint) -> None:
        self._link = link
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> defer.Deferred[IProtocol]:
        self._link.attempts += 1
        return self._endpoint.connect(protocolFactory)


@implementer(ISessionOwner)
class WebSocketLink(Service):
    """
    Keeps one tunnel WebSocket open while running.  Subclasses build the
    session (L{make_session}) and hear of the link opening and closing.
    """

    log = Logger()
    session: Session | None = None
    #: Connection attempts, tunnels opened and tunnels closed, since made (metrics).
    attempts = 0
    opened = 0
    closed = 0
    #: Refused upgrades whose Retry-After was honoured, since made (metrics, tests).
    asked_to_wait = 0
    #: Where the jitter of a wait the server asked for comes from (tests replace it).
    random: Callable[[], float] = staticmethod(random.random)

    def __init__(
        self,
        reactor: IReactorTime,
        endpoint: IStreamClientEndpoint,
        websocket_factory: TunnelClientFactory,
        retry_policy: Callable[[int], float],
    ) -> None:
        self.reactor = reactor
        self._endpoint = endpoint
        self._factory = websocket_factory
        self._retry_policy = retry_policy
        #: Failed attempts since the last usable tunnel (the retry policy's argument).
        self._failures = 0
        #: The connection up now gave a usable tunnel; or, why it gave none.
        self._usable = False
        self._why: str | None = None
        #: The wait the server asked for when it refused this attempt (Retry-After).
        self._asked: float | None = None
        self._redialer: Redialer | None = None
        #: Fires once the last stop is over (None: not stopping).
        self._stopping: defer.Deferred[None] | None = None
        self._protocol: TunnelProtocol | None = None
        self._sync: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        stopping = self._stopping
        if stopping is not None and not stopping.called:
            # Started again before the last stop was over: the old
            # connection's end is the old redialer's to hear, then redial.
            def restart(result: None) -> None:
                if self.running:
                    self._redial()
                return result

            stopping.addCallback(restart)
        else:
            self._redial()

    def _redial(self) -> None:
        self._stopping = None
        self._redialer = Redialer(self.reactor, _CountedEndpoint(self, self._endpoint), self._factory,
                                  self._next_wait)
        self._redialer.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()  # type: ignore[no-untyped-call]  # Twisted's, untyped: mypy#16653
        if self.session is not None:
            self.session.note_end("stopped")
        if self._protocol is not None and self._protocol.transport is not None:
            # A TLS transport will not close while a producer is registered.
            self._protocol.transport.unregisterProducer()
        if self._redialer is None:
            return defer.succeed(None)
        self._stopping = self._redialer.stop()
        return self._stopping

    # For subclasses.

    @property
    def attempted_url(self) -> str:
        """The URL of the latest attempt (the one a failure is about)."""
        raise NotImplementedError

    def make_session(self, protocol: TunnelProtocol) -> Session:
        raise NotImplementedError

    def link_opened(self, session: Session, protocol: TunnelProtocol) -> None:
        """The tunnel is open."""

    def link_closed(self, session: Session) -> None:
        """The tunnel is gone (the link redials by itself)."""

    def tunnel_usable(self) -> None:
        """The tunnel is open and ready: this attempt succeeded, and failures count from zero again."""
        self._failures = 0
        self._usable = True

    def attempt_failed(self, reason: str) -> None:
        """The connection up now will give no usable tunnel, for C{reason} (its end follows)."""
        self._why = reason

    def retrying(self, url: str, reason: str, wait: float) -> None:
        """The attempt to C{url} failed for C{reason}; the next is in C{wait} s: log it, one line."""
        raise NotImplementedError

    # The redialer asks how long to wait after each connection.

    def _next_wait(self, failure: Failure | None) -> float:
        usable, self._usable = self._usable, False
        why, self._why = self._why, None
        asked, self._asked = self._asked, None
        if failure is None and usable:
            return self._retry_policy(1)  # a usable tunnel ended (link_closed told of it)
        if failure is None and asked is not None:
            # Not a failure: the server would take us, after the wait it named.
            self.asked_to_wait += 1
            wait = max(asked + self.random() * max(asked / 2, RETRY_AFTER_JITTER), RETRY_AFTER_MIN)
            self.retrying(self.attempted_url, f"{why or 'refused'}, retry after {round(asked)} s", wait)
            return wait
        self._failures += 1
        wait = self._retry_policy(self._failures)
        url = self.attempted_url
        if failure is not None:
            parts = urlsplit(url)
            try:
                port = parts.port or (443 if parts.scheme == "wss" else 80)
            except ValueError:
                port = None
            why = dial_failure_text(failure, parts.hostname or "", port)
        self.retrying(url, why or "connection closed", wait)
        return wait

    def _ended(self) -> None:
        if self._redialer is not None:
            self._redialer.ended()

    # ISessionOwner: called by the WebSocket protocol.

    def session_opened(self, protocol: ITunnelConnection, identity: Identity | None = None) -> ISession:
        ours = cast("TunnelProtocol", protocol)  # (our factory's protocols call this)
        session = self.make_session(ours)
        self.session = session
        self.opened += 1
        self._protocol = ours
        # The dialed-to side prunes streams we no longer hold (Go's clients
        # and peer links both do this).
        self._sync = LoopingCall(session.send_sync_connections)
        self._sync.clock = self.reactor
        self._sync.start(SYNC_INTERVAL, now=False)
        self.link_opened(session, ours)
        return session

    def session_closed(self, session: ISession) -> None:
        if self.session is session:
            self.session = None
            self.closed += 1
            self._protocol = None
            if self._sync is not None and self._sync.running:
                self._sync.stop()
            self._sync = None
            ours = cast("Session", session)
            if not self._usable and self._why is None:
                self._why = f"tunnel closed before it was ready: {ours.end_reason or 'closed'}"
            self.link_closed(ours)
            self._ended()

    def link_failed(self, reason: str, retry_after: float | None = None) -> None:
        """The WebSocket ended before it opened, for C{reason}; the server asked for C{retry_after} s."""
        self._why = reason
        self._asked = retry_after
        self._ended()
