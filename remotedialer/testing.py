"""
Test doubles: a whole tunnel in memory, for testing code that dials
through remotedialer without a network.

As C{treq.testing.StubTreq} lets a test send HTTP requests to a
twisted.web resource without sockets, L{MemoryTunnel} lets it dial targets
"behind a client" without a WebSocket, a server or a client process.  It is
the real thing minus the sockets: a server-side and a client-side
L{Session} speaking the real wire protocol to each other, real
L{TunnelStream} transports, the client's real Connect handling (dial
policy, refusal text, relay with back-pressure), and targets that are
protocols built by your factories on in-memory TCP-like connections.

Nothing moves until the clock runs: by default the tunnel has its own
L{twisted.internet.task.Clock}, and L{MemoryTunnel.flush} delivers
everything pending (wire messages, target data, C{connectionLost} calls),
as C{iosim}'s pump or C{StubTreq.flush} do, without advancing time.
Tests are synchronous and deterministic::

    from treq import content
    from twisted.trial.unittest import SynchronousTestCase
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from remotedialer.testing import MemoryTunnel

    class StatusTests(SynchronousTestCase):
        def test_status_page(self):
            tunnel = MemoryTunnel()
            root = Resource()
            root.putChild(b"status", Data(b"ok", "text/plain"))
            tunnel.add_target("tcp", "10.0.0.5:80", Site(root, reactor=tunnel.clock))
            http = tunnel.http_client()     # or HTTPClient(tunnel.agent())
            d = http.get("http://10.0.0.5/status").addCallback(content)
            tunnel.flush()
            self.assertEqual(self.successResultOf(d), b"ok")

Code under test that takes an L{IStreamOpener} (what L{TunnelEndpoint} and
L{tunnel_agent} need) can be given the tunnel itself; code that takes an
endpoint or an Agent gets L{MemoryTunnel.endpoint} or L{MemoryTunnel.agent}.

What runs on the tunnel's clock runs under L{flush}; what runs on the
global reactor does not.  So give targets the clock (C{Site(resource,
reactor=tunnel.clock)}, else their timeouts sit on the global reactor), and
prefer C{static.Data} to C{static.File} in targets (twisted.web drives file
producers with the global cooperator).  For request bodies use
L{MemoryTunnel.http_client}, whose body producer writes at once (treq's
default one runs on the global cooperator).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, BinaryIO, NamedTuple, cast

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionAborted, ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IAddress,
    IConsumer,
    IDelayedCall,
    IProducer,
    IProtocol,
    IProtocolFactory,
    IPullProducer,
    IPushProducer,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS
from zope.interface import implementer

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import MessageIds
from remotedialer.protocol._flow import FlowLimits
from remotedialer.tunnel._addresses import target_address
from remotedialer.tunnel._endpoint import TunnelEndpoint, tunnel_agent
from remotedialer.tunnel._exceptions import ClientNotConnected
from remotedialer.tunnel._interfaces import IDialPolicy, IStreamOpener
from remotedialer.tunnel._session import Session
from remotedialer.tunnel._stream import TunnelStream

if TYPE_CHECKING:
    from treq.client import HTTPClient

__all__ = [
    "MemoryTarget",
    "MemoryTransport",
    "MemoryTunnel",
    "StreamCounts",
    "WireMessage",
    "connect_in_memory",
]

_log = Logger()

#: A transport's write buffer above which its producer is paused
#: (Twisted's C{FileDescriptor.bufferSize}).
BUFFER_SIZE = 64 * 1024
#: The most a transport hands its protocol per C{dataReceived} (one socket read).
READ_SIZE = 64 * 1024

#: Session keys of the two ends, so texts that name them are predictable.
SERVER_SESSION_KEY = 1
CLIENT_SESSION_KEY = 2


class StreamCounts(NamedTuple):
    """Live streams on each side of a L{MemoryTunnel}; compares equal to a tuple."""

    server: int
    client: int


class WireMessage(NamedTuple):
    """
    One message a side sent: C{sender} is C{"server"} or C{"client"},
    C{type} the message type's name (C{"CONNECT"}, C{"DATA"}, C{"ERROR"},
    C{"PAUSE"}, C{"RESUME"}, ...), C{conn_id} the stream, C{size} its bytes.
    """

    sender: str
    type: str
    conn_id: int
    size: int


# The in-memory TCP connections between the client and its targets.


@implementer(ITransport, IConsumer, IPushProducer)
class MemoryTransport:
    """
    One end of an in-memory TCP-like connection (see L{connect_in_memory}).

    Unlike C{twisted.test.iosim.FakeTransport} it pushes back as a socket
    does, so producer/consumer code sees the calls TCP would make: a write
    buffer above L{BUFFER_SIZE} pauses the registered push producer, an
    emptied buffer resumes it (or calls a pull producer's
    C{resumeProducing}), and C{pauseProducing} stops delivery to this
    protocol, so the far end's buffer fills in turn.  Data moves at most
    L{READ_SIZE} bytes per clock turn; C{loseConnection} closes once the
    buffer is delivered, C{abortConnection} at once; C{connectionLost} is
    always called from the clock, never from inside a call.

    @ivar protocol: the protocol this end is connected to.
    @ivar other: the transport at the far end.
    """

    def __init__(self, clock: IReactorTime, host: IAddress, peer: IAddress) -> None:
        self._clock = clock
        self._host = host
        self._peer = peer
        self.protocol: IProtocol | None = None
        self.other: MemoryTransport | None = None
        self.disconnecting = False
        self.disconnected = False
        # Written by our protocol, not yet delivered to the far end's.
        self._outgoing: deque[bytes] = deque()
        self._outgoing_size = 0
        # Our protocol takes data (it has not paused us).
        self._reading = True
        self._read_call: IDelayedCall | None = None
        self._producer: IProducer | None = None
        self._streaming = False
        self._producer_paused = False
        self._no_delay = False
        self._keep_alive = False

    def __repr__(self) -> str:
        return f"<MemoryTransport {self._host} -> {self._peer}>"

    @property
    def buffered(self) -> int:
        """Bytes written and not yet delivered to the far end."""
        return self._outgoing_size

    @property
    def producer(self) -> IProducer | None:
        """The producer registered on this transport, if any."""
        return self._producer

    def _far_end(self) -> MemoryTransport:
        assert self.other is not None, "not connected (see connect_in_memory)"
        return self.other

    # ITransport

    def write(self, data: bytes) -> None:
        if self.disconnected or not data:
            return
        self._outgoing.append(bytes(data))
        self._outgoing_size += len(data)
        self._far_end()._schedule_read()
        if (
            self._outgoing_size > BUFFER_SIZE
            and self._producer is not None
            and self._streaming
            and not self._producer_paused
        ):
            self._producer_paused = True
            cast(IPushProducer, self._producer).pauseProducing()  # streaming: a push producer

    def writeSequence(self, iovec: Iterable[bytes]) -> None:
        self.write(b"".join(iovec))

    def loseConnection(self) -> None:
        """Close cleanly once what was written has been delivered (as TCP does)."""
        if self.disconnected or self.disconnecting:
            return
        self.disconnecting = True
        if not self._outgoing_size:
            self._buffer_empty()

    def abortConnection(self) -> None:
        """Close at once, dropping undelivered bytes; the far end sees ConnectionLost."""
        if self.disconnected:
            return
        self._outgoing.clear()
        self._outgoing_size = 0
        self._close(Failure(ConnectionAborted()), Failure(ConnectionLost()))

    def getHost(self) -> IAddress:
        return self._host

    def getPeer(self) -> IAddress:
        return self._peer

    # What TCP users call; there is no socket, so these only remember.

    def setTcpNoDelay(self, enabled: bool) -> None:
        self._no_delay = bool(enabled)

    def getTcpNoDelay(self) -> bool:
        return self._no_delay

    def setTcpKeepAlive(self, enabled: bool) -> None:
        self._keep_alive = bool(enabled)

    def getTcpKeepAlive(self) -> bool:
        return self._keep_alive

    # IPushProducer: our protocol (or the consumer it feeds) holds our input.

    def pauseProducing(self) -> None:
        self._reading = False

    def resumeProducing(self) -> None:
        if self.disconnected:
            return
        self._reading = True
        self._schedule_read()

    def stopProducing(self) -> None:
        self.loseConnection()

    # IConsumer

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        if self._producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, "
                f"because producer {self._producer!r} was never unregistered."
            )
        if self.disconnected:
            producer.stopProducing()
            return
        self._producer = producer
        self._streaming = bool(streaming)
        self._producer_paused = False
        if not streaming:
            cast(IPullProducer, producer).resumeProducing()

    def unregisterProducer(self) -> None:
        self._producer = None
        self._producer_paused = False
        if self.disconnecting and not self._outgoing_size and not self.disconnected:
            self._buffer_empty()

    # Moving bytes.

    def _schedule_read(self) -> None:
        if self._read_call is None and self._reading and not self.disconnected:
            self._read_call = self._clock.callLater(0, self._read)

    def _read(self) -> None:
        """Hand our protocol one read's worth of what the far end wrote."""
        self._read_call = None
        other = self._far_end()
        if self.disconnected or not self._reading or not other._outgoing_size:
            return
        chunk = other._take(READ_SIZE)
        try:
            assert self.protocol is not None, "not connected (see connect_in_memory)"
            self.protocol.dataReceived(chunk)
        except Exception:
            failure = Failure()
            _log.failure("protocol {protocol} failed; closing its connection",
                         failure, protocol=self.protocol)
            self._close(failure, Failure(ConnectionLost(failure.getErrorMessage())))
            return
        if other._outgoing_size:
            self._schedule_read()
        elif not other.disconnected:
            other._buffer_empty()

    def _take(self, size: int) -> bytes:
        parts = []
        taken = 0
        while self._outgoing and taken < size:
            chunk = self._outgoing.popleft()
            room = size - taken
            if len(chunk) > room:
                self._outgoing.appendleft(chunk[room:])
                chunk = chunk[:room]
            parts.append(chunk)
            taken += len(chunk)
        self._outgoing_size -= taken
        return b"".join(parts)

    def _buffer_empty(self) -> None:
        """All we wrote was delivered: ask for more, or finish closing (as FileDescriptor does)."""
        producer = self._producer
        if producer is not None and (not self._streaming or self._producer_paused):
            self._producer_paused = False
            cast("IPushProducer | IPullProducer", producer).resumeProducing()
        elif self.disconnecting:
            self._close(Failure(ConnectionDone()), Failure(ConnectionDone()))

    def _close(self, mine: Failure, theirs: Failure) -> None:
        """Both ends are closed now; their protocols hear it from the clock."""
        if self.disconnected:
            return
        for transport, reason in ((self, mine), (self._far_end(), theirs)):
            transport.disconnected = True
            transport.disconnecting = False
            transport._outgoing.clear()
            transport._outgoing_size = 0
            if transport._read_call is not None:
                transport._read_call.cancel()
                transport._read_call = None
            producer, transport._producer = transport._producer, None
            if producer is not None:
                try:
                    producer.stopProducing()
                except Exception:
                    _log.failure("stopProducing of {producer} failed", producer=producer)
            self._clock.callLater(0, transport._connection_lost, reason)

    def _connection_lost(self, reason: Failure) -> None:
        try:
            assert self.protocol is not None, "not connected (see connect_in_memory)"
            self.protocol.connectionLost(reason)
        except Exception:
            _log.failure("connectionLost of {protocol} failed", protocol=self.protocol)


