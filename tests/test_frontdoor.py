"""
The HTTP front door end to end on 127.0.0.1 with the real reactor: a Server
and its FrontDoor in a twisted.web Site, a TunnelClient, and a twisted.web
target behind the client.  Downstream HTTP clients are treq (non-persistent
pool) or a raw TCP protocol where the test must control reading.
"""

from __future__ import annotations

import hashlib
import random
import time

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer

from remotedialer import Server, TunnelClient, allow_all
from remotedialer._frontdoor import FrontDoor
from remotedialer._stream import HARD_CAP, PAUSE_THRESHOLD

from tests.support import eventually, listen_tcp, wait

MiB = 1024 * 1024
CHUNK = 64 * 1024


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


def chunks(size: int | None, seed: int = 7):
    """Deterministic body chunks of C{size} bytes in all (None: endless)."""
    block = random.Random(seed).randbytes(CHUNK)
    sent = 0
    i = 0
    while size is None or sent < size:
        n = CHUNK if size is None else min(CHUNK, size - sent)
        yield bytes([i % 251]) + block[1:n]
        sent += n
        i += 1


def sha256_of_chunks(size: int) -> str:
    h = hashlib.sha256()
    for chunk in chunks(size):
        h.update(chunk)
    return h.hexdigest()


# The target, behind the client.


@implementer(IPushProducer)
class _BodyProducer:
    """Writes a body into a twisted.web request as a push producer, honouring pause."""

    def __init__(self, request, size: int | None) -> None:
        self._request = request
        self._chunks = chunks(size)
        self._paused = False
        self.stopped = False
        self.pauses = 0
        self.produced = 0
        self.lost = request.notifyFinish()
        self.lost.addErrback(lambda _: None)
        self.connection_lost = False
        self.lost.addBoth(self._finished)

    def _finished(self, result):
        self.connection_lost = not self._request.finished
        return result

    def start(self) -> None:
        self._request.registerProducer(self, True)
        self.resumeProducing()

    def pauseProducing(self) -> None:
        if not self._paused:
            self.pauses += 1
        self._paused = True

    def resumeProducing(self) -> None:
        if self.stopped:
            return
        self._paused = False
        reactor.callLater(0, self._produce)

    def stopProducing(self) -> None:
        self.stopped = True
        self._paused = True

    def _produce(self) -> None:
        for _ in range(64):  # then give the reactor a turn
            if self._paused or self.stopped:
                return
            chunk = next(self._chunks, None)
            if chunk is None:
                self._request.unregisterProducer()
                self._request.finish()
                self.stopped = True
                return
            self.produced += len(chunk)
            self._request.write(chunk)
        if not self._paused and not self.stopped:
            reactor.callLater(0, self._produce)


class Streamed(Resource):
    """C{size} bytes (None: endless), streamed with a push producer."""

    isLeaf = True

    def __init__(self, size: int | None) -> None:
        super().__init__()
        self.size = size
        self.producers: list[_BodyProducer] = []

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"application/octet-stream")
        if self.size is not None:
            request.setHeader(b"Content-Length", str(self.size).encode())
        producer = _BodyProducer(request, self.size)
        self.producers.append(producer)
        producer.start()
        return NOT_DONE_YET


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"X-Target-Header", b"hello-value")
        request.setHeader(b"Content-Type", b"text/plain")
        return b"hello through the front door"


class Gone(Resource):
    isLeaf = True

    def render_GET(self, request):
        request.setResponseCode(404)
        return b"not here\n"


