"""
The server program's site (remotedialer.server._site) in memory: the access log
is written only when asked for; a streamed body (RequestBody) goes to its
consumer as it arrives, is held (boundedly) before the consumer starts or
while it is paused, and pauses reading from the caller while it is held;
the server program's front-door tuning flags; the HTTP/1.1 channel asks
for its local address once per connection, and keeps one idle timer per
connection that still fires after the same idle time.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from remotedialer._tap import server as server_tap
from remotedialer.server._site import HELD_BODY, HELD_INPUT, RequestBody, ServerSite


class AccessLogTests(SynchronousTestCase):
    def served(self, access_log: bool) -> str:
        path = os.path.abspath(self.mktemp())
        site = ServerSite(Resource(), access_log=access_log, logPath=path, reactor=Clock())
        site.startFactory()
        channel = site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
        channel.connectionLost(Failure(ConnectionDone()))
        site.stopFactory()
        with open(path) as f:
            return f.read()

    def test_off_by_default(self) -> None:
        self.assertEqual(self.served(access_log=False), "")

    def test_on(self) -> None:
        self.assertIn('"GET /nothing HTTP/1.1" 404', self.served(access_log=True))


class FakeRequest:
    def __init__(self) -> None:
        self.paused = 0
        self.resumed = 0

    def pause_reading(self) -> None:
        self.paused += 1

    def resume_reading(self) -> None:
        self.resumed += 1


class Consumer:
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


class RequestBodyTests(SynchronousTestCase):
    def test_streams_as_it_arrives(self) -> None:
        request = FakeRequest()
        body = RequestBody(request, 10)  # type: ignore[arg-type]
        consumer = Consumer()
        done = body.startProducing(consumer)
        body.chunk(b"abcde")
        self.assertEqual(consumer.data, b"abcde")
        self.assertNoResult(done)
        body.chunk(b"fghij")
        body.finished()
        self.successResultOf(done)
        self.assertEqual((consumer.data, request.paused, body.peak_held), (b"abcdefghij", 0, 0))

    def test_held_before_start_and_bounded(self) -> None:
        request = FakeRequest()
        body = RequestBody(request, None)  # type: ignore[arg-type]
        body.chunk(b"x" * HELD_BODY)
        self.assertEqual(request.paused, 0)
        body.chunk(b"y")  # over the bound: stop reading the caller
        self.assertEqual(request.paused, 1)
        body.chunk(b"z")  # (the channel read again on its own: paused again)
        self.assertEqual(request.paused, 2)
        body.finished()
        consumer = Consumer()
        done: Deferred[None] = body.startProducing(consumer)
        self.assertEqual(consumer.data, b"x" * HELD_BODY + b"yz")
        self.successResultOf(done)

    def test_consumer_pause_pauses_the_caller(self) -> None:
        request = FakeRequest()
        body = RequestBody(request, None)  # type: ignore[arg-type]
        consumer = Consumer()
        body.startProducing(consumer)
        body.pauseProducing()  # the tunnel stream is paused
        self.assertEqual(request.paused, 1)
        body.chunk(b"late")  # read before the pause took hold: held, not written
        self.assertEqual(consumer.data, b"")
        body.resumeProducing()
        self.assertEqual((consumer.data, request.resumed), (b"late", 1))

    def test_abandoned_takes_no_more(self) -> None:
        request = FakeRequest()
        body = RequestBody(request, 100)  # type: ignore[arg-type]
        consumer = Consumer()
        body.startProducing(consumer)
        body.abandon()
        body.chunk(b"more")
        self.assertEqual((consumer.data, request.paused, body.received), (b"", 1, 4))


class Held(Resource):
    """Answers nothing until the test says so."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        self.requests.append(request)
        return NOT_DONE_YET


class CountingTransport(StringTransport):
    def __init__(self) -> None:
        super().__init__(hostAddress=IPv4Address("TCP", "127.0.0.1", 8123))
        self.host_asked = 0

    def getHost(self) -> IPv4Address:
        self.host_asked += 1
        return super().getHost()


GET = b"GET /client/x HTTP/1.1\r\nHost: x\r\n\r\n"