def connect_in_memory(
    clock: IReactorTime,
    server: IProtocol,
    client: IProtocol,
    server_address: IAddress,
    client_address: IAddress,
) -> tuple[MemoryTransport, MemoryTransport]:
    """
    Connect two protocols by an in-memory TCP-like connection on C{clock}
    (see L{MemoryTransport}); returns the server's and the client's
    transport.  Both protocols' C{makeConnection} are called now (the
    server's first), data moves when the clock runs.
    """
    server_transport = MemoryTransport(clock, host=server_address, peer=client_address)
    client_transport = MemoryTransport(clock, host=client_address, peer=server_address)
    server_transport.other, client_transport.other = client_transport, server_transport
    server_transport.protocol, client_transport.protocol = server, client
    server.makeConnection(server_transport)
    client.makeConnection(client_transport)
    return server_transport, client_transport


# Targets behind the client.


class MemoryTarget:
    """
    A target behind the client of a L{MemoryTunnel}: each Connect to it gets
    a protocol from C{factory} on an in-memory connection.

    @ivar protocols: the protocols C{factory} built, one per connection, in order.
    """

    def __init__(self, proto: str, address: str, factory: IProtocolFactory) -> None:
        self.proto = proto
        self.address = address
        self.factory = factory
        self.protocols: list[IProtocol] = []

    def __repr__(self) -> str:
        return f"<MemoryTarget {self.proto}/{self.address} connections={len(self.protocols)}>"


