"""
A TCP relay that misbehaves on request, for fault tests on real sockets.

Put it between a tunnel client and its server (it listens on 127.0.0.1:0
and forwards every connection to a target address) and change, while
traffic flows, what each direction of each connection does:

    latency     every chunk is held this many seconds (order is kept)
    rate        at most this many bytes per second
    slice_size  bytes go out in pieces of this size, one write per reactor
                turn, with TCP_NODELAY: the far end reads them apart
    blackhole   everything is dropped, closes included: the far end hears
                nothing, ever (a partition, a dead NAT entry, a stopped host)
    cut_after   this many more bytes pass, then both sides are closed
                (counts down; with cut_reset, both are reset instead)

and, at once: L{RelayConnection.reset} aborts both sides (RST); with
L{FaultRelay.refuse}, new connections are reset as soon as accepted.
C{socket_buffer} makes the relay's sockets' kernel buffers that small (a
thin link: otherwise the kernel alone holds megabytes in flight).

Why our own relay: the in-memory network of tests/netsim.py has no
latency, never stalls and never loses a byte, and only real sockets show
the real reactor, the kernel's buffers and Autobahn's parser (on frames
arriving a byte at a time) doing their part in keepalive, back-pressure
and error handling.  Proxies built for this (toxiproxy) need a binary and
a control API; this is the relay idiom of twisted.protocols.portforward
with producers, so back-pressure crosses it: a direction whose queue passes
C{high_water} stops reading its source, and a destination whose send buffer
is full pauses the direction writing to it.

Directions: C{up} is from the side that connected to the relay (the
client) towards the target (the server), C{down} the way back.
"""

from __future__ import annotations

import socket
from collections import deque

import attrs
from twisted.internet import defer
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

#: A direction holding more than this stops reading its source.
HIGH_WATER = 1024 * 1024
#: A rate-capped direction writes at most this many seconds' worth at once.
RATE_QUANTUM = 0.01


@attrs.define
class Faults:
    """What one direction of one connection does (see the module docstring)."""

    latency: float = 0.0
    rate: float | None = None
    slice_size: int | None = None
    blackhole: bool = False
    cut_after: int | None = None
    cut_reset: bool = False


class _Leg(Protocol):
    """One TCP connection of a relayed pair: C{outer} (accepted) or C{inner} (to the target)."""

    def __init__(self, connection: RelayConnection) -> None:
        self.connection = connection
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.setTcpNoDelay(True)
        size = self.connection.relay.socket_buffer
        if size:
            handle = self.transport.getHandle()
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
            handle.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        self.connection.leg_made(self)

    def dataReceived(self, data: bytes) -> None:
        self.connection.pipe_from(self).received(data)

    def connectionLost(self, reason=None) -> None:
        self.lost = True
        self.connection.leg_lost(self, reason)