class ChannelTests(SynchronousTestCase):
    """The HTTP/1.1 channel of a ServerSite streaming under /client/ (as the server program's)."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.calls = 0
        self.resource = Held()
        self.site = ServerSite(self.resource, stream_prefixes=(b"/client/",), timeout=60, reactor=self.clock)
        call_later = self.clock.callLater

        def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            self.calls += 1
            return call_later(*args, **kwargs)

        self.clock.callLater = counting  # type: ignore[method-assign]
        self.transport = CountingTransport()
        self.channel = self.site.buildProtocol(None)
        self.channel.makeConnection(self.transport)

    def answer(self) -> None:
        request = self.resource.requests[-1]
        request.setHeader(b"Content-Length", b"2")
        request.write(b"ok")
        request.finish()

    def test_local_address_asked_once(self) -> None:
        for _ in range(3):
            self.channel.dataReceived(GET)
            self.answer()
        self.assertEqual([r.host.port for r in self.resource.requests], [8123] * 3)
        self.assertEqual(self.transport.host_asked, 1)

    def test_body_streamed_on_a_kept_alive_connection(self) -> None:
        """Each request knows its own request line: the second is rendered before its body is in."""
        self.channel.dataReceived(GET)
        self.answer()
        self.channel.dataReceived(b"POST /client/y?a=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabcd")
        self.clock.advance(0)
        request = self.resource.requests[-1]
        self.assertEqual((len(self.resource.requests), request.method, request.uri),
                         (2, b"POST", b"/client/y?a=1"))
        self.assertEqual(request.body_producer.received, 4)

    def test_one_idle_timer_per_connection(self) -> None:
        for _ in range(5):
            self.channel.dataReceived(GET)
            self.clock.advance(1)
            self.answer()
        self.assertEqual((self.calls, len(self.clock.getDelayedCalls())), (1, 1))
        self.assertEqual(self.transport.value().count(b"200 OK"), 5)

    def test_idle_timeout_after_the_last_answer(self) -> None:
        self.channel.dataReceived(GET)
        self.clock.advance(100)  # a slow answer: no idle timeout while it is handled
        self.assertFalse(self.transport.disconnecting)
        self.answer()
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.channel.dataReceived(b"GET /cl")  # bytes of the next request: idle no more
        self.clock.advance(59)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)

    def test_timer_gone_when_taken_over(self) -> None:
        """A WebSocket upgrade ends twisted.web's part without connectionLost: the timer goes with it."""
        self.channel.dataReceived(GET)
        self.resource.requests[-1].channel.taken_over()
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_timer_gone_with_the_connection(self) -> None:
        self.channel.dataReceived(GET)
        self.answer()
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.clock.getDelayedCalls(), [])


class TuningFlagTests(SynchronousTestCase):
    def bad(self, argv: list[str], fragment: str) -> None:
        with self.assertRaises(usage.UsageError) as caught:
            server_tap.Options().parseOptions(["--insecure-any-client", *argv])
        self.assertIn(fragment, str(caught.exception))
        self.assertNotIn("\n", str(caught.exception))

    def test_bad_values(self) -> None:
        self.bad(["--frontdoor-idle-connections", "-1"], "--frontdoor-idle-connections")
        self.bad(["--frontdoor-idle-timeout", "0"], "--frontdoor-idle-timeout")

    def test_passed_to_the_front_door(self) -> None:
        options = server_tap.Options()
        options.parseOptions(["--insecure-any-client", "--frontdoor-idle-connections", "3",
                              "--frontdoor-idle-timeout", "7.5", "--access-log"])
        program = server_tap.makeService(options)
        pools = program.front_door.pools
        self.assertEqual((pools.max_idle, pools.idle_timeout), (3, 7.5))
        self.assertTrue(options["access-log"])


