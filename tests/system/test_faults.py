"""
Faults survived: a tunnel on real loopback sockets, with the test relay of
tests/faultrelay.py between client and server adding latency, capping
bandwidth, slicing writes into single bytes, black-holing, resetting and
cutting after N bytes; and the real programs killed (-9) and stopped
(SIGSTOP) as subprocesses.

In every case: nothing hangs, streams end with an error (never a clean
close) when their tunnel dies, nothing is left in the session and stream
tables or their buffers, a silent far end is noticed within the keepalive
timeout and the client reconnects, and every transfer that completes is
byte-exact (sha256).  Keepalive runs on short options (pings every 0.2 s,
1 s of silence is death) so these cases take seconds.
"""

from __future__ import annotations

import functools
import gc
import hashlib
import os
import random
import re
import signal
import socket
import sys
import weakref

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from remotedialer import FlowLimits, TunnelClient, allow_all
from tests.faultrelay import FaultRelay, Faults
from tests.support import Echo, TunnelHarness, eventually, listen_tcp, wait

KiB = 1024
MiB = 1024 * KiB

#: Short keepalive: the client pings every 0.2 s; 1 s of silence is death.
CLIENT_KEEPALIVE = {"ping_interval": 0.2, "idle_timeout": 1.0}
#: (The server pings only on peer links, but its ping interval must be under its idle timeout.)
SERVER_KEEPALIVE = {"ping_interval": 0.2, "idle_timeout": 1.0}
#: How late past its idle timeout a side may notice a silent far end.  These
#: deadlines test promptness claims, so they stay; their margins are for a
#: loaded 2-core CI: with the machine's two cores busy with other work (load
#: up to 9), a side noticed within 0.05 s of its timeout, and a reset, a close
#: or a killed program was acted on within 0.11 s.
NOTICE_MARGIN = 1.0
#: When a reset or a close tells, ending follows at once (well under any keepalive).
PROMPT = 1.0
#: Reconnect soon after a loss (the default backoff is tested by the programs).
QUICK_RETRY = lambda attempt: min(0.05 * 2 ** attempt, 0.5)  # noqa: E731
#: Each of the download and the upload that a fault interrupts (after 1 MiB).
TRANSFER = 16 * MiB
#: Bytes let through before a cut: not a multiple of anything, so a frame is cut.
CUT = 100_003
#: What may still land on a paused reader after its Pause on the thin link of
#: the bandwidth test: the client's send buffer, the relay's 64 KiB and the
#: sockets' 64 KiB buffers (about 340 KiB measured on loopback).
IN_FLIGHT = 768 * KiB


def run(coroutine) -> defer.Deferred:
    return defer.Deferred.fromCoroutine(coroutine)


@functools.lru_cache(maxsize=8)
def blob(size: int, seed: int = 0) -> bytes:
    """
    Deterministic test bytes, made once: making 16 MiB blocks the reactor,
    and a reactor blocked for longer than a 1 s keepalive timeout drops a
    live tunnel (its timer runs before the frames waiting in the socket
    are read), so tests make their big blobs before their tunnel is up.
    """
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now() -> float:
    return reactor.seconds()


