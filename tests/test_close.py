"""
Close and error propagation through the tunnel, both directions, on loopback.
"""

from __future__ import annotations

import socket
import struct

from twisted.internet import defer
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from remotedialer import StreamError, allow_patterns

from tests.support import Collector, TunnelHarness, eventually, listen_tcp
from tests.test_end_to_end import _connect, _Factory


class _Resetter(Protocol):
    """A target that answers, then resets the connection (RST, not FIN)."""

    def connectionMade(self):
        self.transport.write(b"bye")
        sock = self.transport.getHandle()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.transport.abortConnection()


class _Closer(Protocol):
    def connectionMade(self):
        self.transport.write(b"done")
        self.transport.loseConnection()


class ClosePropagationTests(TestCase):
    timeout = 60

    async def _harness(self, **client_kwargs):
        harness = TunnelHarness(self)
        await harness.start()
        client = await harness.connect_client("foo", **client_kwargs)
        return harness, client

    def run_async(self, coroutine):
        return defer.Deferred.fromCoroutine(coroutine)

    def test_refused_dial_reaches_server_side(self):
        """A dial the target's host refuses ends the stream with the far side's error."""

        async def go():
            harness, _ = await self._harness()
            port = await listen_tcp(Factory.forProtocol(Protocol), self)
            address = f"127.0.0.1:{port.getHost().port}"
            await port.stopListening()
            reader = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", address), reader)
            await reader.done
            self.assertTrue(reader.reason.check(StreamError))
            self.assertIn("refused", reader.reason.getErrorMessage().lower())

        return self.run_async(go())

    def test_target_reset_is_an_error(self):
        """A target that resets its connection ends the server-side stream with an error."""

        async def go():
            harness, _ = await self._harness()
            port = await listen_tcp(Factory.forProtocol(_Resetter), self)
            reader = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}"), reader)
            await reader.done
            self.assertTrue(reader.reason.check(StreamError), reader.reason)
            self.assertFalse(reader.reason.check(ConnectionDone))

        return self.run_async(go())

    def test_target_clean_close(self):
        """A target that closes cleanly: its bytes arrive, then ConnectionDone."""

        async def go():
            harness, _ = await self._harness()
            port = await listen_tcp(Factory.forProtocol(_Closer), self)
            reader = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}"), reader)
            data = await reader.done
            self.assertEqual(data, b"done")
            self.assertTrue(reader.reason.check(ConnectionDone))

        return self.run_async(go())

    def test_local_lose_connection_closes_target(self):
        """loseConnection on the server side: the target sees its data, then a clean close."""

        async def go():
            harness, client = await self._harness()
            sink = _Factory(Collector)
            port = await listen_tcp(sink, self)
            writer = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}"), writer)
            writer.transport.write(b"last words")
            writer.transport.loseConnection()
            await eventually(lambda: sink.instances)
            data = await sink.instances[0].done
            self.assertEqual(data, b"last words")
            self.assertTrue(sink.instances[0].reason.check(ConnectionDone))
            self.assertTrue(writer.reason.check(ConnectionDone))
            await eventually(lambda: not client.session.streams)

        return self.run_async(go())

    def test_local_abort_closes_target(self):
        """abortConnection on the server side closes the target's connection too."""

        async def go():
            harness, client = await self._harness()
            sink = _Factory(Collector)
            port = await listen_tcp(sink, self)
            writer = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}"), writer)
            await eventually(lambda: sink.instances)
            writer.transport.abortConnection()
            await sink.instances[0].done
            self.assertTrue(writer.reason.check(StreamError))
            await eventually(lambda: not client.session.streams)

        return self.run_async(go())

    def test_refused_connect_fails_that_stream_only(self):
        """
        A Connect the client's authorizer refuses fails that stream with an
        error; the session and a stream opened beside it live on.
        """

        async def go():
            sink = _Factory(Collector)
            port = await listen_tcp(sink, self)
            allowed = f"127.0.0.1:{port.getHost().port}"
            harness, client = await self._harness(connect_authorizer=allow_patterns([f"tcp/{allowed}"]))
            session = client.session
            good = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", allowed), good)
            refused = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", "127.0.0.1:1"), refused)
            await refused.done
            self.assertTrue(refused.reason.check(StreamError))
            self.assertIn("not allowed", refused.reason.getErrorMessage())
            good.transport.write(b"still here")
            await eventually(lambda: sink.instances and sink.instances[0].received == 10)
            self.assertIs(client.session, session)
            self.assertTrue(harness.server.has_session("foo"))
            good.transport.loseConnection()
            await sink.instances[0].done

        return self.run_async(go())

    def test_tunnel_loss_ends_streams_with_error(self):
        """When the WebSocket goes, every stream on it ends with an error."""

        async def go():
            harness, client = await self._harness()
            sink = _Factory(Collector)
            port = await listen_tcp(sink, self)
            reader = Collector()
            await _connect(harness.server.endpoint("foo", "tcp", f"127.0.0.1:{port.getHost().port}"), reader)
            await eventually(lambda: sink.instances)
            harness.server.sessions.local_session("foo")._drop()
            await reader.done
            self.assertTrue(reader.reason.check(StreamError) or not reader.reason.check(ConnectionDone))
            await sink.instances[0].done

        return self.run_async(go())
