"""
The relay idiom of twisted.protocols.portforward, with back-pressure and
error propagation: a byte pipe between two transports (a tunnel stream and
a TCP connection, or two tunnel streams when a peer server forwards).

Each half registers the other's transport as its producer, so a slow reader
at either end pauses the writer at the other, through every hop.

A TCP half turns Nagle off (as Go's net package does for every TCP
connection): relayed bytes are written as they come, so a small request or
reply must not wait for the far end's delayed ACK.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IPushProducer, IStreamClientEndpoint, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from remotedialer.tunnel._interfaces import IFlowTransport
from remotedialer.tunnel._logtext import failure_text


def close_like(transport: IFlowTransport, reason: Failure) -> None:
    """
    Close C{transport} the way its partner closed: cleanly after a clean
    close, at once (with the reason, where the transport can carry one)
    after an error.
    """
    if reason.check(ConnectionDone):
        transport.loseConnection()
    elif hasattr(transport, "close_with_error"):  # a TunnelStream
        transport.close_with_error(failure_text(reason))
    else:
        transport.abortConnection()


@implementer(IPushProducer)
class _PausesOnly:
    """
    One transport as the other's producer, for pause and resume only.  A
    TCP transport calls its producer's stopProducing before its protocol
    hears why the connection ended; closing is left to the relay, which
    closes the partner cleanly or with the error, as the case is.
    """

    def __init__(self, transport: IFlowTransport) -> None:
        self.transport = transport

    def pauseProducing(self) -> None:
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        pass


class Relay(Protocol):
    """
    One half of a relay.  The first half is attached to a transport and
    holds its data (paused) until L{connect_peer} has connected the second.
    """

    transport: IFlowTransport  # once connected: a TCP connection's, or a TunnelStream

    def __init__(self, peer: Relay | None = None) -> None:
        self.peer = peer
        self._connecting: Deferred[IProtocol] | None = None
        self._lost = False

    def no_delay(self) -> None:
        """On TCP, send what we relay at once (Nagle off, as Go does for every TCP connection)."""
        if ITCPTransport.providedBy(self.transport):
            self.transport.setTcpNoDelay(True)

    def connectionMade(self) -> None:
        self.no_delay()
        if self.peer is None:
            self.transport.pauseProducing()
            return
        self.peer._connecting = None  # connected: nothing left to cancel
        if self.peer._lost:
            self.transport.loseConnection()
            return
        self.peer.peer = self
        self.transport.registerProducer(_PausesOnly(self.peer.transport), True)
        self.peer.transport.registerProducer(_PausesOnly(self.transport), True)
        self.peer.transport.resumeProducing()

    def connect_peer(self, endpoint: IStreamClientEndpoint) -> Deferred[IProtocol]:
        """Connect the second half through C{endpoint}."""
        factory = Factory.forProtocol(lambda: Relay(self))
        factory.noisy = False  # no "Starting factory <...>" line for every dial
        d = self._connecting = endpoint.connect(factory)

        def connected(result: IProtocol | Failure) -> IProtocol | Failure:
            self._connecting = None
            return result

        return d.addBoth(connected)

    def dataReceived(self, data: bytes) -> None:
        if self.peer is not None:  # None once the other side is gone
            self.peer.partner_data(data)

    def partner_data(self, data: bytes) -> None:
        """The other half received C{data}: send it on (a proxy may answer its caller first)."""
        self.transport.write(data)

    def partner_lost(self, reason: Failure) -> None:
        """The other half's connection ended: close ours like it (a proxy may answer instead)."""
        close_like(self.transport, reason)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        if self._connecting is not None:
            self._connecting.cancel()
        peer, self.peer = self.peer, None
        if peer is not None and peer.peer is self:
            peer.peer = None
            # A TCP transport will not close while a producer (our dead
            # transport) is still registered on it.
            peer.transport.unregisterProducer()
            peer.partner_lost(reason)


def join(one: IFlowTransport, other: IFlowTransport) -> tuple[Relay, Relay]:
    """
    Relay bytes between two transports already connected to protocols of
    their own (a downstream HTTP connection and an upstream tunnel stream
    after a protocol switch): the two halves returned are for C{one}'s and
    C{other}'s protocols, which hand each half their C{dataReceived} and
    C{connectionLost} from then on.  Back-pressure and closes go both ways,
    as between the halves of a dialed relay.  Neither transport may have a
    producer registered.
    """
    first, second = Relay(), Relay()
    first.transport, second.transport = one, other
    first.peer, second.peer = second, first
    first.no_delay()
    second.no_delay()
    one.registerProducer(_PausesOnly(other), True)
    other.registerProducer(_PausesOnly(one), True)
    return first, second