class Peer(Protocol):
    """
    One end of a transfer: writes C{send} as a push producer does (64 KiB
    at a time, honouring pause), then closes if C{close_after_send}; closes
    once C{expect} bytes have come.  C{on_data(peer)} is called after every
    chunk received.  C{done} fires with the bytes received once the
    connection is lost; C{reason} and C{lost_at} say how and when.
    """

    def __init__(self, send: bytes = b"", expect: int | None = None, close_after_send: bool = False,
                 on_data=None, chunk: int = 64 * KiB) -> None:
        self._send = send
        self._offset = 0
        self._chunk = chunk
        self._close = close_after_send
        self._paused = False
        self._producing = False
        self.expect = expect
        self.on_data = on_data
        self.chunks: list[bytes] = []
        self.received = 0
        self.pauses = 0
        self.reason = None
        self.lost_at: float | None = None
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        if self._send or self._close:
            self._producing = True
            self.transport.registerProducer(self, True)
            self.resumeProducing()

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        reactor.callLater(0, self._produce)

    def stopProducing(self) -> None:
        self._paused = True
        self._producing = False

    def _produce(self) -> None:
        while self._producing and not self._paused:
            if self._offset >= len(self._send):
                self._producing = False
                self.transport.unregisterProducer()
                if self._close:
                    self.transport.loseConnection()
                return
            self.transport.write(self._send[self._offset:self._offset + self._chunk])
            self._offset += self._chunk

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)
        if self.on_data is not None:
            self.on_data(self)
        if self.expect is not None and self.received >= self.expect:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self._producing = False
        self.reason = reason
        self.lost_at = now()
        self.done.callback(b"".join(self.chunks))


class Targets(Factory):
    """Targets behind the client: a new L{Peer} from C{make()} per connection, all kept."""

    def __init__(self, make) -> None:
        self.make = make
        self.peers: list[Peer] = []

    def buildProtocol(self, addr) -> Peer:
        peer = self.make()
        self.peers.append(peer)
        return peer


def connect(endpoint, peer: Protocol) -> defer.Deferred:
    return endpoint.connect(Factory.forProtocol(lambda: peer))


def sessions_of(server, key: str = "foo") -> list:
    return [s for s in server.sessions.local_sessions() if s.client_key == key]


class _Tunnel:
    """A server, the relay in front of it, and a client connected through the relay."""

    def __init__(self, server, relay: FaultRelay, client: TunnelClient) -> None:
        self.server = server
        self.relay = relay
        self.client = client

    def endpoint(self, address: str):
        return self.server.endpoint("foo", "tcp", address)

    @property
    def server_session(self):
        return self.server.sessions.local_session("foo")


class FaultTestCase(TestCase):
    timeout = 30

    async def tunnel(self, server: dict | None = None, client: dict | None = None,
                     up: Faults | None = None, down: Faults | None = None, **relay_options) -> _Tunnel:
        harness = TunnelHarness(self, **(server or {}))
        await harness.start()
        relay = FaultRelay(reactor, ("127.0.0.1", harness.port.getHost().port), up=up, down=down,
                           **relay_options)
        await relay.listen()
        self.addCleanup(relay.close)
        tunnel_client = TunnelClient(relay.url(), headers={"X-Tunnel-ID": "foo"}, client_key="foo",
                                     reactor=reactor, connect_authorizer=allow_all,
                                     retry_policy=QUICK_RETRY, **(client or {}))
        tunnel_client.startService()
        self.addCleanup(tunnel_client.stopService)
        await tunnel_client.when_connected()
        await eventually(lambda: harness.server.has_session("foo"))
        return _Tunnel(harness.server, relay, tunnel_client)

    async def target(self, factory: Factory) -> str:
        port = await listen_tcp(factory, self)
        return f"127.0.0.1:{port.getHost().port}"

    async def echo(self) -> str:
        return await self.target(Factory.forProtocol(Echo))

    async def exchange(self, tunnel: _Tunnel, address: str, size: int, seed: int = 1) -> None:
        """C{size} bytes to the echo target at C{address} and back: byte-exact, a clean close."""
        data = blob(size, seed)
        peer = Peer(send=data, expect=size)
        await connect(tunnel.endpoint(address), peer)
        got = await peer.done
        self.assertEqual((len(got), sha(got)), (size, sha(data)))
        self.assertTrue(peer.reason.check(ConnectionDone), peer.reason)

    async def within(self, predicate, since: float, limit: float, what: str) -> float:
        """Wait for C{predicate}; fail unless it came within C{limit} s of C{since}."""
        try:
            await eventually(predicate, timeout=max(0.0, limit - (now() - since)))
        except AssertionError:
            self.fail(f"{what}: not within {limit} s")
        elapsed = now() - since
        self.assertLess(elapsed, limit, f"{what} took {elapsed:.2f} s (limit {limit} s)")
        return elapsed

    def assert_prefix(self, got: bytes, data: bytes) -> None:
        """What arrived of a transfer cut short is exactly its beginning."""
        self.assertLess(len(got), len(data))
        self.assertEqual(sha(got), sha(data[:len(got)]))

    def assert_error(self, peer: Peer) -> None:
        """The connection ended with an error, not a clean close."""
        self.assertIsNotNone(peer.reason)
        self.assertFalse(peer.reason.check(ConnectionDone), peer.reason)
        self.assertTrue(peer.reason.check(ConnectionLost), peer.reason)

    def assert_emptied(self, *sessions) -> None:
        """Ended sessions hold no stream and no buffered byte."""
        for session in sessions:
            self.assertTrue(session.closed, session)
            self.assertEqual(session.stream_count, 0, session)
            self.assertEqual(session.streams, {}, session)
            self.assertEqual(session.mux.buffered, 0, session)

    def assert_collected(self, refs) -> None:
        """Nothing keeps the ended sessions (and so their buffers) alive."""
        gc.collect()
        self.assertEqual([r() for r in refs if r() is not None], [])


