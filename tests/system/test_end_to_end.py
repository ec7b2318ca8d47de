"""
End to end on loopback with the real reactor: server, client, targets.
"""

from __future__ import annotations

import hashlib

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import TestCase

from remotedialer.tunnel._stream import HARD_CAP, PAUSE_THRESHOLD
from tests.support import (
    Collector,
    Echo,
    Payload,
    SendPayload,
    TunnelHarness,
    eventually,
    listen_tcp,
    sha256_of,
)

MiB = 1024 * 1024


class _Factory(Factory):
    def __init__(self, make):
        self.make = make
        self.instances = []

    def buildProtocol(self, addr):
        p = self.make()
        p.factory = self
        self.instances.append(p)
        return p


def _connect(endpoint, protocol):
    return endpoint.connect(Factory.forProtocol(lambda: protocol))


class Settled:
    """A predicate: true once C{stream}'s backlog is the same at two polls in a row."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self._previous: int | None = None

    def __call__(self) -> bool:
        size = self._stream.buffered_inbound
        previous, self._previous = self._previous, size
        return previous == size


class EndToEndTests(TestCase):
    timeout = 120

    async def _setup(self, **server_kwargs):
        harness = TunnelHarness(self, **server_kwargs)
        await harness.start()
        return harness

    @defer.inlineCallbacks
    def test_echo_through_tunnel(self):
        """
        Bytes written to a tunnel stream reach the target and come back; the
        dial logs nothing per connection (no "Starting factory <repr>" lines).
        """
        harness = yield defer.Deferred.fromCoroutine(self._setup())
        yield defer.Deferred.fromCoroutine(harness.connect_client("foo"))
        port = yield defer.Deferred.fromCoroutine(listen_tcp(Factory.forProtocol(Echo), self))
        lines: list[str] = []

        def observe(event):
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        collector = Collector()
        endpoint = harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}")
        yield _connect(endpoint, collector)
        collector.transport.write(b"hello tunnel")
        yield defer.Deferred.fromCoroutine(eventually(lambda: collector.received >= 12))
        collector.transport.loseConnection()
        data = yield collector.done
        self.assertEqual(data, b"hello tunnel")
        self.assertTrue(collector.reason.check(ConnectionDone))
        self.assertEqual([line for line in lines if "object at 0x" in line], [])

    async def _transfer(self, size: int, direction: str):
        harness = await self._setup()
        await harness.connect_client("foo")
        payload = Payload(size)
        if direction == "to-target":
            sink = _Factory(Collector)
            port = await listen_tcp(sink, self)
            sender = SendPayload(payload)
            endpoint = harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}")
            await _connect(endpoint, sender)
            await eventually(lambda: sink.instances, timeout=30)
            data = await sink.instances[0].done
        else:
            source = _Factory(lambda: SendPayload(payload))
            port = await listen_tcp(source, self)
            collector = Collector()
            endpoint = harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}")
            await _connect(endpoint, collector)
            data = await collector.done
        self.assertEqual(len(data), size)
        self.assertEqual(sha256_of(data), payload.sha256)

    def test_64mib_server_to_target(self):
        """64 MiB written on the server side arrives intact at the target."""
        return defer.Deferred.fromCoroutine(self._transfer(64 * MiB, "to-target"))

    def test_64mib_target_to_server(self):
        """64 MiB sent by the target arrives intact on the server side."""
        return defer.Deferred.fromCoroutine(self._transfer(64 * MiB, "from-target"))


class _Spy:
    """Records the type of every message a session receives."""

    def __init__(self, session):
        from remotedialer.protocol._codec import decode

        self.types = []
        original = session.message_received

        def spy(data):
            self.types.append(decode(data).type.name)
            original(data)

        session.message_received = spy


class BackPressureTests(TestCase):
    timeout = 120

    async def _slow_reader(self):
        harness = TunnelHarness(self)
        await harness.start()
        client = await harness.connect_client("foo")
        spy = _Spy(client.session)
        payload = Payload(48 * MiB)
        source = _Factory(lambda: SendPayload(payload))
        port = await listen_tcp(source, self)
        reader = Collector()
        endpoint = harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}")
        await _connect(endpoint, reader)
        stream = reader.transport
        await eventually(lambda: reader.received > 0)
        stream.pauseProducing()
        # The far sender pauses once the backlog passes the threshold (Pause
        # on the wire, its TCP read paused); the backlog then stops growing.
        await eventually(lambda: source.instances[0].pauses > 0)
        await eventually(Settled(stream), interval=0.05)
        peak = stream.buffered_inbound
        paused_at = reader.received
        self.assertIn("PAUSE", spy.types)
        self.assertGreater(source.instances[0].pauses, 0)
        self.assertGreater(peak, PAUSE_THRESHOLD)
        self.assertLess(peak, HARD_CAP)
        self.assertLess(paused_at, payload.size)
        stream.resumeProducing()
        data = await reader.done
        self.assertIn("RESUME", spy.types)
        self.assertEqual(sha256_of(data), payload.sha256)
        self.assertTrue(reader.reason.check(ConnectionDone))

    def test_slow_reader_pauses_far_sender(self):
        """
        A reader that stops reading makes the far sender pause (Pause on the
        wire, the target's TCP read paused); the buffered bytes stay under the
        hard cap; the transfer then completes intact.
        """
        return defer.Deferred.fromCoroutine(self._slow_reader())

    async def _slow_target(self):
        harness = TunnelHarness(self)
        await harness.start()
        await harness.connect_client("foo")
        sink = _Factory(Collector)
        port = await listen_tcp(sink, self)
        payload = Payload(48 * MiB)
        sender = SendPayload(payload)
        endpoint = harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}")
        await _connect(endpoint, sender)
        await eventually(lambda: sink.instances and sink.instances[0].received > 0)
        target = sink.instances[0]
        target.transport.pauseProducing()  # the target stops reading
        await eventually(lambda: sender.pauses > 0 and sender.transport.handle.remote_paused)
        stopped_at = target.received
        target.transport.resumeProducing()
        data = await target.done
        self.assertLess(stopped_at, payload.size)
        self.assertEqual(sha256_of(data), payload.sha256)

    def test_slow_target_pauses_server_writer(self):
        """A target that stops reading pauses the producer writing on the server side."""
        return defer.Deferred.fromCoroutine(self._slow_target())


class ConcurrencyTests(TestCase):
    timeout = 120

    async def _many(self, count: int):
        harness = TunnelHarness(self)
        await harness.start()
        await harness.connect_client("foo")
        port = await listen_tcp(Factory.forProtocol(Echo), self)
        address = f"127.0.0.1:{port.getHost().port}"

        class EchoCheck(Collector):
            def __init__(self, payload: bytes):
                super().__init__()
                self.payload = payload

            def connectionMade(self):
                self.transport.write(self.payload)

            def dataReceived(self, data):
                super().dataReceived(data)
                if self.received >= len(self.payload):
                    self.transport.loseConnection()

        protocols = []
        for i in range(count):
            payload = hashlib.sha256(str(i).encode()).digest() * (2048 + 37 * i)
            protocol = EchoCheck(payload)
            protocols.append(protocol)
            await _connect(harness.server.endpoint("foo", "tcp", address), protocol)
        results = await defer.gatherResults([p.done for p in protocols])
        for protocol, data in zip(protocols, results, strict=True):
            self.assertEqual(sha256_of(data), sha256_of(protocol.payload))
        self.assertEqual(harness.server.sessions.local_session("foo").streams, {})

    def test_200_concurrent_streams(self):
        """200 streams over one session, each with its own payload, all intact."""
        return defer.Deferred.fromCoroutine(self._many(200))
