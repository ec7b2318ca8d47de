"""
The Autobahn WebSocket protocols that carry a tunnel session.

They do three things only: hand every binary message to the L{Session},
register the session as the producer of the WebSocket's TCP transport (so
a full send buffer pauses the streams), and keep the link alive the way Go
does.  Everything else is the session's.  They know their owner (server,
client or peer link) only as an L{ISessionOwner}, the factory's C{owner}.

Keepalive, as Go's remotedialer does it (docs/protocol.md section 1):

  - Only the dialing side pings: a client, and a server's outgoing peer
    link, send a PING with an B{empty} payload every 5 s
    (C{PingWriteInterval}), on a timer, whether or not the last one was
    answered.
  - Go answers a PING with an B{empty} PONG, never an echo.  Autobahn's own
    auto-ping waits for its payload to come back, so against Go it pings
    once and never again -- and Go, whose 60 s read deadline
    (C{PingWaitDuration}) is extended only by a PING or PONG, not by data,
    drops the link.  So we never use Autobahn's auto-ping: the dialing side
    pings from a LoopingCall of its own and ignores what the pongs carry.
  - Every PING we receive is answered at once (Autobahn does that).
  - On our side any frame received counts as liveness, and a link silent
    for 60 s is dead (C{TimeoutMixin}); both numbers are options.

Closing: a session ended on purpose (the server draining) is closed with
a WebSocket close frame, code 1001 "going away" and a reason ("server is
shutting down"), so that the far side (ours or Go's) can say why; a far
side that has not answered the close within C{CLOSE_HANDSHAKE_TIMEOUT}
seconds is aborted.  Fatal input and dead links are aborted at once.

Limits (L{SessionLimits}): a message (or frame) over C{max_message_size}
closes the WebSocket with 1009 (Autobahn's payload limits); a message
started and not finished within C{message_deadline} drops it; and while the
far side does not read (our TCP send buffer is full), at most
C{send_high_water} bytes of replies it provoked (Errors for unknown
streams, pongs) are queued before we stop reading from it as well -- so a
peer sending messages that provoke replies cannot make them pile up in our
memory.  Only replies count: our own streams' writes are paused by the
same back-pressure, and stopping to read because of them could deadlock
two sides that both write faster than the other reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, cast

import txaio
from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from autobahn.websocket import USES_NVX
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.protocol._limits import SessionLimits
from remotedialer.protocol._retryafter import retry_after_seconds
from remotedialer.protocol._text import printable
from remotedialer.tunnel._exceptions import TunnelLinkError
from remotedialer.tunnel._interfaces import IFlowTransport, ISessionOwner, ITunnelConnection
from remotedialer.tunnel._logtext import tls_failure_text
from remotedialer.tunnel._session import Session

if TYPE_CHECKING:
    from autobahn.twisted.websocket import WebSocketAdapterProtocol
    from autobahn.websocket.protocol import WebSocketProtocol

    from remotedialer.tunnel._identity import Identity

    class _WebSocket(  # type: ignore[misc]  # Autobahn's own bases disagree (peer...)
        TimeoutMixin, WebSocketAdapterProtocol, WebSocketProtocol
    ):
        """
        For the checker only: L{TunnelProtocol} as the Autobahn protocol it
        is always mixed into (the Twisted adapter and the WebSocket machine).
        """

else:
    _WebSocket = TimeoutMixin

#: A link silent this long (no frame at all, pings included) is dead
#: (Go's PingWaitDuration).
IDLE_TIMEOUT = 60.0
#: The dialing side pings this often (Go's PingWriteInterval).
PING_INTERVAL = 5.0
HANDSHAKE_TIMEOUT = 30
#: How long a far side has to answer our close frame before the connection is aborted.
CLOSE_HANDSHAKE_TIMEOUT = 5.0


def nvx_active() -> bool:
    """
    Autobahn's native (NVX) masking is in use.  Without it, masked traffic
    (everything a client sends) runs at a few MB/s.
    """
    return bool(USES_NVX)


def _warn_without_nvx() -> None:
    if not nvx_active():
        Logger().warn(
            "Autobahn NVX acceleration is not active (AUTOBAHN_USE_NVX or a build "
            "without the native extension): WebSocket masking will be slow"
        )


@implementer(IPushProducer)
class _SendPressure:
    """
    The WebSocket's producer on its TCP transport: the transport's
    back-pressure goes to the session (which pauses the streams writing),
    and past the high-water mark of reply bytes queued while paused,
    reading from the far side stops too, until the transport drains.
    """

    def __init__(self, protocol: TunnelProtocol, session: Session, high_water: int) -> None:
        self._protocol = protocol
        self._session = session
        self._high_water = high_water
        self.paused = False
        self.queued_while_paused = 0
        self.reading_stopped = False

    def replied(self, size: int) -> None:
        """We queued C{size} bytes answering the far side."""
        if self.paused and size:
            self.queued_while_paused += size
            if self.queued_while_paused > self._high_water and not self.reading_stopped:
                self.reading_stopped = True
                self._protocol.stop_reading()

    def pauseProducing(self) -> None:
        if not self.paused:
            self.paused = True
            self._session.pauseProducing()

    def resumeProducing(self) -> None:
        if self.paused:
            self.paused = False
            self.queued_while_paused = 0
            if self.reading_stopped:
                self.reading_stopped = False
                self._protocol.start_reading()
            self._session.resumeProducing()

    def stopProducing(self) -> None:
        self._session.stopProducing()


# The factories are Autobahn's own, with what the tunnel protocols read from
# them set on them (by server_factory and client_factory).  The checker sees
# those attributes declared on a subclass; at run time the names are
# Autobahn's classes, so the factories are exactly what they always were.
# (Declared in each class, not in a shared base: Autobahn's factories do not
# take another base class under the checker; their own bases disagree.)

if TYPE_CHECKING:

    class TunnelServerFactory(WebSocketServerFactory):
        """The WebSocket factory behind a server's tunnel resource (see L{server_factory})."""

        reactor: IReactorTime
        owner: ISessionOwner
        ping_interval: float | None
        idle_timeout: float
        limits: SessionLimits

    class TunnelClientFactory(WebSocketClientFactory):
        """The WebSocket factory of a client or a peer link (see L{client_factory})."""

        reactor: IReactorTime
        owner: ISessionOwner
        ping_interval: float | None
        idle_timeout: float
        limits: SessionLimits