class ImpairedLinkTests(FaultTestCase):
    """Latency, a bandwidth cap, single-byte writes: transfers still complete, byte-exact."""

    def test_latency(self):
        """50 ms each way: 4 MiB to an echo target and back, byte-exact, on the same tunnel."""

        async def go():
            tunnel = await self.tunnel(up=Faults(latency=0.05), down=Faults(latency=0.05))
            await self.exchange(tunnel, await self.echo(), 4 * MiB)
            await eventually(lambda: tunnel.server_session.stream_count == 0
                             and tunnel.client.session.stream_count == 0)
            self.assertEqual(tunnel.relay.accepted, 1)

        return run(go())

    def test_bandwidth_cap_back_pressure(self):
        """
        2 MB/s each way over a thin link (64 KiB held in the relay): 2 MiB
        from a target behind the client to a server-side reader that stops
        reading after 128 KiB.  The pause threshold is lowered to 256 KiB so
        that it, not the transfer's size, must bound the reader's buffer:
        the buffer passes the threshold (Pause sent), then stops growing
        under the threshold plus what was in flight, and the capped link's
        back-pressure reaches the target (paused); once the reader resumes,
        the bytes arrive intact.
        """

        async def go():
            limits = FlowLimits(pause_threshold=256 * KiB, resume_threshold=64 * KiB)
            tunnel = await self.tunnel(server={"flow_limits": limits}, up=Faults(rate=2e6),
                                       down=Faults(rate=2e6), high_water=64 * KiB,
                                       socket_buffer=64 * KiB)
            # The client's own socket too, or its kernel takes the whole 2 MiB at once.
            tunnel.client._protocol.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
            data = blob(2 * MiB, 2)
            targets = Targets(lambda: Peer(send=data, close_after_send=True))
            address = await self.target(targets)
            reader = Peer()
            await connect(tunnel.endpoint(address), reader)
            await eventually(lambda: reader.received >= 128 * KiB)
            stream = reader.transport
            stream.pauseProducing()
            stream_paused_at = now()
            # Until the buffer has not grown for 0.3 s (at 2 MB/s, a flow would show in 10 ms).
            peak, pause_sent, grew_at = 0, False, now()
            while now() - grew_at < 0.3 and now() - stream_paused_at < 10:
                await wait(0.01)
                pause_sent |= stream.handle.inbound.pause_sent
                if stream.buffered_inbound > peak:
                    peak, grew_at = stream.buffered_inbound, now()
            self.assertTrue(pause_sent)
            self.assertGreater(peak, limits.pause_threshold)
            self.assertLess(peak, limits.pause_threshold + IN_FLIGHT, f"peak {peak}")
            self.assertLess(reader.received + peak, len(data))  # the target was held back
            self.assertGreater(targets.peers[0].pauses, 0)
            stream.resumeProducing()
            got = await reader.done
            self.assertEqual((len(got), sha(got)), (len(data), sha(data)))
            self.assertTrue(reader.reason.check(ConnectionDone), reader.reason)

        return run(go())

    def test_one_byte_writes(self):
        """Every write cut into 1-byte pieces, the upgrade included: 64 KiB there and back, byte-exact."""

        async def go():
            tunnel = await self.tunnel(up=Faults(slice_size=1), down=Faults(slice_size=1))
            await self.exchange(tunnel, await self.echo(), 64 * KiB)
            self.assertEqual(tunnel.relay.accepted, 1)

        return run(go())