@implementer(IStreamClientEndpoint)
class _TargetEndpoint:
    """What the client's dial policy hands its relay: connects (next turn) to a L{MemoryTarget}."""

    def __init__(self, clock: IReactorTime, target: MemoryTarget, ports: Iterator[int]) -> None:
        self._clock = clock
        self._target = target
        self._ports = ports

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        call: IDelayedCall | None = None

        def cancel(d: Deferred[IProtocol]) -> None:
            if call is not None and call.active():
                call.cancel()

        d: Deferred[IProtocol] = Deferred(cancel)

        def connected() -> None:
            target = self._target
            server_address = target_address(target.proto, target.address)
            client_address = IPv4Address("TCP", "127.0.0.1", next(self._ports))
            server = target.factory.buildProtocol(client_address)
            client = protocolFactory.buildProtocol(server_address)
            assert client is not None  # the client's relay factory always builds one
            if server is None:  # the target accepts and closes at once
                server = _Closer()
            else:
                target.protocols.append(server)
            connect_in_memory(self._clock, server, client, server_address, client_address)
            d.callback(client)

        call = self._clock.callLater(0, connected)
        return d


@implementer(IProtocol)
class _Closer:
    """The protocol of a target whose factory refused a connection: it closes at once."""

    transport: ITransport | None = None

    def makeConnection(self, transport: ITransport) -> None:
        self.transport = transport
        transport.loseConnection()

    def connectionMade(self) -> None:
        pass  # (not called: makeConnection has closed already)

    def dataReceived(self, data: bytes) -> None:
        pass

    def connectionLost(self, reason: Failure) -> None:
        pass


