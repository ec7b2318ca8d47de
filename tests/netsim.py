"""
An in-memory TCP network for tests of whole deployments: tunnel servers
behind twisted.web sites, tunnel clients, peer links, and the targets behind
them, all on one L{MemoryReactorClock}, with no socket and no global reactor.

    net = Network(self)                        # in a SynchronousTestCase
    a = net.serve_tunnel("10.0.0.1:8123")      # a Server, Site root /connect
    client = net.client(a.url, "foo")          # a TunnelClient, started
    echo = net.listen(Factory.forProtocol(Echo))   # a target, 127.0.0.1:<port>
    net.flush()                                # deliver everything; no time passes
    net.run(5.0)                               # 5 s of virtual time, delivering as it goes

Connections.  Everything is given C{net.reactor}.  Its HostnameEndpoints
resolve through C{net.hosts} (IP literals stand for themselves) and call
C{connectTCP}, which MemoryReactor only records; L{Network.flush} completes
each recorded attempt (as iosim's ConnectionCompleter does, but matching
host I{and} port): joined to the L{Listener} at that address, or refused
(C{ConnectionRefusedError}, counted in C{net.refused}) when there is none.
The address space is flat: a client's target at 127.0.0.1:7000 and a
server's at 127.0.0.1:7000 are the same listener.  A refusal reaches a
HostnameEndpoint's caller 0.3 s later, when its next attempt would be due
(as on a real reactor).  Not simulated: latency, loss, half-close.

Bytes.  Each connection is two L{SimTransport}s, iosim FakeTransports that
behave as Twisted's TCP transports where tunnel code can tell the
difference (iosim's deliver everything at once and never pause anyone):

  - a read delivers at most C{READ_SIZE} bytes; C{pauseProducing} stops
    reading (the bytes wait in the sender's buffer, as in the kernel's);
  - a streaming producer is paused whenever more than C{WRITE_BUFFER}
    bytes wait unsent (repeatedly, as Twisted does) and resumed once all
    are gone; a pull producer is resumed each time the buffer empties;
  - C{registerProducer} refuses a second producer;
  - C{loseConnection} stops reading, sends what was written, then closes:
    ConnectionDone here, and at the peer once it has read everything; a
    producer paused by the buffer is resumed first and the close waits
    for it, as Twisted's does;
  - C{abortConnection} drops unsent bytes: ConnectionAborted here, a
    reset (ConnectionLost) at the peer;
  - C{connectionLost} always comes from the network's turn, never from
    inside a call, after the registered producer's C{stopProducing};
  - an exception in C{dataReceived} is logged and closes that connection
    with it (the reactor's rule), which fails a trial test.

Time.  L{Network.flush} repeats: complete connection attempts, run the
calls due now, move one read's worth on every connection; until nothing
moves.  L{Network.run} advances the clock to each scheduled call in turn
(flushing after each), so waiting 60 s costs only the timers in it.
Autobahn's timers use C{txaio.config.loop}: a Network attached to a test
points it at its clock and restores it after, and fails the test if
anything was scheduled on the global reactor meanwhile.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable

import txaio
from twisted.internet import defer
from twisted.internet import reactor as global_reactor
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import (
    CannotListenError,
    ConnectionAborted,
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
)
from twisted.internet.interfaces import (
    IConsumer,
    IHostnameResolver,
    IHostResolution,
    IListeningPort,
    IPushProducer,
    ITCPTransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer, implementer_only

from remotedialer import Server, TunnelClient, allow_all

#: Bytes one read hands to a protocol (Twisted's bufferSize).
READ_SIZE = 64 * 1024
#: Unsent bytes past which a transport pauses its streaming producer
#: (Twisted's FileDescriptor.bufferSize).
WRITE_BUFFER = 64 * 1024
#: A flush that has not settled after this many turns is a livelock.
MAX_TURNS = 1_000_000

_log = Logger()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _ip_address(host: str, port: int):
    if isIPv6Address(host):
        return IPv6Address("TCP", host, port)
    return IPv4Address("TCP", host, port)


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str) -> None:
        self.name = name

    def cancel(self) -> None:
        pass


@implementer(IHostnameResolver)
class _Resolver:
    """Names from C{hosts}; IP literals as themselves; anything else does not resolve."""

    def __init__(self, hosts: dict[str, str]) -> None:
        self._hosts = hosts

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        resolution = _Resolution(hostName)
        resolutionReceiver.resolutionBegan(resolution)
        ip = self._hosts.get(hostName, hostName)
        if isIPAddress(ip) or isIPv6Address(ip):
            resolutionReceiver.addressResolved(_ip_address(ip, portNumber))
        resolutionReceiver.resolutionComplete()
        return resolution


@implementer_only(ITCPTransport, IPushProducer, IConsumer)
class SimTransport(iosim.FakeTransport):
    """One end of a simulated TCP connection (see the module docstring)."""

    def __init__(self, protocol, isServer: bool, hostAddress, peerAddress) -> None:
        super().__init__(protocol, isServer, hostAddress, peerAddress)
        self.other: SimTransport | None = None
        #: Written, not yet read by the other end.
        self.buffer = bytearray()
        self.reading = True
        self.producerPaused = False
        #: The peer has closed: "fin" (cleanly) or "rst" (reset, error).
        self.peer_closed: str | None = None
        #: Why connectionLost was called, once it has been.
        self.lost_reason: Failure | None = None
        self._writing = False  # a write-side turn is due (Twisted's startWriting)
        self._aborted = False
        self._broken = False  # wrote into a closed connection
        self._failure: Failure | None = None  # the protocol raised

    # ITransport

    def write(self, data: bytes) -> None:
        # As Twisted's: still accepted after loseConnection, until closed.
        if self.disconnected or self._aborted or not data:
            return
        self.buffer += data
        self._writing = True
        if self.producer is not None and self.streamingProducer and len(self.buffer) > WRITE_BUFFER:
            self.producerPaused = True
            self.producer.pauseProducing()

    def loseConnection(self) -> None:
        if self.disconnecting or self.disconnected:
            return
        self.disconnecting = True
        self.reading = False
        self._writing = True

    def abortConnection(self) -> None:
        if self.disconnected or self._aborted:
            return
        self._aborted = True
        self.disconnecting = True
        self.reading = False
        self.buffer.clear()

    def loseWriteConnection(self) -> None:
        raise NotImplementedError("half-close is not simulated")

    # IConsumer

    def registerProducer(self, producer, streaming: bool) -> None:
        if self.producer is not None:
            raise RuntimeError(
                f"Cannot register producer {producer!r}, because producer "
                f"{self.producer!r} was never unregistered.")
        if self.disconnected:
            producer.stopProducing()
            return
        self.producer = producer
        self.streamingProducer = streaming
        self.producerPaused = False
        if not streaming:
            producer.resumeProducing()

    def unregisterProducer(self) -> None:
        self.producer = None
        self.producerPaused = False
        if self.disconnecting:
            self._writing = True

    # IPushProducer: this end reading

    def pauseProducing(self) -> None:
        self.reading = False

    def resumeProducing(self) -> None:
        if not (self.disconnecting or self.disconnected):
            self.reading = True

    def stopProducing(self) -> None:
        self.loseConnection()

    # The network's side.

    def _deliver(self, data: bytes) -> None:
        try:
            self.protocol.dataReceived(data)
        except Exception:
            self._failure = Failure()
            _log.failure("{protocol} raised in dataReceived", self._failure, protocol=self.protocol)

    def _settle(self) -> tuple[bool, Failure | None]:
        """
        The write side's turn and the close rules: (whether anything
        changed, the reason to lose the connection for, if it is time).
        """
        if self.disconnected:
            return False, None
        if self._failure is not None:
            return True, self._failure
        if self._aborted:
            return True, Failure(ConnectionAborted())
        if self._broken or (self.peer_closed == "rst" and self.reading):
            return True, Failure(ConnectionLost("Connection reset by peer."))
        if self.peer_closed == "fin" and self.reading:
            return True, Failure(ConnectionDone("Connection was closed cleanly."))
        if self._writing and not self.buffer:
            self._writing = False
            if self.producer is not None and (not self.streamingProducer or self.producerPaused):
                self.producerPaused = False
                self.producer.resumeProducing()
                return True, None
            if self.disconnecting:
                return True, Failure(ConnectionDone("Connection was closed cleanly."))
            return True, None
        return False, None

    def _lose(self, reason: Failure) -> None:
        self.disconnected = True
        self.disconnecting = True
        self.reading = False
        self.buffer.clear()
        self.lost_reason = reason
        other = self.other
        if other is not None and not other.disconnected and other.peer_closed is None:
            other.peer_closed = "fin" if reason.check(ConnectionDone) else "rst"
        producer, self.producer = self.producer, None
        try:
            if producer is not None:
                producer.stopProducing()
        except Exception:
            _log.failure("{producer} raised in stopProducing", producer=producer)
        try:
            self.protocol.connectionLost(reason)
        except Exception:
            _log.failure("{protocol} raised in connectionLost", protocol=self.protocol)


class SimConnection:
    """A connection between two L{SimTransport}s; L{pump} is one turn of it."""

    def __init__(self, client_protocol, server_protocol, client_address, server_address,
                 connector=None, client_factory=None) -> None:
        self.client = SimTransport(client_protocol, False, client_address, server_address)
        self.server = SimTransport(server_protocol, True, server_address, client_address)
        self.client.other, self.server.other = self.server, self.client
        self._connector = connector
        self._client_factory = client_factory

    def __repr__(self) -> str:
        return f"<SimConnection {self.client.getHost()} -> {self.server.getHost()}>"

    @property
    def closed(self) -> bool:
        return self.client.disconnected and self.server.disconnected

    def start(self) -> None:
        self.server.protocol.makeConnection(self.server)
        self.client.protocol.makeConnection(self.client)

    def cut(self) -> None:
        """The network between the ends fails: both see ConnectionLost."""
        for end in (self.client, self.server):
            if not end.disconnected:
                end._broken = True

    def pump(self) -> bool:
        moved = False
        for src, dst in ((self.client, self.server), (self.server, self.client)):
            if src.buffer and not src.disconnected:
                if dst.disconnected:  # into a closed socket: reset
                    src.buffer.clear()
                    src._broken = True
                    moved = True
                elif dst.reading:
                    chunk = bytes(src.buffer[:READ_SIZE])
                    del src.buffer[:READ_SIZE]
                    dst._deliver(chunk)
                    moved = True
        for end in (self.client, self.server):
            changed, reason = end._settle()
            moved = moved or changed
            if reason is not None:
                end._lose(reason)
                if end is self.client and self._client_factory is not None:
                    self._client_factory.clientConnectionLost(self._connector, reason)
                    self._client_factory.doStop()
        return moved


@implementer(IListeningPort)
class Listener:
    """A factory listening at C{host:port} of a L{Network}; C{accepted} counts its connections."""

    def __init__(self, net: Network, factory, host: str, port: int) -> None:
        self._net = net
        self.factory = factory
        self.host = host
        self.port = port
        self.accepted = 0
        self.listening = False

    def __repr__(self) -> str:
        return f"<Listener {self.address} {self.factory!r}>"

    @property
    def address(self) -> str:
        """C{host:port}, as a Connect names it."""
        return f"{self.host}:{self.port}"

    def getHost(self):
        return _ip_address(self.host, self.port)

    def startListening(self) -> None:
        self._net._bind(self)
        self.listening = True
        self.factory.doStart()

    def stopListening(self) -> defer.Deferred:
        """Stop accepting (connections already made live on, as with TCP)."""
        if self.listening:
            self.listening = False
            self._net._listeners.pop((self.host, self.port), None)
            self.factory.doStop()
        return defer.succeed(None)


class TunnelSite:
    """
    A L{Server} behind a twisted.web L{Site} whose root has C{connect} ->
    C{server.resource}, listening at C{host:port} (wrapped in TLS when
    C{tls} server options are given: then the URL is wss://).
    """

    def __init__(self, net: Network, server: Server, host: str, port: int, tls=None) -> None:
        self.net = net
        self.server = server
        self.host = host
        root = Resource()
        root.putChild(b"connect", server.resource)
        self.site = Site(root, reactor=net.reactor)
        self._factory = (self.site if tls is None
                         else TLSMemoryBIOFactory(tls, False, self.site, clock=net.reactor))
        self._scheme = "ws" if tls is None else "wss"
        self.port = port
        self.listener: Listener | None = None
        self.start_listening()

    def __repr__(self) -> str:
        return f"<TunnelSite {self.url}>"

    @property
    def url(self) -> str:
        return f"{self._scheme}://{self.host}:{self.port}/connect"

    @property
    def address(self) -> str:
        """C{ip:port} it listens at (as C{net.refused} counts)."""
        return f"{self.net.hosts.get(self.host, self.host)}:{self.port}"

    def start_listening(self) -> None:
        """Listen (again) at the same address."""
        self.listener = self.net.listen(self._factory, f"{self.host}:{self.port}")
        self.port = self.listener.port

    def stop_listening(self) -> None:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            listener.stopListening()

    def kill(self) -> None:
        """The server dies: its port, its peer links and every WebSocket it holds go at once."""
        self.stop_listening()
        if self.server.running:
            self.server.stopService()
        sessions = self.server.sessions
        for session in sessions.local_sessions() + sessions.peer_sessions():
            session._drop()


class Network:
    """
    The simulated network (see the module docstring).  Given a test case,
    it is torn down with it: services started through it are stopped (and
    must have stopped by the end of a flush), connections cut, txaio's
    loop restored, and the global reactor checked for calls scheduled on it.
    """

    def __init__(self, testcase=None) -> None:
        self.reactor = MemoryReactorClock()
        #: Host names the resolver knows (IP literals need no entry).
        self.hosts: dict[str, str] = {"localhost": "127.0.0.1"}
        self.reactor.installNameResolver(_Resolver(self.hosts))
        self.connections: list[SimConnection] = []
        #: Refused connection attempts by C{host:port}.
        self.refused: Counter[str] = Counter()
        self._listeners: dict[tuple[str, int], Listener] = {}
        self._free_ports = itertools.count(20000)
        self._client_ports = itertools.count(40000)
        self._services: list = []
        if testcase is not None:
            self._attach(testcase)

    @property
    def clock(self) -> MemoryReactorClock:
        return self.reactor

    def _attach(self, testcase) -> None:
        before = set(global_reactor.getDelayedCalls())
        testcase.addCleanup(self._check_global_reactor, before)
        previous = txaio.config.loop
        txaio.config.loop = self.reactor
        testcase.addCleanup(setattr, txaio.config, "loop", previous)
        testcase.addCleanup(self.close)

    # Building the network.

    def listen(self, factory, address: str = "127.0.0.1:0") -> Listener:
        """Listen with C{factory} at C{host:port} (port 0: a free one)."""
        host, port = _split(address)
        host = self.hosts.get(host, host)
        if port == 0:
            port = next(p for p in self._free_ports if (host, p) not in self._listeners)
        listener = Listener(self, factory, host, port)
        listener.startListening()
        return listener

    def _bind(self, listener: Listener) -> None:
        key = (listener.host, listener.port)
        if key in self._listeners:
            raise CannotListenError(listener.host, listener.port, "address already in use")
        self._listeners[key] = listener

    def serve_tunnel(self, address: str = "127.0.0.1:0", *, tls=None, **server_kwargs) -> TunnelSite:
        """A L{Server} (given C{server_kwargs}) behind a Site listening at C{address}."""
        host, port = _split(address)
        server_kwargs.setdefault("peer_proxy", "")  # (a simulated network: no proxy from the environment)
        server = Server(reactor=self.reactor, **server_kwargs)
        return TunnelSite(self, server, host, port, tls)

    def start(self, service):
        """Start C{service}; it is stopped when the network is torn down."""
        service.startService()
        self._services.append(service)
        return service

    def client(self, url, key: str | None = "foo", *, headers=None,
               connect_authorizer=allow_all, **kwargs) -> TunnelClient:
        """
        A started L{TunnelClient} for C{url} (or a list of URLs) sending
        C{X-Tunnel-ID: key} (none if C{key} is None) and C{headers}.
        """
        headers = {**({"X-Tunnel-ID": key} if key else {}), **(headers or {})}
        kwargs.setdefault("proxy", "")  # (the network is simulated: no proxy from the environment)
        client = TunnelClient(url, headers=headers, reactor=self.reactor, client_key=key or "",
                              connect_authorizer=connect_authorizer, **kwargs)
        return self.start(client)

    # Running it.

    def flush(self, until: Callable[[], object] | None = None) -> None:
        """
        Deliver everything pending without advancing the clock: connection
        attempts, calls due now, bytes and closes, until nothing moves (or
        until C{until()} is true; AssertionError if everything stops first).
        """
        for _ in range(MAX_TURNS):
            if until is not None and until():
                return
            moved = self._complete_connections()
            calls = self.reactor.calls
            if calls and calls[0].getTime() <= self.reactor.seconds():
                self.reactor.advance(0)
                moved = True
            for connection in list(self.connections):
                moved = connection.pump() or moved
            self.connections = [c for c in self.connections if not c.closed]
            if not moved:
                if until is not None and not until():
                    raise AssertionError(f"the network went idle before {until}")
                return
        raise AssertionError(f"the network did not settle in {MAX_TURNS} turns")

    def run(self, seconds: float) -> None:
        """
        Advance the clock C{seconds}: to each scheduled call in turn,
        flushing after each (waiting costs only the timers in the wait).
        """
        end = self.reactor.seconds() + seconds
        self.flush()
        while True:
            calls = self.reactor.calls
            if not calls or calls[0].getTime() > end:
                break
            self.reactor.advance(max(0.0, calls[0].getTime() - self.reactor.seconds()))
            self.flush()
        self.reactor.advance(max(0.0, end - self.reactor.seconds()))
        self.flush()

    def connect(self, endpoint, protocol):
        """Connect C{protocol} through C{endpoint}; flush; return it (raise if the connect failed)."""
        d = endpoint.connect(Factory.forProtocol(lambda: protocol))
        return self.result(d)

    def result(self, d: defer.Deferred):
        """Flush, then the result of C{d} (raised if a failure; AssertionError if it has none yet)."""
        self.flush()
        results: list = []
        d.addBoth(results.append)
        if not results:
            raise AssertionError(f"{d!r} has no result after a flush")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    def _complete_connections(self) -> bool:
        r = self.reactor
        if not r.tcpClients:
            return False
        attempts = list(zip(r.tcpClients, r.connectors, strict=True))
        del r.tcpClients[:], r.connectors[:]
        for (host, port, factory, _timeout, _bind), connector in attempts:
            if connector.stoppedConnecting:
                continue
            factory.doStart()
            listener = self._listeners.get((host, port)) or self._listeners.get(("0.0.0.0", port))
            if listener is None:
                self.refused[f"{host}:{port}"] += 1
                factory.clientConnectionFailed(
                    connector, Failure(ConnectionRefusedError(f"{host}:{port}")))
                factory.doStop()
                continue
            client_address = IPv4Address("TCP", "127.0.0.1", next(self._client_ports))
            server_address = _ip_address(host, port)
            client_protocol = factory.buildProtocol(server_address) or _Refuser()
            server_protocol = listener.factory.buildProtocol(client_address) or _Refuser()
            listener.accepted += 1
            connection = SimConnection(client_protocol, server_protocol, client_address,
                                       server_address, connector, factory)
            self.connections.append(connection)
            connection.start()
        return True

    # Tearing it down.

    def close(self) -> None:
        """Stop the services started here, cut every connection, flush."""
        stopping = [(s, s.stopService()) for s in reversed(self._services) if s.running]
        self._services = []
        self.flush()
        for connection in self.connections:
            connection.cut()
        self.flush()
        for listener in list(self._listeners.values()):
            listener.stopListening()
        unstopped = [s for s, d in stopping if not d.called]
        for _, d in stopping:
            d.addErrback(lambda f: _log.failure("stopping a service failed", f))
        if unstopped:
            raise AssertionError(f"services not stopped after a flush: {unstopped}")

    def _check_global_reactor(self, before) -> None:
        leaked = [c for c in global_reactor.getDelayedCalls() if c not in before]
        if leaked:
            message = f"calls scheduled on the global reactor: {leaked}"
            for call in leaked:
                call.cancel()
            raise AssertionError(message)


class _Refuser(Protocol):
    """Stands in when a factory builds no protocol: the connection is closed at once."""

    def connectionMade(self) -> None:
        self.transport.loseConnection()