class BrokenLinkTests(FaultTestCase):
    """
    The tunnel's TCP connection black-holed, reset or cut mid-transfer:
    both ends notice (within the keepalive timeout when nothing else can
    tell them), every stream ends with an error, the tables are emptied,
    and the client comes back.
    """

    async def transfers(self, tunnel: _Tunnel, fault, size: int = TRANSFER):
        """
        A download (target -> server) and an upload (server -> target)
        through the tunnel; C{fault()} is called once the download has
        brought 1 MiB.  Returns (time of the fault, what ended the
        download and the upload on the server side, the targets' ends).
        """
        download, upload = blob(size, 3), blob(size, 4)  # made already (see blob)
        sources = Targets(lambda: Peer(send=download, close_after_send=True))
        sinks = Targets(Peer)
        source_address, sink_address = await self.target(sources), await self.target(sinks)
        at = []

        def trigger(peer):
            if not at and peer.received >= MiB:
                at.append(now())
                fault()

        reader, writer = Peer(on_data=trigger), Peer(send=upload)
        await connect(tunnel.endpoint(sink_address), writer)
        await connect(tunnel.endpoint(source_address), reader)
        await eventually(lambda: at, timeout=10)
        return at[0], (reader, download), (writer, upload), sources, sinks

    async def check_ended(self, reader, writer, sources, sinks, since: float, limit: float) -> None:
        """Both server-side streams end with an error; the targets' connections end too; bytes in order."""
        (reader, download), (writer, upload) = reader, writer
        await self.within(lambda: reader.lost_at and writer.lost_at, since, limit, "streams ending")
        self.assert_error(reader)
        self.assert_error(writer)
        self.assertEqual((reader.transport.buffered_inbound, writer.transport.buffered_inbound), (0, 0))
        self.assert_prefix(b"".join(reader.chunks), download)
        [source], [sink] = sources.peers, sinks.peers
        await self.within(lambda: source.lost_at and sink.lost_at, since, limit, "target connections ending")
        self.assert_prefix(b"".join(sink.chunks), upload)

    async def reconnected(self, tunnel: _Tunnel, old_server_session, timeout: float = 10.0) -> None:
        await eventually(lambda: tunnel.server.has_session("foo")
                         and tunnel.server_session is not old_server_session
                         and old_server_session not in sessions_of(tunnel.server)
                         and tunnel.client.session is not None, timeout=timeout)
        self.assertEqual(len(sessions_of(tunnel.server)), 1)
        await self.exchange(tunnel, await self.echo(), MiB)

    def test_black_hole_mid_transfer(self):
        """
        The tunnel's connection goes silent both ways mid-transfer (and,
        while it lasts, new connections are refused): each end notices
        within its 1 s keepalive timeout (+1 s), both streams end with an
        error, both sessions end empty and are freed; once the relay heals
        the client is back and a new transfer is byte-exact.
        """

        async def go():
            blob(TRANSFER, 3), blob(TRANSFER, 4)
            tunnel = await self.tunnel(server=SERVER_KEEPALIVE, client=CLIENT_KEEPALIVE)
            old = [tunnel.server_session, tunnel.client.session]

            def black_hole():
                tunnel.relay.refuse = True
                tunnel.relay.configure(blackhole=True, new=False)

            at, reader, writer, sources, sinks = await self.transfers(tunnel, black_hole)
            limit = SERVER_KEEPALIVE["idle_timeout"] + NOTICE_MARGIN
            await self.within(lambda: old[1].closed, at, limit, "the client noticing")
            await self.within(lambda: not tunnel.server.has_session("foo"), at, limit, "the server noticing")
            await self.check_ended(reader, writer, sources, sinks, at, limit)
            self.assert_emptied(*old)
            self.assertEqual(sessions_of(tunnel.server), [])
            tunnel.relay.refuse = False
            await self.reconnected(tunnel, old[0])
            refs = [weakref.ref(s) for s in old]
            old = reader = writer = sources = sinks = None
            self.assert_collected(refs)

        return run(go())

    def test_reset_mid_transfer(self):
        """
        Both sides of the tunnel's connection reset mid-transfer, with the
        default 60 s keepalive: the streams end with an error at once (the
        reset tells), the sessions end empty, the client reconnects.
        """

        async def go():
            tunnel = await self.tunnel()
            old = [tunnel.server_session, tunnel.client.session]
            at, reader, writer, sources, sinks = await self.transfers(tunnel, tunnel.relay.reset)
            await self.check_ended(reader, writer, sources, sinks, at, PROMPT)
            await self.within(lambda: old[0].closed and old[1].closed, at, PROMPT, "sessions ending")
            self.assert_emptied(*old)
            await self.reconnected(tunnel, old[0])

        return run(go())

    def _cut(self, direction: str, reset: bool):
        async def go():
            tunnel = await self.tunnel()
            old = [tunnel.server_session, tunnel.client.session]
            [connection] = tunnel.relay.connections
            pipe = connection.up if direction == "up" else connection.down
            expected = []

            def cut():
                expected.append(pipe.forwarded + pipe.queued + CUT)  # what is queued goes too
                connection.configure(direction, cut_after=CUT, cut_reset=reset)

            at, reader, writer, sources, sinks = await self.transfers(tunnel, cut)
            await self.check_ended(reader, writer, sources, sinks, at, PROMPT)
            await self.within(lambda: old[0].closed and old[1].closed, at, PROMPT, "sessions ending")
            self.assertEqual(pipe.forwarded, expected[0])
            self.assert_emptied(*old)
            await self.reconnected(tunnel, old[0])

        return run(go())

    def test_cut_after_n_bytes_close(self):
        """
        The server-to-client direction passes 100 003 more bytes (ending
        mid-frame), then both sides are closed cleanly (FIN): the TCP close
        is no clean end for the streams, which end with an error, at once.
        """
        return self._cut("down", reset=False)

    def test_cut_after_n_bytes_reset(self):
        """The client-to-server direction passes 100 003 more bytes, then both sides are reset."""
        return self._cut("up", reset=True)