@implementer(IDialPolicy)
class _TargetPolicy:
    """The client's dial policy: the tunnel's targets, every other target refused."""

    def __init__(self, tunnel: MemoryTunnel) -> None:
        self._tunnel = tunnel
        # The client's side of each target connection gets the next "ephemeral" port.
        self._ports = itertools.count(40000)

    def endpoint_for(self, proto: str, address: str) -> IStreamClientEndpoint | None:
        target = self._tunnel.targets.get((proto, address))
        if target is None:
            return None  # the client refuses: "connect to proto/address not allowed"
        return _TargetEndpoint(self._tunnel.clock, target, self._ports)


# The WebSocket between the two sessions.


class _Wire:
    """One direction of the in-memory WebSocket: whole messages, in order, one batch a turn."""

    def __init__(self, tunnel: MemoryTunnel, sender: str) -> None:
        self._tunnel = tunnel
        self._sender = sender
        self._queue: deque[bytes] = deque()
        self._call: IDelayedCall | None = None
        self.receiver: Session | None = None

    def send(self, data: bytes) -> None:
        if not self._tunnel.connected:
            return
        message = _codec.decode(data)
        self._tunnel.messages.append(
            WireMessage(self._sender, message.type.name, message.conn_id, len(data))
        )
        self._queue.append(data)
        if self._call is None:
            self._call = self._tunnel.clock.callLater(0, self._deliver)

    def _deliver(self) -> None:
        self._call = None
        # What was queued until now; what delivery makes us send waits a turn.
        for _ in range(len(self._queue)):
            if not self._tunnel.connected:
                return
            assert self.receiver is not None  # MemoryTunnel sets it as it builds the sessions
            self.receiver.message_received(self._queue.popleft())

    def cut(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None
        self._queue.clear()


@implementer(IBodyProducer)
class _BytesBodyProducer:
    """A request body written all at once (treq's default producer runs on the global cooperator)."""

    def __init__(self, data: str | bytes | bytearray | memoryview | BinaryIO) -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        elif not isinstance(data, (bytes, bytearray, memoryview)):
            data = data.read()  # a file-like object
        self._body = bytes(data)
        self.length = len(self._body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


@implementer(IStreamOpener)
class MemoryTunnel:
    """
    A server and one connected client, joined in memory (see module docstring).

    @ivar clock: runs everything; a new L{Clock} unless one is given.
    @ivar client_key: the client's key (what L{open_stream} expects).
    @ivar server: the server-side L{Session} (where dials start).
    @ivar client: the client-side L{Session} (which serves the Connects).
    @ivar targets: the L{MemoryTarget}s by C{(proto, address)}.
    @ivar messages: every L{WireMessage} sent so far, in order.
    @ivar connected: False once L{disconnect} was called.
    """

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        client_key: str = "test-client",
        limits: FlowLimits | None = None,
    ) -> None:
        """
        @param clock: the clock to run on; L{flush} needs one with
            C{advance} (a L{Clock}).  With the real reactor, just wait for
            the Deferreds instead.
        @param limits: the flow-control thresholds of both sessions.
        """
        self.clock: IReactorTime = Clock() if clock is None else clock
        self.client_key = client_key
        self.targets: dict[tuple[str, str], MemoryTarget] = {}
        self.messages: list[WireMessage] = []
        self.connected = True
        to_client = _Wire(self, "server")
        to_server = _Wire(self, "client")
        self._wires = (to_client, to_server)
        self.server = Session(
            to_client.send,
            client_key=client_key,
            session_key=SERVER_SESSION_KEY,
            message_ids=MessageIds(1),
            drop=self._dropped,
            clock=self.clock,
            limits=limits,
        )
        self.client = Session(
            to_server.send,
            client_key=client_key,
            session_key=CLIENT_SESSION_KEY,
            dials_as_client=True,
            dialer=_TargetPolicy(self),
            message_ids=MessageIds(1),
            drop=self._dropped,
            clock=self.clock,
            limits=limits,
        )
        to_client.receiver = self.client
        to_server.receiver = self.server

    def __repr__(self) -> str:
        state = "connected" if self.connected else "disconnected"
        return f"<MemoryTunnel {self.client_key} {state} streams={tuple(self.streams)}>"

    # Setting up.

    def add_target(self, proto: str, address: str, factory: IProtocolFactory) -> MemoryTarget:
        """
        Put a target at C{proto}/C{address} behind the client (replacing any
        there): each Connect to it gets a protocol from C{factory} (e.g. a
        twisted.web C{Site}, or C{Factory.forProtocol(Echo)}).  The factory
        is not started, as with C{iosim}.  Targets not added are refused as a
        real client refuses them: the stream ends with the error
        C{connect to proto/address not allowed}.
        """
        target = MemoryTarget(proto, address, factory)
        self.targets[(proto, address)] = target
        return target

    # Dialing, as through a Server.

    def open_stream(self, client_key: str, proto: str, address: str) -> TunnelStream:
        """
        L{IStreamOpener}: a new stream to C{proto}/C{address} behind the
        client, as L{remotedialer.Server.open_stream}.

        @raise ClientNotConnected: C{client_key} is not ours, or the tunnel is down.
        """
        if client_key != self.client_key or not self.connected:
            raise ClientNotConnected(f"failed to find Session for client {client_key}")
        return self.server.open_stream(proto, address)

    def endpoint(self, proto: str, address: str) -> IStreamClientEndpoint:
        """An endpoint reaching C{proto}/C{address} through the tunnel (as C{Server.endpoint})."""
        return TunnelEndpoint(self, self.client_key, proto, address)

    def agent(
        self,
        pool: HTTPConnectionPool | None = None,
        tls_policy: IPolicyForHTTPS | None = None,
    ) -> Agent:
        """
        A twisted.web Agent whose requests go through the tunnel, to the
        target at the URL's C{host:port} (as C{Server.agent}); wrap it in
        C{treq.client.HTTPClient} for treq, or use L{http_client}.
        """
        return tunnel_agent(self.clock, self, self.client_key, pool=pool, tls_policy=tls_policy)

    def http_client(self, tls_policy: IPolicyForHTTPS | None = None) -> HTTPClient:
        """
        A C{treq.client.HTTPClient} over L{agent} (as C{Server.http_client}),
        whose C{data=}/C{json=} bodies are written at once, so they move
        under L{flush}.  (Multipart C{files=} still use the global cooperator.)
        """
        from treq.client import HTTPClient

        return HTTPClient(self.agent(tls_policy=tls_policy), data_to_body_producer=_BytesBodyProducer)

    # Driving.

    def flush(self) -> None:
        """
        Run everything due now: deliver the wire messages both ways, the
        targets' data, and the C{connectionLost} calls, until nothing is
        left.  Time does not move (use C{clock.advance} for timeouts).
        """
        advance = getattr(self.clock, "advance", None)
        if advance is None:
            raise TypeError(
                f"flush() needs a clock with advance() (a Clock), not {self.clock!r}; "
                "with a real reactor, wait for the Deferreds instead"
            )
        now = self.clock.seconds
        while any(call.getTime() <= now() for call in self.clock.getDelayedCalls()):
            advance(0)

    def disconnect(self, reason: Failure | BaseException | None = None) -> None:
        """
        The tunnel's WebSocket drops: messages in flight are lost, and every
        stream on both sides ends with C{reason} (by default
        C{ConnectionLost}); the targets' connections are aborted.  Dials
        after this fail with L{ClientNotConnected}.
        """
        if not self.connected:
            return
        if reason is None:
            reason = Failure(ConnectionLost("the tunnel's WebSocket was lost"))
        elif isinstance(reason, BaseException):
            reason = Failure(reason)
        self.connected = False
        for wire in self._wires:
            wire.cut()
        self.server.connection_lost(reason)
        self.client.connection_lost(reason)

    def _dropped(self) -> None:
        # A session got a message it cannot decode and ended itself.
        self.disconnect(Failure(ConnectionLost("tunnel dropped: malformed message")))

    # Looking.

    @property
    def streams(self) -> StreamCounts:
        """How many streams each side still holds (C{(0, 0)} once all are closed)."""
        return StreamCounts(self.server.flow_summary().streams, self.client.flow_summary().streams)