else:
    TunnelServerFactory = WebSocketServerFactory
    TunnelClientFactory = WebSocketClientFactory


@implementer(ITunnelConnection)
class TunnelProtocol(_WebSocket):
    """
    What the server and client protocols share: the WebSocket carrying one
    session (an L{ITunnelConnection}).  The client and the server's peer
    links build sessions on it, so it is the tunnel floor's public class.
    """

    # Not "log": that would shadow Autobahn's own (txaio) logger, whose
    # debug calls on every frame are no-ops only while it is in charge.
    _log = Logger()
    factory: TunnelServerFactory | TunnelClientFactory
    transport: IFlowTransport  # the WebSocket's TCP (or TLS) transport
    session: Session | None = None
    _pinger: LoopingCall | None = None
    _pressure: _SendPressure | None = None
    _message_deadline: IDelayedCall | None = None
    _completed = 0  # messages and control frames received whole
    #: Liveness probes waiting for the far side to be heard from (L{probe}).
    _probes: list[tuple[Deferred[bool], IDelayedCall]] | None = None
    #: Pings sent and pongs received, and who waits for the pong of which
    #: ping (L{round_trip}): one pong answers each ping, in order (Go's and
    #: Autobahn's), so the n-th pong is the n-th ping's.
    _pings_sent = 0
    _pongs_received = 0
    _round_trips: list[tuple[int, Callable[[], object]]] | None = None
    #: The caller's address when not the transport's peer (a trusted
    #: proxy's X-Forwarded-For named it: the resource sets it).
    client_address: IAddress | None = None

    def start_session(self, session: Session) -> None:
        """
        Bind C{session} to this WebSocket.  Under WebSocketResource the
        twisted.web HTTPChannel is still the socket's producer: unregister it
        before the session takes its place.
        """
        self.session = session
        self.transport.unregisterProducer()
        self._pressure = _SendPressure(self, session, self.factory.limits.send_high_water)
        self.transport.registerProducer(self._pressure, True)
        self.setTimeout(self.factory.idle_timeout)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        interval = self.factory.ping_interval
        if interval:
            self._pinger = LoopingCall(self.sendPing)
            self._pinger.clock = self.factory.reactor
            self._pinger.start(interval, now=False)

    def callLater(self, period: float, func: Callable[..., object], *args: object) -> IDelayedCall:
        """
        The timer of TimeoutMixin (the idle timeout) and of the message
        deadline, on the factory's reactor rather than the global one.
        """
        return self.factory.reactor.callLater(period, func, *args)

    def send_binary(self, data: bytes) -> None:
        """
        Send C{data} as one binary message.  Through Autobahn's prepared
        messages, the one-frame path (masked with a fresh key on a client,
        as RFC 6455 wants; compressed through C{sendMessage} if compression
        was negotiated): half of C{sendMessage}'s checks are for options a
        tunnel never uses, and they cost as much as the framing itself.
        A message over our own size limit still goes to C{sendMessage},
        which refuses it as it always did.
        """
        if self.state != self.STATE_OPEN:
            return
        if len(data) > self.factory.limits.max_message_size:  # sendMessage refuses it (PayloadExceededError)
            self.sendMessage(data, isBinary=True)  # type: ignore[no-untyped-call]  # Autobahn's: mypy#16651
            return
        self.sendPreparedMessage(self.factory.prepareMessage(data, isBinary=True))

    def drop(self) -> None:
        self.dropConnection(abort=True)

    def close(self, code: int, reason: str) -> None:
        """
        Send a close frame with C{code} and C{reason} (cut to the 123 bytes
        a close frame has room for); Autobahn aborts the connection if the
        far side has not answered it within C{CLOSE_HANDSHAKE_TIMEOUT}
        seconds.  (Not C{sendClose}: it refuses 1001, "going away", which
        RFC 6455 section 7.4.1 gives to a server going down.)
        """
        if self.state != self.STATE_OPEN:
            return
        text = reason.encode("utf-8")[:123].decode("utf-8", "ignore").encode("utf-8")
        self.sendCloseFrame(code=code, reasonUtf8=text, isReply=False)

    def peer_address(self) -> IAddress | None:
        """The far end's address (None once the transport is gone): the caller's, behind a trusted proxy."""
        if self.transport is None:
            return None
        return self.client_address if self.client_address is not None else self.transport.getPeer()

    def stop_reading(self) -> None:
        self._log.warn("{session}: the far side is not reading; not reading from it until it does",
                       session=self.session)
        self.transport.pauseProducing()

    def start_reading(self) -> None:
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        if self.session is None:
            super().dataReceived(data)
            return
        self.resetTimeout()  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        if self._probes:
            self._settle_probes(True)
        super().dataReceived(data)
        # (the common case inline: whole messages read, no deadline running)
        if self._message_deadline is not None or self.current_frame is not None or self.inside_message:
            self._watch_message_deadline()

    def probe(self, timeout: float) -> Deferred[bool]:
        """
        Whether the far side is alive now: a ping goes out, and the Deferred
        fires True once anything arrives (the pong, or any other frame),
        False after C{timeout} seconds of silence or if the WebSocket ends.
        """
        answer: Deferred[bool] = Deferred()
        if self.session is None or self.state != self.STATE_OPEN:
            answer.callback(False)
            return answer
        if self._probes is None:
            self._probes = []
        timer = self.callLater(timeout, self._probe_expired, answer)
        self._probes.append((answer, timer))
        self.sendPing()
        return answer

    def _probe_expired(self, answer: Deferred[bool]) -> None:
        if self._probes is not None:
            self._probes = [(d, t) for d, t in self._probes if d is not answer]
        answer.callback(False)

    def _settle_probes(self, alive: bool) -> None:
        probes, self._probes = self._probes or [], None
        for answer, timer in probes:
            timer.cancel()
            answer.callback(alive)

    def _message_in_progress(self) -> bool:
        return self.current_frame is not None or bool(self.inside_message)

    def _watch_message_deadline(self) -> None:
        """A message started must be finished within the deadline (see module docstring)."""
        if not self._message_in_progress():
            if self._message_deadline is not None:
                self._message_deadline.cancel()
                self._message_deadline = None
        elif self._message_deadline is None:
            self._message_deadline = self.callLater(
                self.factory.limits.message_deadline, self._message_deadline_passed, self._completed)

    def _message_deadline_passed(self, completed_then: int) -> None:
        self._message_deadline = None
        if not self._message_in_progress():
            return
        if self._completed != completed_then:  # others finished since: this one is new
            self._watch_message_deadline()
            return
        self._log.warn("{session}: a message left unfinished for {deadline} s, closing",
                       session=self.session, deadline=self.factory.limits.message_deadline)
        if self.session is not None:
            self.session.note_end(f"a message left unfinished for {self.factory.limits.message_deadline:g} s")
        self.dropConnection(abort=True)

    def onPing(self, payload: bytes) -> None:
        self._completed += 1
        super().onPing(payload)
        if self._pressure is not None:
            self._pressure.replied(len(payload) + 2)

    def onPong(self, payload: bytes) -> None:
        self._completed += 1
        super().onPong(payload)
        self._pongs_received += 1
        waiting = self._round_trips
        if waiting and waiting[0][0] <= self._pongs_received:
            done = [callback for target, callback in waiting if target <= self._pongs_received]
            self._round_trips = [(t, c) for t, c in waiting if t > self._pongs_received]
            for callback in done:
                callback()

    def sendPing(self, payload: bytes | None = None) -> None:
        self._pings_sent += 1
        super().sendPing(payload)

    def round_trip(self, callback: Callable[[], object]) -> None:
        """
        Call C{callback} once the far side has read everything sent so far:
        a ping goes out behind it, and its pong comes back (never, if the
        WebSocket ends first).
        """
        if self.session is None or self.state != self.STATE_OPEN:
            return
        self.sendPing()
        if self._round_trips is None:
            self._round_trips = []
        self._round_trips.append((self._pings_sent, callback))

    # Messages in, through Autobahn's frame API: the same as its default
    # (frames joined, then onMessage), without also firing its "message"
    # observable, which builds and chains a Deferred for every message
    # although nothing here listens to it.

    def onMessageBegin(self, isBinary: bool) -> None:
        super().onMessageBegin(isBinary)  # (its size accounting, for the limits)
        self._frames: list[bytes] = []
        self._binary = isBinary

    def onMessageFrame(self, payload: list[bytes]) -> None:  # type: ignore[override]  # a list, as Autobahn passes it
        self._frames += payload

    def onMessageEnd(self) -> None:
        frames, self._frames = self._frames, []
        if not self.failedByMe:  # (a message over the size limit, the WebSocket failing)
            self.onMessage(frames[0] if len(frames) == 1 else b"".join(frames), self._binary)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._completed += 1
        if self.session is None:
            return
        if not isBinary:
            self._log.warn("{session}: text message is a protocol error, closing", session=self.session)
            self.session.lose(Failure(TunnelLinkError("text message received")))
            return
        replied = self.session.message_received(payload)
        if replied and self._pressure is not None:
            self._pressure.replied(replied)

    def timeoutConnection(self) -> None:
        self._log.warn("{session}: no frame for {timeout} s, closing", session=self.session,
                      timeout=self.factory.idle_timeout)
        if self.session is not None:
            self.session.note_end(f"no frame for {self.factory.idle_timeout:g} s")
        self.dropConnection(abort=True)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.setTimeout(None)  # type: ignore[no-untyped-call]  # Twisted's: mypy#16651
        if self._message_deadline is not None:
            self._message_deadline.cancel()
            self._message_deadline = None
        if self._pressure is not None:
            # The transport would keep our producer, and through it the session.
            self._pressure = None
            self.transport.unregisterProducer()
        pinger, self._pinger = self._pinger, None
        if pinger is not None and pinger.running:
            pinger.stop()
        self._settle_probes(False)
        self._round_trips = None
        session, self.session = self.session, None
        if session is not None:
            text = reason or ("closed" if wasClean else "connection lost")
            session.connection_lost(Failure(TunnelLinkError(f"tunnel closed: {text}")))
            self.session_ended(session)

    def session_ended(self, session: Session) -> None:
        """Tell the owner (server or client) the session is over."""


