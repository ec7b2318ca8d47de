"""
In-memory fixtures for the unit tests of sessions, streams and relays.

No sockets and no reactor: two L{Session}s are joined back to back by
L{SessionPair}, whose L{Direction}s queue the bytes each session sends and log
them decoded, and L{SessionPair.pump} delivers the queues (never re-entrantly)
until both are empty.  Connects that reach a session are served by a
L{FakeDialer}, whose L{FakeEndpoint}s connect the relay's second half to a
L{RecordingTransport} (a StringTransport that logs producer and close calls).
"""

from __future__ import annotations

from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPullProducer, IPushProducer, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, Cooperator
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.protocol._codec import Message, MessageIds, MessageType, decode, encode
from remotedialer.tunnel._session import Session

#: What the server side dials in most tests.
TARGET = ("tcp", "127.0.0.1:8125")
#: Session keys of the two ends of a pair, so error texts are predictable.
SERVER_SESSION_KEY = 42
CLIENT_SESSION_KEY = 7
CLIENT_KEY = "foo"


class Direction:
    """
    One direction of the wire: C{send} is a session's C{send} callable.
    Bytes are queued for delivery, and every message is logged decoded.
    """

    def __init__(self) -> None:
        self.queue: deque[bytes] = deque()
        self.raw: list[bytes] = []
        self.log: list[Message] = []

    def send(self, data: bytes) -> None:
        self.queue.append(data)
        self.raw.append(data)
        self.log.append(decode(data))

    def of(self, type: MessageType, conn_id: int | None = None) -> list[Message]:
        """The logged messages of C{type} (on stream C{conn_id} if given)."""
        return [
            m for m in self.log
            if m.type == type and (conn_id is None or m.conn_id == conn_id)
        ]

    def data(self, conn_id: int) -> bytes:
        """All Data payloads sent on C{conn_id}, joined."""
        return b"".join(m.payload for m in self.of(MessageType.DATA, conn_id))

    def errors(self, conn_id: int | None = None) -> list[tuple[int, str]]:
        """C{(conn_id, text)} of every Error sent."""
        return [(m.conn_id, m.error_text()) for m in self.of(MessageType.ERROR, conn_id)]

    def types(self, conn_id: int | None = None) -> list[MessageType]:
        """The types of the logged messages (on stream C{conn_id} if given)."""
        return [m.type for m in self.log if conn_id is None or m.conn_id == conn_id]


class SessionPair:
    """
    A server session and a client session joined in memory.  The server
    dials through the client (whose C{client_dialer} serves the Connects);
    the client may dial the server through C{server_dialer}.

    C{timeline} records, in order, C{("server", m)} / C{("client", m)} when
    that side sends C{m} and C{("to server", m)} / C{("to client", m)} when
    C{m} is delivered.
    """

    def __init__(
        self,
        *,
        client_dialer: FakeDialer | None = None,
        server_dialer: FakeDialer | None = None,
        server_is_peer: bool = False,
        listener=None,
        client_session_limits=None,
    ) -> None:
        self.from_server = Direction()
        self.from_client = Direction()
        self.client_dialer = client_dialer if client_dialer is not None else FakeDialer()
        self.server_dialer = server_dialer
        self.timeline: list[tuple[str, Message]] = []
        self.drops = {"server": 0, "client": 0}
        #: Runs what the sessions schedule (streams' connectionLost);
        #: L{pump} and L{settle} run what is due.
        self.clock = Clock()
        self.server = Session(
            self._sender("server", self.from_server),
            client_key=CLIENT_KEY,
            session_key=SERVER_SESSION_KEY,
            is_peer=server_is_peer,
            dialer=server_dialer,
            listener=listener,
            message_ids=MessageIds(1),
            drop=lambda: self._dropped("server"),
            clock=self.clock,
        )
        self.client = Session(
            self._sender("client", self.from_client),
            client_key=CLIENT_KEY,
            session_key=CLIENT_SESSION_KEY,
            dials_as_client=True,
            dialer=self.client_dialer,
            message_ids=MessageIds(1),
            drop=lambda: self._dropped("client"),
            clock=self.clock,
            session_limits=client_session_limits,
        )

    def client_sends(self, message: Message) -> None:
        """Queue C{message} from the client side as if its session had sent it (e.g. Pause)."""
        self.client._send(encode(message))

    def _sender(self, name: str, direction: Direction):
        def send(data: bytes) -> None:
            direction.send(data)
            self.timeline.append((name, direction.log[-1]))

        return send

    def _dropped(self, name: str) -> None:
        self.drops[name] += 1

    def pump(self) -> int:
        """
        Deliver queued messages both ways, and run the calls the sessions
        scheduled for now, until nothing is left; how many messages.
        """
        delivered = 0
        while True:
            while self.from_server.queue or self.from_client.queue:
                if self.from_server.queue:
                    self._deliver(self.from_server, "to client", self.client)
                    delivered += 1
                if self.from_client.queue:
                    self._deliver(self.from_client, "to server", self.server)
                    delivered += 1
            if not self.settle():
                return delivered

    def settle(self) -> int:
        """Run the calls scheduled for now (not later ones); how many."""
        ran = 0
        while any(call.getTime() <= self.clock.seconds() for call in self.clock.getDelayedCalls()):
            ran += len(self.clock.getDelayedCalls())
            self.clock.advance(0)
        return ran

    def step(self, to_client: bool = True) -> bool:
        """Deliver one queued message (preferring the given way); False if none."""
        ways = [
            (self.from_server, "to client", self.client),
            (self.from_client, "to server", self.server),
        ]
        for direction, label, session in ways if to_client else ways[::-1]:
            if direction.queue:
                self._deliver(direction, label, session)
                return True
        return False

    def _deliver(self, direction: Direction, label: str, session: Session) -> None:
        data = direction.queue.popleft()
        self.timeline.append((label, decode(data)))
        session.message_received(data)

    def open(self, protocol: Protocol | None = None, target=TARGET):
        """
        Dial C{target} from the server with C{protocol} (a new L{Recorder} by
        default) and pump: returns the server stream, its protocol and the
        client dialer's endpoint (whose transport is the target's end).
        """
        protocol = protocol if protocol is not None else Recorder()
        stream = self.server.dial(*target, protocol)
        self.pump()
        return stream, protocol, self.client_dialer.endpoints[-1]