class HalfOpenTests(FaultTestCase):
    """
    The client gives up on a silent tunnel (its keepalive timeout, 1 s)
    and reconnects while the server still holds the old session (its own
    timeout is 6 s): the old session is half-open.  The new session of the
    same owner gets the dials at once; the old one, silent through the
    server's ping (half its idle timeout, 3 s), is replaced and ends as
    soon as it carries no stream.  (The server's timeout is long enough
    that the replacement, about 4 s after the silence began, comes well
    before it, about 6 s after, even on a loaded machine.)
    """

    #: The server's idle timeout; its ping of an older session waits half of it.
    SERVER_IDLE_TIMEOUT = 6.0

    async def half_open(self, streams_on_old: int = 0):
        tunnel = await self.tunnel(server={"ping_interval": 0.2, "idle_timeout": self.SERVER_IDLE_TIMEOUT},
                                   client=CLIENT_KEEPALIVE)
        old, old_client = tunnel.server_session, tunnel.client.session
        echo = await self.echo()
        await self.exchange(tunnel, echo, 64 * KiB)
        tunnel.relay.configure(blackhole=True, new=False)  # the old connection goes silent; new ones pass
        at = now()
        await self.within(lambda: tunnel.client.session not in (None, old_client)
                          and any(s is not old for s in sessions_of(tunnel.server)), at,
                          CLIENT_KEEPALIVE["idle_timeout"] + NOTICE_MARGIN, "the client reconnecting")
        [newest] = [s for s in sessions_of(tunnel.server) if s is not old]
        return tunnel, old, newest, echo, now()

    def test_new_dials_use_the_new_session_at_once(self):
        """A dial made now goes through the client's new session and its echo comes back at once."""

        async def go():
            tunnel, old, newest, echo, _arrived = await self.half_open()
            data = blob(64 * KiB, 5)
            peer = Peer(send=data, expect=len(data))
            started = now()
            await connect(tunnel.endpoint(echo), peer)
            self.assertEqual((newest.stream_count, old.stream_count), (1, 0))
            got = await peer.done
            self.assertEqual(sha(got), sha(data))
            self.assertLess(peer.lost_at - started, PROMPT)

        return run(go())

    def test_half_open_session_replaced_at_once(self):
        """
        The half-open session carried no stream, so it ends as soon as it
        has failed the server's ping (3 s after the new one arrives, +1 s
        for a loaded machine; not at the server's 6 s timeout: it says it
        was replaced), emptied; dials then go through the new session,
        byte-exact.
        """

        async def go():
            tunnel, old, newest, echo, arrived = await self.half_open()
            probe = self.SERVER_IDLE_TIMEOUT / 2
            # Closed first; it leaves the registry as its WebSocket's connectionLost runs.
            await self.within(lambda: old.closed and old not in sessions_of(tunnel.server), arrived,
                              probe + NOTICE_MARGIN, "the old session ending")
            self.assert_emptied(old)
            # Replaced, not timed out.
            self.assertTrue(old.superseded)
            self.assertEqual(old.end_reason, "replaced by a newer session of the same client")
            self.assertEqual(sessions_of(tunnel.server), [newest])
            await self.exchange(tunnel, echo, MiB)

        return run(go())