class TunnelServerProtocol(TunnelProtocol, WebSocketServerProtocol):  # type: ignore[misc]  # as _WebSocket
    """
    The server end of a tunnel.  C{identity} (client key, peer flag) was
    settled by the resource before the upgrade; the owner builds the session.
    """

    identity: Identity | None = None
    #: (see L{_options_from_factory})
    CONFIG_ATTRS: list[str] = []  # (Autobahn reads it; never changed)

    def connectionMade(self) -> None:
        _options_from_factory(self, WebSocketServerProtocol.CONFIG_ATTRS)
        super().connectionMade()

    def onOpen(self) -> None:
        # (an owner builds its sessions with a SessionFactory: they are ours)
        self.start_session(cast("Session", self.factory.owner.session_opened(self, self.identity)))

    def session_ended(self, session: Session) -> None:
        self.factory.owner.session_closed(session)


class TunnelClientProtocol(TunnelProtocol, WebSocketClientProtocol):  # type: ignore[misc]  # as _WebSocket
    """
    The client end of a tunnel (also a server's outgoing peer link).  Its
    owner logs what becomes of each attempt, in one line with the reason
    (a refused upgrade, a failed TLS handshake...); Autobahn's own lines
    about the same events (failing the handshake, dropping the
    connection, the TLS error) would only repeat it, so its logger here
    speaks of critical things only.
    """

    factory: TunnelClientFactory
    #: (see L{_options_from_factory})
    CONFIG_ATTRS: list[str] = []  # (Autobahn reads it; never changed)
    log = txaio.make_logger(level="critical")  # type: ignore[attr-defined]  # set by txaio.use_twisted()
    _lost: Failure | None = None

    def onOpen(self) -> None:
        self.start_session(cast("Session", self.factory.owner.session_opened(self, None)))

    def connectionMade(self) -> None:
        _options_from_factory(self, WebSocketClientProtocol.CONFIG_ATTRS)
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = reason
        super().connectionLost(reason)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        opened = self.session is not None
        super().onClose(wasClean, code, reason)
        if not opened:
            self.factory.owner.link_failed(self.why_not_opened(), self.retry_after())

    def why_not_opened(self) -> str:
        """Why the WebSocket did not open, in words: TLS, the server's answer, or what Autobahn saw."""
        tls = tls_failure_text(self._lost) if self._lost is not None else None
        if tls is not None:
            return tls
        status = getattr(self, "http_status_line", None)  # (the answer's first line, once read)
        if status:
            parts = str(status).split(None, 2)
            if len(parts) >= 2 and parts[1] != "101":
                return printable(f"server answered {parts[1]} {parts[2] if len(parts) > 2 else ''}".rstrip())
        elif self._lost is not None and self._lost.check(ConnectionDone, ConnectionLost):
            return "connection closed before the server answered the upgrade"
        return printable(self.wasNotCleanReason or "connection closed")

    def retry_after(self) -> float | None:
        """
        Seconds the server asked us to wait (its C{Retry-After}) when it
        answered the upgrade 429 (its limiter) or 503 (it drains); else None.
        """
        status = str(getattr(self, "http_status_line", None) or "").split(None, 2)
        if len(status) < 2 or status[1] not in ("429", "503"):
            return None
        headers = getattr(self, "http_headers", None) or {}
        return retry_after_seconds(headers.get("retry-after"), self.factory.reactor.seconds())

    def session_ended(self, session: Session) -> None:
        self.factory.owner.session_closed(session)