class Recorder(Protocol):
    """A protocol recording the bytes it gets and how it was closed."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.reason: Failure | None = None
        self.lost = 0

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self.reason = reason
        self.lost += 1

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)


class RecordingTransport(StringTransport):
    """A StringTransport that also logs, in order, producer and close calls."""

    def __init__(self) -> None:
        super().__init__(lenient=True)
        self.calls: list[str] = []

    def registerProducer(self, producer, streaming) -> None:
        self.calls.append("registerProducer")
        super().registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.calls.append("unregisterProducer")
        super().unregisterProducer()

    def loseConnection(self) -> None:
        self.calls.append("loseConnection")
        super().loseConnection()

    def abortConnection(self) -> None:
        # StringTransport's abortConnection calls loseConnection: log only one.
        self.calls.append("abortConnection")
        self.disconnected = self.disconnecting = True

    def pauseProducing(self) -> None:
        self.calls.append("pauseProducing")
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.calls.append("resumeProducing")
        super().resumeProducing()

    def stopProducing(self) -> None:
        self.calls.append("stopProducing")
        super().stopProducing()


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint connecting to a L{RecordingTransport}: at once, or when
    L{complete} is called (C{immediate=False}).  Cancelling its pending
    Deferred is recorded in C{cancelled}.
    """

    def __init__(self, proto: str, address: str, immediate: bool = True) -> None:
        self.target = (proto, address)
        self.immediate = immediate
        self.factory = None
        self.deferred: Deferred | None = None
        self.protocol = None
        self.transport: RecordingTransport | None = None
        self.cancelled = False

    def connect(self, factory) -> Deferred:
        self.factory = factory
        self.deferred = Deferred(self._cancel)
        if self.immediate:
            self.complete()
        return self.deferred

    def complete(self) -> None:
        """The connection succeeds: build and connect the protocol."""
        self.protocol = self.factory.buildProtocol(None)
        self.transport = RecordingTransport()
        self.protocol.makeConnection(self.transport)
        if not self.deferred.called:
            self.deferred.callback(self.protocol)

    def _cancel(self, deferred: Deferred) -> None:
        self.cancelled = True


class FakeDialer:
    """
    A session's dialer.  By default every target gets a new L{FakeEndpoint};
    C{rules["proto/address"]} overrides that: None refuses, an exception is
    raised, a Deferred is returned as is.
    """

    ALLOW = object()

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.rules: dict[str, object] = {}
        self.requests: list[tuple[str, str]] = []
        self.endpoints: list[FakeEndpoint] = []

    def endpoint_for(self, proto: str, address: str):
        self.requests.append((proto, address))
        rule = self.rules.get(f"{proto}/{address}", self.ALLOW)
        if rule is self.ALLOW:
            endpoint = FakeEndpoint(proto, address, self.immediate)
            self.endpoints.append(endpoint)
            return endpoint
        if isinstance(rule, BaseException):
            raise rule
        return rule


@implementer(IPushProducer)
class FakeProducer:
    """A push producer logging the calls it gets."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")

    def resumeProducing(self) -> None:
        self.calls.append("resume")

    def stopProducing(self) -> None:
        self.calls.append("stop")

    @property
    def paused(self) -> bool:
        flow = [c for c in self.calls if c in ("pause", "resume")]
        return bool(flow) and flow[-1] == "pause"


@implementer(IPullProducer)
class CountingPullProducer:
    """A pull producer writing C{b"chunk<n>"} to C{consumer} on each resumeProducing."""

    def __init__(self, consumer) -> None:
        self.consumer = consumer
        self.pulls = 0
        self.stopped = False

    def resumeProducing(self) -> None:
        self.pulls += 1
        self.consumer.write(b"chunk%d" % self.pulls)

    def stopProducing(self) -> None:
        self.stopped = True


def clock_cooperator(clock: Clock) -> Cooperator:
    """A Cooperator doing one work unit per C{clock.advance(1)}."""
    return Cooperator(
        terminationPredicateFactory=lambda: lambda: True,
        scheduler=lambda work: clock.callLater(1, work),
    )


def inject(session: Session, message: Message) -> None:
    """Feed C{session} one message as if the far side had sent it."""
    session.message_received(encode(message))
