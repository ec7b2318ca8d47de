"""
The server program's site (remotedialer._site) in memory: the access log
is written only when asked for; a streamed body (RequestBody) goes to its
consumer as it arrives, is held (boundedly) before the consumer starts or
while it is paused, and pauses reading from the caller while it is held;
the server program's front-door tuning flags.
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource

from remotedialer._site import HELD_BODY, RequestBody, ServerSite
from remotedialer._tap import server as server_tap


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