class ReconnectIntoBlackHoleTests(FaultTestCase):
    """The path dies before the tunnel is open: the upgrade itself goes unanswered."""

    def test_silent_server_during_the_opening_handshake(self):
        """
        The server goes silent for good, new connections included: the
        client notices (1 s), reconnects, and its upgrade request is lost
        in the hole.  Once the path heals, the client is back within its
        keepalive timeout (+1 s), as it would be after silence on an open
        tunnel.
        """

        async def go():
            tunnel = await self.tunnel(server=SERVER_KEEPALIVE, client=CLIENT_KEEPALIVE)
            old, [first] = tunnel.server_session, tunnel.relay.connections
            tunnel.relay.configure(blackhole=True)  # the live connection and new ones
            # A new attempt, and its upgrade request dropped in the hole.
            await eventually(lambda: any(c is not first and c.up.read for c in tunnel.relay.connections),
                             timeout=5)
            tunnel.relay.configure(blackhole=False)
            healed = now()
            await self.within(lambda: tunnel.server.has_session("foo") and tunnel.server_session is not old,
                              healed, CLIENT_KEEPALIVE["idle_timeout"] + NOTICE_MARGIN,
                              "the client coming back")

        return run(go())



# The real programs as subprocesses.

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile="]
#: The programs' keepalive: pings every 0.5 s, 2 s of silence is death.
PROGRAM_IDLE_TIMEOUT = 2.0
PROGRAM_KEEPALIVE = ["--ping-interval", "0.5", "--idle-timeout", str(PROGRAM_IDLE_TIMEOUT)]


