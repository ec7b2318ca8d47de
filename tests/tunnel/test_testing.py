"""
Tests of the public test doubles in L{remotedialer.testing}.
"""

from __future__ import annotations

import treq
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IConsumer,
    IPushProducer,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.wire import Echo
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data
from zope.interface.verify import verifyObject

from remotedialer import ClientNotConnected, IStreamOpener, StreamError
from remotedialer.testing import MemoryTransport, MemoryTunnel, StreamCounts
from remotedialer.tunnel._stream import HARD_CAP, PAUSE_THRESHOLD

MiB = 1024 * 1024


class Recorder(Protocol):
    """Records what it receives and why it was closed; pauses its transport if told to."""

    def __init__(self, greeting: bytes = b"", paused: bool = False) -> None:
        self.greeting = greeting
        self.paused = paused
        self.chunks: list[bytes] = []
        self.reason = None

    def connectionMade(self) -> None:
        if self.paused:
            self.transport.pauseProducing()
        if self.greeting:
            self.transport.write(self.greeting)

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def received(self) -> int:
        return sum(map(len, self.chunks))


class Blast(Protocol):
    """
    A target writing C{total} bytes as a push producer that honours pause
    (chunk C{i} starts with byte C{i % 256}), then closing.
    """

    CHUNK = 64 * 1024

    def __init__(self, total: int) -> None:
        self.total = total
        self.sent = 0
        self.pauses = 0
        self._paused = False
        self._done = False
        self.reason = None

    @classmethod
    def expected(cls, total: int) -> bytes:
        body = bytes(range(256)) * (cls.CHUNK // 256)
        return b"".join(
            bytes([i % 256]) + body[1:min(cls.CHUNK, total - offset)]
            for i, offset in enumerate(range(0, total, cls.CHUNK))
        )

    def connectionMade(self) -> None:
        self._body = bytes(range(256)) * (self.CHUNK // 256)
        self.transport.registerProducer(self, True)
        self._produce()

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        self._produce()

    def stopProducing(self) -> None:
        self._paused = True

    def _produce(self) -> None:
        while not self._paused and self.sent < self.total:
            n = min(self.CHUNK, self.total - self.sent)
            i = self.sent // self.CHUNK
            self.transport.write(bytes([i % 256]) + self._body[1:n])
            self.sent += n
        if self.sent >= self.total and not self._done:
            self._done = True
            self.transport.unregisterProducer()
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.reason = reason


class Producer:
    """A push producer recording whether it is paused."""

    def __init__(self) -> None:
        self.paused = False
        self.pauses = 0

    def pauseProducing(self) -> None:
        self.paused = True
        self.pauses += 1

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        pass


def _echo_target(tunnel: MemoryTunnel, address: str = "127.0.0.1:7"):
    return tunnel.add_target("tcp", address, Factory.forProtocol(Echo))


def _dial(tunnel: MemoryTunnel, protocol: Protocol, address: str = "127.0.0.1:7"):
    d = tunnel.endpoint("tcp", address).connect(Factory.forProtocol(lambda: protocol))
    return d


class MemoryTunnelTests(SynchronousTestCase):
    def test_interfaces(self):
        """The tunnel is a stream opener; its endpoints are endpoints."""
        tunnel = MemoryTunnel()
        self.assertTrue(verifyObject(IStreamOpener, tunnel))
        self.assertTrue(verifyObject(IStreamClientEndpoint, tunnel.endpoint("tcp", "a:1")))

    def test_echo_through_endpoint(self):
        """Bytes go to an Echo target and come back; a clean close ends both sides cleanly."""
        tunnel = MemoryTunnel()
        target = _echo_target(tunnel)
        client = Recorder(greeting=b"hello")
        self.assertIs(self.successResultOf(_dial(tunnel, client)), client)
        tunnel.flush()
        self.assertEqual(client.data, b"hello")
        self.assertEqual(tunnel.streams, (1, 1))
        [echo] = target.protocols
        self.assertEqual(echo.transport.getHost().port, 7)
        self.assertEqual(str(client.transport.getPeer().host), "127.0.0.1")

        client.transport.write(b" again")
        tunnel.flush()
        self.assertEqual(client.data, b"hello again")

        client.transport.loseConnection()
        tunnel.flush()
        self.assertIsInstance(client.reason.value, ConnectionDone)
        self.assertTrue(echo.transport.disconnected)
        self.assertEqual(tunnel.streams, StreamCounts(server=0, client=0))
        types = [(m.sender, m.type) for m in tunnel.messages]
        self.assertEqual(types[0], ("server", "CONNECT"))
        self.assertIn(("client", "DATA"), types)

    def test_nothing_moves_until_flush(self):
        """With the default Clock nothing is delivered until flush()."""
        tunnel = MemoryTunnel()
        _echo_target(tunnel)
        client = Recorder(greeting=b"hello")
        _dial(tunnel, client)
        self.assertEqual(client.data, b"")
        self.assertEqual(tunnel.streams, (1, 0))  # the Connect has not arrived
        tunnel.flush()
        self.assertEqual(client.data, b"hello")

    def test_http_get_with_treq(self):
        """treq over agent() GETs a static resource from a twisted.web Site target."""
        tunnel = MemoryTunnel()
        root = Resource()
        root.putChild(b"hello", Data(b"hello, world", "text/plain"))
        target = tunnel.add_target("tcp", "web.internal:8080", Site(root, reactor=tunnel.clock))
        http = HTTPClient(tunnel.agent())

        d = http.get("http://web.internal:8080/hello")
        tunnel.flush()
        response = self.successResultOf(d)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"text/plain"])
        body = treq.content(response)
        tunnel.flush()
        self.assertEqual(self.successResultOf(body), b"hello, world")
        self.assertEqual(len(target.protocols), 1)
        self.assertEqual(tunnel.streams, (0, 0))

        d = http.get("http://web.internal:8080/missing")
        tunnel.flush()
        self.assertEqual(self.successResultOf(d).code, 404)

    def test_http_post_with_http_client(self):
        """http_client() sends request bodies under flush()."""
        tunnel = MemoryTunnel()

        class Reverse(Resource):
            isLeaf = True

            def render_POST(self, request):
                return request.content.read()[::-1]

        tunnel.add_target("tcp", "10.0.0.5:80", Site(Reverse(), reactor=tunnel.clock))
        d = tunnel.http_client().post("http://10.0.0.5/", data=b"abcdef")
        d.addCallback(treq.content)
        tunnel.flush()
        self.assertEqual(self.successResultOf(d), b"fedcba")

    def test_unknown_target_refused(self):
        """A target not added is refused as the real client refuses it."""
        tunnel = MemoryTunnel()
        _echo_target(tunnel)
        client = Recorder(greeting=b"anyone?")
        _dial(tunnel, client, address="nowhere:1")
        tunnel.flush()
        self.assertIsInstance(client.reason.value, StreamError)
        self.assertEqual(str(client.reason.value), "connect to tcp/nowhere:1 not allowed")
        self.assertEqual(client.data, b"")
        self.assertIn(("client", "ERROR"), [(m.sender, m.type) for m in tunnel.messages])
        self.assertEqual(tunnel.streams, (0, 0))

    def test_target_factory_refuses(self):
        """A target whose factory builds no protocol closes the connection at once."""
        tunnel = MemoryTunnel()

        class NoProtocol(Factory):
            def buildProtocol(self, addr):
                return None

        target = tunnel.add_target("tcp", "10.0.0.5:22", NoProtocol())
        client = Recorder()
        _dial(tunnel, client, address="10.0.0.5:22")
        tunnel.flush()
        self.assertIsInstance(client.reason.value, ConnectionDone)
        self.assertEqual(target.protocols, [])

    def test_other_client_key(self):
        """Opening a stream to another client fails as the server does."""
        tunnel = MemoryTunnel(client_key="foo")
        self.assertRaises(ClientNotConnected, tunnel.open_stream, "bar", "tcp", "a:1")

    def test_disconnect_ends_streams_with_an_error(self):
        """disconnect(): every stream ends with an error, targets' connections too."""
        tunnel = MemoryTunnel()
        target = _echo_target(tunnel)
        clients = [Recorder(greeting=b"one"), Recorder(greeting=b"two")]
        for client in clients:
            _dial(tunnel, client)
        tunnel.flush()
        self.assertEqual(tunnel.streams, (2, 2))
        clients[0].transport.write(b"lost in flight")

        tunnel.disconnect()
        tunnel.flush()
        for client in clients:
            self.assertIsInstance(client.reason.value, ConnectionLost)
            self.assertNotIsInstance(client.reason.value, ConnectionDone)
        self.assertEqual(clients[0].data, b"one")
        for echo in target.protocols:
            self.assertTrue(echo.transport.disconnected)
        self.assertEqual(tunnel.streams, (0, 0))
        self.failureResultOf(_dial(tunnel, Recorder()), ClientNotConnected)

    def test_disconnect_with_reason(self):
        """disconnect(reason): the streams end with that reason."""
        tunnel = MemoryTunnel()
        _echo_target(tunnel)
        client = Recorder()
        _dial(tunnel, client)
        tunnel.flush()
        tunnel.disconnect(ConnectionLost("cable cut"))
        tunnel.flush()
        self.assertIn("cable cut", str(client.reason.value))

    def test_back_pressure(self):
        """
        A target sending 8 MiB to a paused reader: the reader's side sends
        Pause over the in-memory wire, the target is paused in turn, the
        buffer stays under the cap; resuming delivers it all, in order.
        """
        total = 8 * MiB
        tunnel = MemoryTunnel()
        target = tunnel.add_target("tcp", "10.0.0.9:9000", Factory.forProtocol(lambda: Blast(total)))
        reader = Recorder(paused=True)
        _dial(tunnel, reader, address="10.0.0.9:9000")
        tunnel.flush()

        [blast] = target.protocols
        stream = reader.transport
        self.assertIn(("server", "PAUSE"), [(m.sender, m.type) for m in tunnel.messages])
        self.assertGreater(blast.pauses, 0)
        self.assertLess(blast.sent, total)
        self.assertEqual(reader.received, 0)
        self.assertGreater(stream.buffered_inbound, PAUSE_THRESHOLD)
        self.assertLess(stream.buffered_inbound, HARD_CAP)
        self.assertLess(stream.buffered_inbound, PAUSE_THRESHOLD + 1 * MiB)

        stream.resumeProducing()
        tunnel.flush()
        self.assertIn(("server", "RESUME"), [(m.sender, m.type) for m in tunnel.messages])
        self.assertEqual(blast.sent, total)
        self.assertEqual(reader.received, total)
        self.assertEqual(reader.data, Blast.expected(total))
        self.assertIsInstance(reader.reason.value, ConnectionDone)
        self.assertEqual(tunnel.streams, (0, 0))

    def test_flush_needs_a_clock(self):
        """flush() refuses a clock it cannot advance (the real reactor)."""
        tunnel = MemoryTunnel(reactor)
        self.assertRaises(TypeError, tunnel.flush)