@implementer(IPushProducer)
class _Pipe:
    """
    One direction: what its source leg reads, queued with a release time,
    written to its sink leg under its L{Faults}.  It is the sink
    transport's producer (a full send buffer pauses it).
    """

    def __init__(self, connection: RelayConnection, faults: Faults, high_water: int) -> None:
        self.connection = connection
        self.faults = faults
        self.source: _Leg | None = None
        self.sink: _Leg | None = None
        self.read = 0  # bytes taken from the source
        self.forwarded = 0  # bytes handed to the sink
        self.queued = 0
        self._high_water = high_water
        self._queue: deque[tuple[float, bytes]] = deque()
        self._clock = connection.relay.reactor
        self._timer = None
        self._free_at = 0.0  # rate cap: when the link may carry the next piece
        self._sink_paused = False
        self._source_paused = False
        self._eof = None  # the source's close, passed on once the queue drains
        self._cut = False
        self._stopped = False

    def received(self, data: bytes) -> None:
        self.read += len(data)
        faults = self.faults
        if faults.blackhole or self._cut or self._stopped:
            return
        if faults.cut_after is not None:
            data = data[: faults.cut_after]
            faults.cut_after -= len(data)
            self._cut = faults.cut_after == 0
        if data:
            self._queue.append((self._clock.seconds() + faults.latency, data))
            self.queued += len(data)
        if self.queued > self._high_water and not self._source_paused:
            self._source_paused = True
            self.source.transport.pauseProducing()
        if self._timer is None:  # else the queue's head is not due yet
            self.pump()

    def source_lost(self, reason) -> None:
        if self.faults.blackhole or self._cut:
            return
        self._eof = reason
        self.pump()

    def pump(self) -> None:
        """
        Write what is due; come back when more will be.  Settings are read
        afresh each time (L{RelayConnection.configure} calls this at once).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        faults = self.faults
        if faults.blackhole or self._stopped:
            self._queue.clear()
            self.queued = 0
        while self._queue and not self._sink_paused:
            due, data = self._queue[0]
            now = self._clock.seconds()
            delay = due - now
            if faults.rate:
                delay = max(delay, self._free_at - now)
            if delay > 0:
                self._timer = self._clock.callLater(delay, self.pump)
                break
            size = len(data)
            if faults.slice_size:
                size = min(size, faults.slice_size)
            if faults.rate:
                size = min(size, max(1, int(faults.rate * RATE_QUANTUM)))
                self._free_at = max(now, self._free_at) + size / faults.rate
            if size == len(data):
                self._queue.popleft()
            else:
                self._queue[0] = (due, data[size:])
            self.queued -= size
            self.forwarded += size
            self.sink.transport.write(data[:size])
            if faults.slice_size:  # one piece per reactor turn
                self._timer = self._clock.callLater(0, self.pump)
                break
        if self._source_paused and self.queued <= self._high_water // 2 and not self._stopped:
            self._source_paused = False
            self.source.transport.resumeProducing()
        if not self._queue and not self._stopped:
            if self._cut:
                self.connection.cut(faults.cut_reset)
            elif self._eof is not None:
                self.connection.pass_close(self, self._eof)

    # IPushProducer: the sink's send buffer.

    def pauseProducing(self) -> None:
        self._sink_paused = True

    def resumeProducing(self) -> None:
        self._sink_paused = False
        if self._timer is None:
            self.pump()

    def stopProducing(self) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopped = True
        self._queue.clear()
        self.queued = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class RelayConnection:
    """One relayed connection: two legs and a pipe each way."""

    def __init__(self, relay: FaultRelay, up: Faults, down: Faults) -> None:
        self.relay = relay
        self.outer = _Leg(self)
        self.inner = _Leg(self)
        self.up = _Pipe(self, up, relay.high_water)
        self.down = _Pipe(self, down, relay.high_water)
        self.up.source = self.down.sink = self.outer
        self.down.source = self.up.sink = self.inner
        #: Fires once both legs are closed.
        self.closed = defer.Deferred()
        self._connecting: defer.Deferred | None = None

    def __repr__(self) -> str:
        return f"<RelayConnection up={self.up.forwarded} down={self.down.forwarded}>"

    def configure(self, direction: str = "both", **changes) -> None:
        """Change the faults of C{direction} ("up", "down" or "both") now."""
        for pipe in self._pipes(direction):
            for name, value in changes.items():
                setattr(pipe.faults, name, value)
            if pipe.sink is not None and pipe.sink.transport is not None:
                pipe.pump()

    def _pipes(self, direction: str) -> list[_Pipe]:
        return {"up": [self.up], "down": [self.down], "both": [self.up, self.down]}[direction]

    def pipe_from(self, leg: _Leg) -> _Pipe:
        return self.up if leg is self.outer else self.down

    def leg_made(self, leg: _Leg) -> None:
        if leg is self.outer:
            leg.transport.pauseProducing()  # until the target answers
            self._connecting = TCP4ClientEndpoint(self.relay.reactor, *self.relay.target).connect(
                Factory.forProtocol(lambda: self.inner))
            self._connecting.addErrback(lambda _: self._abort(self.outer))
            return
        self._connecting = None
        if self.outer.lost:
            self._abort(self.inner)
            return
        self.inner.transport.registerProducer(self.up, True)
        self.outer.transport.registerProducer(self.down, True)
        self.outer.transport.resumeProducing()

    def leg_lost(self, leg: _Leg, reason=None) -> None:
        other = self.inner if leg is self.outer else self.outer
        self.pipe_from(other).stop()  # nothing more can be written to this leg
        self.pipe_from(leg).source_lost(reason)  # its close goes on, after what it sent
        if self._connecting is not None and leg is self.outer:
            self._connecting.cancel()
        if self.outer.lost and (self.inner.lost or self.inner.transport is None):
            self.relay.connection_ended(self)
            if not self.closed.called:
                self.closed.callback(None)

    def pass_close(self, pipe: _Pipe, reason) -> None:
        """C{pipe}'s source closed and everything before the close was written: close its sink so."""
        sink = pipe.sink
        if sink.transport is None or sink.lost:
            return
        sink.transport.unregisterProducer()
        if reason is not None and reason.check(ConnectionDone):
            sink.transport.loseConnection()
        else:
            sink.transport.abortConnection()

    def cut(self, reset: bool) -> None:
        """Close (or reset) both legs: a C{cut_after} ran out."""
        for leg in (self.outer, self.inner):
            if leg.transport is not None and not leg.lost:
                leg.transport.unregisterProducer()
                if reset:
                    leg.transport.abortConnection()
                else:
                    leg.transport.loseConnection()
        self.up.stop()
        self.down.stop()

    def reset(self) -> None:
        """Abort both legs at once (both ends see a reset)."""
        self.up.stop()
        self.down.stop()
        if self._connecting is not None:
            self._connecting.cancel()
        for leg in (self.outer, self.inner):
            self._abort(leg)

    def _abort(self, leg: _Leg) -> None:
        if leg.transport is not None and not leg.lost:
            leg.transport.abortConnection()