class Refuses(Resource):
    """Answers every request at once, before its body is in (as an unknown client's 500 is)."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        request.setResponseCode(500)
        return b"no such client\n"


class FakeH2Stream:
    """What StreamingRequest sees of twisted.web's H2Stream: no transport, the request's pseudo-headers."""

    transport = None
    command = b"POST"
    path = b"/client/x/y"

    def __init__(self, site: ServerSite) -> None:
        self.site = site
        self.sent: list[object] = []
        self.paused = False

    def writeHeaders(self, version: bytes, code: bytes, reason: bytes, headers: object) -> None:
        self.sent.append(int(code))

    def write(self, data: bytes) -> None:
        self.sent.append(data)

    def requestDone(self, request: object) -> None:
        self.sent.append("END_STREAM")

    def getPeer(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 1234)

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", 80)

    def isSecure(self) -> bool:
        return True

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False


class EarlyAnswerOverH2Tests(SynchronousTestCase):
    """
    Under HTTP/2 an answer given whole before the body is in is held until
    the body is in: a client answered mid-upload (curl) ends its stream short
    of its Content-Length, which h2 takes for a protocol error of the whole
    connection (GOAWAY: every stream on it lost).
    """

    def request(self, resource: Resource) -> tuple[Clock, FakeH2Stream, Any]:
        clock = Clock()
        site = ServerSite(resource, stream_prefixes=(b"/client/",), reactor=clock)
        stream = FakeH2Stream(site)
        request = site.requestFactory(stream, queued=False)
        request.requestHeaders.setRawHeaders(b"content-length", [b"10"])
        request.gotLength(10)
        request.handleContentChunk(b"abcd")
        clock.advance(0)  # rendered, as the body arrives
        return clock, stream, request

    def test_whole_answer_held_until_the_body_is_in(self) -> None:
        clock, stream, request = self.request(Refuses())
        clock.advance(0)
        self.assertEqual(stream.sent, [])  # nothing the client could stop its upload on
        self.assertFalse(stream.paused)  # the rest of the body is taken (and dropped)
        request.handleContentChunk(b"efghij")
        request.requestReceived(b"POST", b"/client/x/y", b"HTTP/2")
        self.assertEqual(stream.sent, [500, b"no such client\n", "END_STREAM"])
        self.assertEqual(request.body_producer.received, 10)

    def test_open_answer_sent_after_its_turn(self) -> None:
        """An answer still open at the end of its turn (a target answering as the upload goes on)."""
        clock, stream, request = self.request(Held())
        request.write(b"first")
        self.assertEqual(stream.sent, [])
        clock.advance(0)  # not whole in its turn: sent as it comes
        self.assertEqual(stream.sent, [200, b"first"])
        request.write(b"second")
        request.finish()
        self.assertEqual(stream.sent, [200, b"first", b"second"])  # the end waits for the body
        request.handleContentChunk(b"efghij")
        request.requestReceived(b"POST", b"/client/x/y", b"HTTP/2")
        self.assertEqual(stream.sent, [200, b"first", b"second", "END_STREAM"])

    def test_held_answer_dropped_with_the_stream(self) -> None:
        clock, stream, request = self.request(Refuses())
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertEqual(stream.sent, [])


class _Switching(Resource):
    """Holds the connection's input as the front door does for an upgrade; the test decides."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[Request] = []

    def render(self, request: Request) -> int:
        request.channel.hold_input()
        self.requests.append(request)
        return NOT_DONE_YET


class _Raw:
    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason: Failure) -> None:
        self.lost = reason


class ProtocolSwitchTests(SynchronousTestCase):
    """The channel's side of an upgrade: input held while the answer is awaited, then switched or not."""

    def setUp(self) -> None:
        self.resource = _Switching()
        site = ServerSite(self.resource, stream_prefixes=(b"/",), reactor=Clock())
        self.channel = site.channel(None, h2=False)
        self.transport = StringTransport()
        self.channel.makeConnection(self.transport)
        self.channel.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: y\r\n\r\n")
        [self.request] = self.resource.requests

    def test_held_then_switched(self) -> None:
        """Bytes sent before the switch reach the new protocol first, then the rest; its close too."""
        self.channel.dataReceived(b"early")
        raw = _Raw()
        self.transport.unregisterProducer()
        self.channel.switch_protocols(raw)
        self.channel.dataReceived(b" late")
        self.assertEqual(raw.data, b"early late")
        self.assertIsNone(self.channel._idle_call)  # no HTTP idle timeout on a switched connection
        self.channel.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(raw.lost)

    def test_holding_is_bounded(self) -> None:
        """
        Past HELD_INPUT bytes held, reading from the caller pauses; the switch
        leaves it to whoever joins the connection to the other side (who
        resumes it, then pauses it again if that side is full).
        """
        self.channel.dataReceived(b"x" * HELD_INPUT)
        self.assertEqual(self.transport.producerState, "producing")
        self.channel.dataReceived(b"y")
        self.assertEqual(self.transport.producerState, "paused")
        self.transport.unregisterProducer()
        self.channel.switch_protocols(_Raw())
        self.assertEqual(self.transport.producerState, "paused")

    def test_bytes_in_the_heads_read(self) -> None:
        """Bytes that came in the same read as the request's head are held too, first."""
        resource = _Switching()
        channel = ServerSite(resource, stream_prefixes=(b"/",), reactor=Clock()).channel(None, h2=False)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: y\r\n\r\n"
                             b"SAME-READ")
        channel.dataReceived(b" later")
        raw = _Raw()
        transport.unregisterProducer()
        channel.switch_protocols(raw)
        self.assertEqual(raw.data, b"SAME-READ later")

    def test_not_switched_nothing_held(self) -> None:
        """No switch and nothing held: the connection stays a kept-alive HTTP one."""
        self.channel.release_input()
        self.request.finish()
        self.assertFalse(self.transport.disconnecting)

    def test_not_switched_bytes_held(self) -> None:
        """No switch, but bytes came after the head: not HTTP we can read, so the connection closes."""
        self.channel.dataReceived(b"\x80\x01")
        self.channel.release_input()
        self.request.finish()
        self.assertTrue(self.transport.disconnecting)