class MemoryTransportTests(SynchronousTestCase):
    """The in-memory connection between the client and its targets."""

    def _connected(self):
        tunnel = MemoryTunnel()
        target = tunnel.add_target("tcp", "10.0.0.1:1", Factory.forProtocol(Recorder))
        client = Recorder()
        _dial(tunnel, client, address="10.0.0.1:1")
        tunnel.flush()
        return tunnel, target.protocols[0]

    def test_interfaces(self):
        _, server = self._connected()
        transport = server.transport
        self.assertIsInstance(transport, MemoryTransport)
        for interface in (ITransport, IConsumer, IPushProducer):
            self.assertTrue(verifyObject(interface, transport))

    def test_full_buffer_pauses_producer(self):
        """A write past the buffer size pauses the producer; delivery resumes it."""
        tunnel, server = self._connected()
        transport = server.transport
        relay_side = transport.other
        producer = Producer()
        transport.registerProducer(producer, True)
        relay_side.pauseProducing()
        transport.write(b"x" * (100 * 1024))
        self.assertEqual(producer.pauses, 1)
        tunnel.flush()
        self.assertEqual(transport.buffered, 100 * 1024)
        self.assertTrue(producer.paused)
        relay_side.resumeProducing()
        tunnel.flush()
        self.assertEqual(transport.buffered, 0)
        self.assertFalse(producer.paused)

    def test_lose_connection_waits_for_buffer(self):
        """loseConnection closes once the buffer is delivered, connectionLost from the clock."""
        tunnel, server = self._connected()
        transport = server.transport
        transport.other.pauseProducing()
        transport.write(b"data")
        transport.loseConnection()
        tunnel.flush()
        self.assertFalse(transport.disconnected)
        transport.other.resumeProducing()
        tunnel.flush()
        self.assertTrue(transport.disconnected)
        self.assertIsInstance(server.reason.value, ConnectionDone)

    def test_abort(self):
        """abortConnection drops the buffer; the far end sees ConnectionLost."""
        tunnel, server = self._connected()
        transport = server.transport
        transport.other.pauseProducing()
        transport.write(b"data")
        transport.abortConnection()
        self.assertIsNone(server.reason)  # not from inside the call
        tunnel.flush()
        self.assertTrue(transport.other.disconnected)
        self.assertIsNotNone(server.reason)