def _options_from_factory(protocol: WebSocketServerProtocol | WebSocketClientProtocol,
                          names: Sequence[str]) -> None:
    """
    Give C{protocol} its factory's options, as Autobahn does when a
    connection is made for each name in the protocol class's
    C{CONFIG_ATTRS} (those the protocol does not set itself).  Our protocol
    classes name none there and call this instead: Autobahn also builds a
    debug line of every option with C{pprint.pformat} for each connection,
    whatever the log level -- about 0.6 ms, half of what an upgrade costs
    the server, when a thousand agents come back at once.
    """
    for name in names:
        if not hasattr(protocol, name):
            setattr(protocol, name, getattr(protocol.factory, name))


def _set_options(factory: TunnelServerFactory | TunnelClientFactory, limits: SessionLimits) -> None:
    factory.limits = limits
    factory.setProtocolOptions(
        maxFramePayloadSize=limits.max_message_size,
        maxMessagePayloadSize=limits.max_message_size,
        # An upgrade that gets no answer is a silent link too: give up on it
        # as soon as on an open one (a client then redials).
        openHandshakeTimeout=min(HANDSHAKE_TIMEOUT, factory.idle_timeout),
        closeHandshakeTimeout=CLOSE_HANDSHAKE_TIMEOUT,
        # A protocol violation (a message over the size limit) is told to
        # the far side with its close code (1009) before the drop.
        failByDrop=False,
    )