class Hang(Resource):
    """Never answers; records what it was asked and when its connection went."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[bytes, dict]] = []
        self.lost: list[defer.Deferred] = []

    def render_GET(self, request):
        self.seen.append((request.uri, dict(request.args)))
        d = request.notifyFinish()
        d.addErrback(lambda _: None)  # the front door gives up on us: expected
        self.lost.append(d)
        return NOT_DONE_YET


class EchoSha(Resource):
    isLeaf = True

    def render_POST(self, request):
        body = request.content.read()
        content_type = request.getHeader(b"Content-Type") or b""
        return b"%s %d %s" % (request.method, len(body), hashlib.sha256(body).hexdigest().encode()) + \
            b" " + content_type


class Short(Resource):
    """Promises 1000 bytes and closes after the head: the body is cut short."""

    isLeaf = True

    def render_GET(self, request):
        transport = request.channel.transport
        transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
        transport.loseConnection()
        return NOT_DONE_YET


class Uri(Resource):
    """Answers with the raw URI it was asked for."""

    isLeaf = True

    def render_GET(self, request):
        return request.uri


BIG = 32 * MiB
HUGE = 256 * MiB


class Target:
    def __init__(self) -> None:
        self.root = Resource()
        self.big = Streamed(BIG)
        self.huge = Streamed(HUGE)
        self.endless = Streamed(None)
        self.hang = Hang()
        for name, resource in [(b"hello", Hello()), (b"gone", Gone()), (b"big", self.big),
                               (b"huge", self.huge), (b"endless", self.endless),
                               (b"hang", self.hang), (b"echo", EchoSha()),
                               (b"short", Short()), (b"uri", Uri())]:
            self.root.putChild(name, resource)
        self.port = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"


# The downstream side.


class RawHTTP(Protocol):
    """
    Sends one request and reads the response by hand: head, then body bytes
    counted and hashed; optionally aborts after C{abort_after} bytes.
    """

    def __init__(self, request: bytes, abort_after: int | None = None) -> None:
        self._request = request
        self._abort_after = abort_after
        self.head = b""
        self.body_bytes = 0
        self.received = 0
        self._sha = hashlib.sha256()
        self._in_body = False
        self.done = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if not self._in_body:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.head, _, data = self.head.partition(b"\r\n\r\n")
            self._in_body = True
        self.body_bytes += len(data)
        self._sha.update(data)
        if self._abort_after is not None and self.received >= self._abort_after:
            self._abort_after = None
            self.transport.abortConnection()

    def connectionLost(self, reason=None) -> None:
        self.done.callback(None)

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    @property
    def status_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def header(self, name: bytes) -> bytes | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


class FrontDoorTests(TestCase):
    timeout = 180

    async def _setup(self):
        self.server = Server(reactor=reactor)
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        root.putChild(b"client", FrontDoor(self.server))
        self.front = await listen_tcp(Site(root), self)
        self.target = Target()
        self.target.port = await listen_tcp(Site(self.target.root), self)
        self.client = TunnelClient(
            f"ws://127.0.0.1:{self.front.getHost().port}/connect",
            headers={"X-Tunnel-ID": "foo"},
            reactor=reactor,
            connect_authorizer=allow_all,
            client_key="foo",
        )
        self.client.startService()
        self.addCleanup(self.client.stopService)
        await self.client.when_connected()
        await eventually(lambda: self.server.has_session("foo"))
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    def url(self, path: str, client_key: str = "foo") -> str:
        return f"http://127.0.0.1:{self.front.getHost().port}/client/{client_key}/http/{self.target.address}/{path}"

    def raw_request(self, path: str) -> bytes:
        return (f"GET /client/foo/http/{self.target.address}/{path} HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()

    async def _raw(self, protocol: RawHTTP) -> RawHTTP:
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: protocol))
        return protocol

    def _server_streams(self):
        session = self.server.sessions.local_session("foo")
        return list(session.streams.values()) if session is not None else []

    def test_get_passes_status_headers_body(self):
        """A GET returns the target's status, its own response header and its body."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("hello"), pool=self.pool)
            body = await response.content()
            self.assertEqual(response.code, 200)
            self.assertEqual(response.headers.getRawHeaders(b"X-Target-Header"), [b"hello-value"])
            self.assertEqual(response.headers.getRawHeaders(b"Content-Type"), [b"text/plain"])
            self.assertEqual(body, b"hello through the front door")

        return run(go())

    def test_streamed_32mib_body(self):
        """A 32 MiB body streamed by the target arrives whole (length and sha256)."""

        async def go():
            await self._setup()
            expected = sha256_of_chunks(BIG)
            response = await treq.get(self.url("big"), pool=self.pool)
            self.assertEqual(response.code, 200)
            self.assertEqual(response.length, BIG)  # Agent keeps Content-Length out of .headers
            body = await response.content()
            self.assertEqual(len(body), BIG)
            self.assertEqual(hashlib.sha256(body).hexdigest(), expected)

        return run(go())

    def test_404_passed_through(self):
        """A 404 from the target (its own body, or twisted.web's for a missing child) stays a 404."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("gone"), pool=self.pool)
            self.assertEqual((response.code, await response.content()), (404, b"not here\n"))
            missing = await treq.get(self.url("no/such/page"), pool=self.pool)
            await missing.content()
            self.assertEqual(missing.code, 404)

        return run(go())

    def test_unknown_client_is_500(self):
        """A client key with no session: 500 with Go's error text."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("hello", client_key="nobody"), pool=self.pool)
            body = await response.content()
            self.assertEqual(response.code, 500)
            self.assertIn(b"failed to find Session for client nobody", body)

        return run(go())

    def test_timeout(self):
        """
        ?timeout=1 on a target that never answers: 504 after about a second;
        the target saw the other query parameters but not timeout, and its
        connection is closed.
        """

        async def go():
            await self._setup()
            started = time.monotonic()
            response = await treq.get(self.url("hang?x=1&timeout=1&y=two"), pool=self.pool)
            body = await response.content()
            elapsed = time.monotonic() - started
            self.assertEqual((response.code, elapsed < 3.0), (504, True), body)
            self.assertTrue(body.startswith(b"timeout waiting for"), body)
            self.assertGreaterEqual(elapsed, 0.9)
            self.assertLess(elapsed, 3.0)
            self.assertEqual(len(self.target.hang.seen), 1)
            uri, args = self.target.hang.seen[0]
            self.assertEqual(uri, b"/hang?x=1&y=two")
            self.assertEqual(args, {b"x": [b"1"], b"y": [b"two"]})
            lost = self.target.hang.lost[0]
            await eventually(lambda: lost.called, timeout=5)
            await eventually(lambda: not self.client.session.streams, timeout=5)

        return run(go())

    def test_post_body_passed_through(self):
        """A POST's body and Content-Type reach the target."""

        async def go():
            await self._setup()
            data = random.Random(3).randbytes(3 * MiB + 17)
            response = await treq.post(self.url("echo"), data=data, pool=self.pool,
                                       headers={b"Content-Type": [b"application/x-test"]})
            body = await response.content()
            self.assertEqual(response.code, 200)
            self.assertEqual(body, b"POST %d %s application/x-test"
                             % (len(data), hashlib.sha256(data).hexdigest().encode()))

        return run(go())

    def test_dropped_reader_stops_upstream(self):
        """
        A downstream reader that goes away mid-body stops the target's producer,
        closes its connection, and the tunnel stream is gone on both ends.
        """

        async def go():
            await self._setup()
            reader = await self._raw(RawHTTP(self.raw_request("endless"), abort_after=4 * MiB))
            await reader.done
            self.assertEqual(reader.status_line, b"HTTP/1.1 200 OK")
            self.assertGreaterEqual(reader.received, 4 * MiB)
            [producer] = self.target.endless.producers
            await eventually(lambda: producer.stopped and producer.lost.called, timeout=5)
            self.assertTrue(producer.connection_lost)
            await eventually(lambda: not self.client.session.streams, timeout=5)
            await eventually(lambda: not self._server_streams(), timeout=5)

        return run(go())

    def test_slow_reader_memory_bound(self):
        """
        A downstream reader that stops reading for 2 s: the tunnel stream's
        buffer stays under HARD_CAP, the target is paused and stalls; once
        reading resumes the 256 MiB arrive whole.
        """

        async def go():
            await self._setup()
            expected = sha256_of_chunks(HUGE)

            class Paused(RawHTTP):
                def connectionMade(self):
                    super().connectionMade()
                    self.transport.pauseProducing()

            reader = await self._raw(Paused(self.raw_request("huge")))
            await eventually(lambda: self.target.huge.producers, timeout=5)
            [producer] = self.target.huge.producers
            peak = 0
            streams_seen = 0
            produced_mid = None
            started = time.monotonic()
            while time.monotonic() - started < 2.0:
                await wait(0.005)
                streams = self._server_streams()
                streams_seen = max(streams_seen, len(streams))
                peak = max([peak] + [s.buffered_inbound for s in streams])
                if produced_mid is None and time.monotonic() - started >= 1.5:
                    produced_mid = producer.produced
            produced_at_2s = producer.produced
            self.assertEqual(streams_seen, 1)
            self.assertGreater(peak, PAUSE_THRESHOLD)  # the stream buffered, and sent Pause
            self.assertLess(peak, HARD_CAP)
            self.assertGreater(producer.pauses, 0)
            self.assertEqual(produced_mid, produced_at_2s, "target kept producing while the reader was paused")
            self.assertLess(produced_at_2s, 64 * MiB)
            self.assertEqual(reader.body_bytes, 0)
            reader.transport.resumeProducing()
            await reader.done
            self.assertEqual(reader.status_line, b"HTTP/1.1 200 OK")
            self.assertEqual(reader.header(b"Content-Length"), str(HUGE).encode())
            self.assertEqual(reader.body_bytes, HUGE)
            self.assertEqual(reader.sha256, expected)
            await eventually(lambda: not self.client.session.streams, timeout=5)

        return run(go())

    def test_bad_timeout_is_400(self):
        """A timeout that is not a positive finite number is refused before anything is dialed."""

        async def go():
            await self._setup()
            for value in ("-1", "nan", "inf", "0", "soon"):
                response = await treq.get(self.url(f"hello?timeout={value}"), pool=self.pool)
                self.assertEqual(response.code, 400, value)
                self.assertIn(b"timeout", await response.content())
            self.assertEqual(self._server_streams(), [])

        return run(go())

    def test_path_forwarded_as_sent(self):
        """Percent-escapes in the path reach the target untouched (no query injected)."""

        async def go():
            await self._setup()
            response = await treq.get(self.url("uri/a%3Fb%2Fc%20d?x=1"), pool=self.pool)
            self.assertEqual(response.code, 200)
            self.assertEqual(await response.content(), b"/uri/a%3Fb%2Fc%20d?x=1")

        return run(go())

    def test_body_cut_short_aborts_downstream(self):
        """
        Once the target's head has been passed on, a failed body cuts the
        downstream connection; no error body is written under its headers.
        """

        async def go():
            await self._setup()
            raw = await self._raw(RawHTTP(self.raw_request("short")))
            await raw.done
            self.assertEqual(raw.status_line, b"HTTP/1.1 200 OK")
            self.assertEqual(raw.header(b"Content-Length"), b"1000")
            self.assertLess(raw.body_bytes, 1000)
            self.assertNotIn(b"502", raw.head)

        return run(go())