class _Refuse(Protocol):
    def connectionMade(self) -> None:
        self.transport.abortConnection()


class FaultRelay(Factory):
    """
    Listens on 127.0.0.1 and relays each connection to C{target} (host, port).

    @ivar up: the faults a new connection starts with, client to target.
    @ivar down: the same, target to client.
    @ivar refuse: reset new connections as soon as they are accepted.
    @ivar connections: the live connections, oldest first.
    @ivar accepted: how many connections were accepted (refused ones included).
    """

    def __init__(self, reactor, target: tuple[str, int], high_water: int = HIGH_WATER,
                 up: Faults | None = None, down: Faults | None = None,
                 socket_buffer: int | None = None) -> None:
        self.reactor = reactor
        self.socket_buffer = socket_buffer
        self.target = target
        self.high_water = high_water
        self.up = up if up is not None else Faults()
        self.down = down if down is not None else Faults()
        self.refuse = False
        self.connections: list[RelayConnection] = []
        self.accepted = 0
        self._port = None

    async def listen(self) -> FaultRelay:
        self._port = await TCP4ServerEndpoint(self.reactor, 0, interface="127.0.0.1").listen(self)
        if self.socket_buffer:  # accepted sockets inherit it, window scaling included
            self._port.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.socket_buffer)
        return self

    @property
    def port(self) -> int:
        return self._port.getHost().port

    def url(self, path: str = "/connect") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def buildProtocol(self, addr) -> Protocol:
        self.accepted += 1
        if self.refuse:
            return _Refuse()
        connection = RelayConnection(self, attrs.evolve(self.up), attrs.evolve(self.down))
        self.connections.append(connection)
        return connection.outer

    def configure(self, direction: str = "both", *, new: bool = True, existing: bool = True,
                  **changes) -> None:
        """
        Change the faults of C{direction} ("up", "down", "both"): of the
        live connections (C{existing}) and of those to come (C{new}).
        """
        if new:
            for faults in {"up": [self.up], "down": [self.down], "both": [self.up, self.down]}[direction]:
                for name, value in changes.items():
                    setattr(faults, name, value)
        if existing:
            for connection in list(self.connections):
                connection.configure(direction, **changes)

    def reset(self) -> None:
        """Reset every live connection."""
        for connection in list(self.connections):
            connection.reset()

    def connection_ended(self, connection: RelayConnection) -> None:
        if connection in self.connections:
            self.connections.remove(connection)

    async def close(self) -> None:
        """Stop listening and reset every connection; done once all are closed."""
        if self._port is not None:
            port, self._port = self._port, None
            await port.stopListening()
        connections = list(self.connections)
        self.reset()
        await defer.gatherResults([c.closed for c in connections])