class Program(ProcessProtocol):
    """A twistd subprocess; its stdout and stderr collected in C{out}."""

    def __init__(self) -> None:
        self.out = b""
        self.running = False

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.out += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.running = False

    def signal(self, name: str) -> None:
        """Send SIG<name> (STOP, CONT, KILL...) while the process runs."""
        if self.running:
            self.transport.signalProcess(getattr(signal, f"SIG{name}"))

    async def kill(self) -> None:
        """SIGKILL (a stopped process too) and wait until it is gone."""
        self.signal("KILL")
        await eventually(lambda: not self.running, timeout=10)


class SlowBody(Resource):
    """Sends C{data} 64 KiB every 10 ms; C{ended} gets the time each request ended early."""

    isLeaf = True

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self.data = data
        self.ended: list[float] = []

    def render_GET(self, request):
        offsets = iter(range(0, len(self.data), 64 * KiB))

        def send():
            offset = next(offsets, None)
            if offset is None:
                loop.stop()
                request.finish()
            else:
                request.write(self.data[offset:offset + 64 * KiB])

        def gone(failure):
            if loop.running:
                loop.stop()
            self.ended.append(now())

        loop = LoopingCall(send)
        loop.start(0.01)
        request.notifyFinish().addErrback(gone)
        return NOT_DONE_YET