def check_keepalive(ping_interval: float | None, idle_timeout: float) -> None:
    """ValueError unless 0 < ping_interval < idle_timeout (ping_interval None: no pings)."""
    if not idle_timeout > 0:
        raise ValueError(f"idle timeout must be over 0 s, not {idle_timeout}")
    if ping_interval is not None and not 0 < ping_interval < idle_timeout:
        raise ValueError(
            f"ping interval must be over 0 s and under the idle timeout ({idle_timeout:g} s), "
            f"not {ping_interval}"
        )


def server_factory(
    owner: ISessionOwner,
    reactor: IReactorTime,
    idle_timeout: float = IDLE_TIMEOUT,
    limits: SessionLimits | None = None,
) -> TunnelServerFactory:
    """
    The WebSocket factory behind a server's tunnel resource: the accepting
    side never pings (as Go), it answers pings and watches for silence.
    """
    check_keepalive(None, idle_timeout)
    _warn_without_nvx()
    factory = TunnelServerFactory(reactor=reactor)  # type: ignore[no-untyped-call]  # Autobahn's: mypy#16651
    factory.protocol = TunnelServerProtocol
    factory.owner = owner
    factory.ping_interval = None
    factory.idle_timeout = idle_timeout
    _set_options(factory, limits if limits is not None else SessionLimits())
    return factory


def client_factory(
    owner: ISessionOwner,
    url: str,
    headers: dict[str, str],
    reactor: IReactorTime,
    ping_interval: float = PING_INTERVAL,
    idle_timeout: float = IDLE_TIMEOUT,
    limits: SessionLimits | None = None,
) -> TunnelClientFactory:
    """
    The WebSocket factory of a client (or peer link) dialing C{url}: the
    dialing side pings every C{ping_interval} seconds.
    """
    check_keepalive(ping_interval, idle_timeout)
    _warn_without_nvx()
    factory = TunnelClientFactory(  # type: ignore[no-untyped-call]  # Autobahn's: mypy#16651
        url, headers=headers, reactor=reactor)
    factory.protocol = TunnelClientProtocol
    factory.noisy = False  # no "Starting factory <repr>" line at every (re)connect
    factory.owner = owner
    factory.ping_interval = ping_interval
    factory.idle_timeout = idle_timeout
    _set_options(factory, limits if limits is not None else SessionLimits())
    return factory