class Body(Protocol):
    """A response body as it arrives; C{reason} once it ended."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.received = 0
        self.reason = None
        self.lost_at: float | None = None

    def dataReceived(self, data: bytes) -> None:
        self.chunks.append(data)
        self.received += len(data)

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        self.lost_at = now()


class ProgramTests(FaultTestCase):
    """
    C{twistd -n remotedialer-server} and C{remotedialer-client} stopped and
    killed mid-download, fetching through the server's front door from
    targets in this process.
    """

    timeout = 60

    async def setUp_targets(self) -> str:
        self.small = blob(2 * MiB, 6)
        self.large = blob(16 * MiB, 7)
        self.slow = SlowBody(self.large)
        root = Resource()
        root.putChild(b"small", Data(self.small, "application/octet-stream"))
        root.putChild(b"slow", self.slow)
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=self.pool)
        self.target_address = await self.target(Site(root))
        return self.target_address

    def spawn(self, *args: str) -> Program:
        program = Program()
        cwd = self.mktemp()
        os.makedirs(cwd)
        env = {k: v for k, v in os.environ.items() if k != "CATTLE_TUNNEL_DATA_DEBUG"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
        argv = [*TWISTD, *args]
        reactor.spawnProcess(program, argv[0], argv, env=env, path=cwd)
        self.addCleanup(program.kill)
        return program

    async def start_server(self, port: int = 0) -> tuple[Program, int]:
        server = self.spawn("remotedialer-server", "--listen", f"tcp:{port}:interface=127.0.0.1",
                            "--insecure-any-client", *PROGRAM_KEEPALIVE)
        pattern = rb"starting on (\d+)"  # the listening factory: the guard or the Site
        await eventually(lambda: re.search(pattern, server.out) or not server.running, timeout=20)
        found = re.search(pattern, server.out)
        self.assertIsNotNone(found, server.out)
        return server, int(found.group(1))

    def start_client(self, port: int) -> Program:
        return self.spawn("remotedialer-client", "--connect", f"ws://127.0.0.1:{port}/connect",
                          "--id", "foo", "--allow", f"tcp/{self.target_address}", *PROGRAM_KEEPALIVE)

    def url(self, port: int, name: str) -> bytes:
        return f"http://127.0.0.1:{port}/client/foo/http/{self.target_address}/{name}".encode()

    async def fetch(self, port: int, name: str) -> tuple[int, bytes]:
        from twisted.web.client import readBody

        response = await self.agent.request(b"GET", self.url(port, name))
        return response.code, await readBody(response)

    async def fetch_small(self, port: int, timeout: float = 20.0) -> None:
        """Through the front door once the client is connected (500 until then): byte-exact."""
        started = now()
        while True:
            code, body = await self.fetch(port, "small")
            if code != 500 or now() - started > timeout:
                break
            self.assertIn(b"failed to find Session for client foo", body)
            await wait(0.05)
        self.assertEqual(code, 200, body[:200])
        self.assertEqual(sha(body), sha(self.small))

    async def start_download(self, port: int) -> Body:
        """The large, slow body through the front door, in flight (256 KiB arrived)."""
        response = await self.agent.request(b"GET", self.url(port, "slow"))
        self.assertEqual(response.code, 200)
        body = Body()
        response.deliverBody(body)
        await eventually(lambda: body.received >= 256 * KiB or body.reason, timeout=10)
        self.assertIsNone(body.reason)
        return body

    def assert_truncated(self, body: Body) -> None:
        self.assertFalse(body.reason.check(ResponseDone), body.reason)
        self.assert_prefix(b"".join(body.chunks), self.large)

    async def programs(self) -> tuple[Program, Program, int]:
        await self.setUp_targets()
        server, port = await self.start_server()
        client = self.start_client(port)
        await self.fetch_small(port)
        return server, client, port

    def test_sigstop_server(self):
        """
        The server is stopped (SIGSTOP) mid-download: the client notices
        within its 2 s idle timeout (+1 s) and drops the target's
        connection; after SIGCONT the download ends at once, cut short
        (its bytes in order), and the client is back: a fetch is byte-exact.
        """

        async def go():
            server, client, port = await self.programs()
            body = await self.start_download(port)
            server.signal("STOP")
            self.addCleanup(server.signal, "CONT")
            stopped = now()
            await self.within(lambda: self.slow.ended, stopped, PROGRAM_IDLE_TIMEOUT + NOTICE_MARGIN,
                              "the client noticing")
            await eventually(lambda: b"no frame for 2" in client.out, timeout=5)
            self.assertIsNone(body.reason)  # the stopped server cannot have told anyone
            server.signal("CONT")
            resumed = now()
            await self.within(lambda: body.reason, resumed, PROMPT, "the download ending")
            self.assert_truncated(body)
            await self.fetch_small(port, timeout=PROGRAM_IDLE_TIMEOUT + NOTICE_MARGIN)
            self.assertTrue(client.running and server.running)

        return run(go())

    def test_kill_client(self):
        """
        The client is killed (-9) mid-download: the download ends at once
        (not at a timeout), cut short, its bytes in order; the target's
        connection ends; the server no longer has the client (500).
        """

        async def go():
            server, client, port = await self.programs()
            body = await self.start_download(port)
            client.signal("KILL")
            killed = now()
            await self.within(lambda: body.reason and self.slow.ended, killed, PROMPT,
                              "the download and the target connection ending")
            self.assert_truncated(body)
            code, text = await self.fetch(port, "small")
            self.assertEqual(code, 500, text)
            self.assertIn(b"failed to find Session for client foo", text)

        return run(go())

    def test_kill_server(self):
        """
        The server is killed (-9) mid-download: the download ends at once,
        cut short; the client drops the target's connection at once, keeps
        retrying (with backoff), and is back once a new server listens on
        the same port: a fetch is byte-exact.
        """

        async def go():
            server, client, port = await self.programs()
            body = await self.start_download(port)
            server.signal("KILL")
            killed = now()
            await self.within(lambda: body.reason and self.slow.ended, killed, PROMPT,
                              "the download and the target connection ending")
            self.assert_truncated(body)
            # A retry failed, and said why and when the next one is.
            retry = rb"failed: connection to 127\.0\.0\.1:\d+ refused; retrying in \d+\.\d s\n"
            await eventually(lambda: re.search(retry, client.out), timeout=15)
            await eventually(lambda: not server.running)
            await self.start_server(port)
            await self.fetch_small(port)
            self.assertTrue(client.running)

        return run(go())
