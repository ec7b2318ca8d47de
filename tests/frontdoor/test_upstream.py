"""
The front door's HTTP/1.1 client connection (remotedialer.frontdoor._upstream) over a
StringTransport: what it sends, how each response reaches its handler, when
the connection goes back to its pool and when it is closed instead.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.frontdoor._headlimit import ResponseHeadTooLarge
from remotedialer.frontdoor._upstream import BadResponse, RequestNotSendable, UpstreamConnection

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\nhello"


class Pool:
    def __init__(self) -> None:
        self.released: list[UpstreamConnection] = []
        self.lost: list[UpstreamConnection] = []

    def release(self, connection: UpstreamConnection) -> None:
        self.released.append(connection)

    def connection_lost(self, connection: UpstreamConnection) -> None:
        self.lost.append(connection)


class Handler:
    def __init__(self, connection: UpstreamConnection | None = None, pause: bool = False) -> None:
        self.head = None
        self.body = b""
        self.ended = False
        self.failed: tuple[Failure, bool] | None = None
        self.pending = False
        self._connection = connection
        self._pause = pause

    def response_started(self, code, reason, headers) -> None:
        self.head = (code, reason, list(headers))
        if self._pause:
            self._connection.pause_reading()

    def body_received(self, data: bytes) -> None:
        self.body += data

    def body_pending(self) -> None:
        self.pending = True

    def response_ended(self) -> None:
        self.ended = True

    def exchange_failed(self, reason: Failure, answered: bool) -> None:
        self.failed = (reason, answered)

    def protocols_switched(self, reason, headers, connection) -> None:
        self.switched = (reason, list(headers), connection)
        connection.switch(self.raw)


class Raw(Protocol):
    """Where a switched connection's bytes go."""

    def __init__(self) -> None:
        self.data = b""
        self.lost: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


class UpstreamConnectionTests(SynchronousTestCase):
    def connect(self, head_bytes: int = 1000, max_headers: int = 10):
        self.pool = Pool()
        connection = UpstreamConnection(self.pool, ("http", "t", 80), head_bytes, max_headers)
        transport = StringTransport()
        connection.makeConnection(transport)
        return connection, transport

    def get(self, connection, handler=None, method=b"GET"):
        handler = handler or Handler(connection)
        connection.request(handler, method, b"/x?y=1", [(b"Host", b"t")], None)
        return handler

    def test_request_and_kept_alive_response(self) -> None:
        connection, transport = self.connect()
        handler = self.get(connection)
        self.assertEqual(transport.value(), b"GET /x?y=1 HTTP/1.1\r\nHost: t\r\n\r\n")
        connection.dataReceived(OK[:30])
        self.assertFalse(handler.pending)  # still in the head
        connection.dataReceived(OK[30:-2])
        self.assertTrue(handler.pending)
        connection.dataReceived(OK[-2:])
        headers = [(b"content-length", b"5"), (b"x-a", b"1"), (b"x-a", b"2")]
        self.assertEqual(handler.head, (200, b"OK", headers))
        self.assertEqual((handler.body, handler.ended, handler.failed), (b"hello", True, None))
        self.assertEqual(self.pool.released, [connection])
        self.assertFalse(transport.disconnecting)
        transport.clear()
        second = self.get(connection)
        self.assertEqual(connection.requests, 2)
        connection.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n" + OK)
        self.assertEqual((second.head[0], second.body, second.ended), (200, b"hello", True))
        self.assertFalse(second.pending)  # it came whole

    def test_paused_reader_resumed_for_the_next_request(self) -> None:
        """A response ending while its reader has paused the transport: the connection reads again."""
        connection, transport = self.connect()
        handler = self.get(connection, Handler(pause=True))
        handler._connection = connection
        connection.dataReceived(OK)
        self.assertTrue(handler.ended)
        self.assertEqual((self.pool.released, transport.producerState), ([connection], "producing"))

    def test_close_after_response(self) -> None:
        """Connection: close from the target, or bytes past the response: closed, not kept."""
        for answer in (OK.replace(b"X-A: 1", b"Connection: close"), OK + b"HTTP/1.1 200"):
            connection, transport = self.connect()
            handler = self.get(connection)
            connection.dataReceived(answer)
            self.assertTrue(handler.ended)
            self.assertEqual(self.pool.released, [])
            self.assertTrue(transport.disconnecting)

    def test_read_until_close(self) -> None:
        """A body without a length ends with a clean close; an unclean one fails it."""
        for reason, complete in ((ConnectionDone(), True), (ConnectionLost("cut"), False)):
            connection, transport = self.connect()
            handler = self.get(connection)
            connection.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nsome")
            connection.connectionLost(Failure(reason))
            self.assertEqual((handler.body, handler.ended), (b"some", complete))
            if not complete:
                self.assertEqual(handler.failed[1], True)
                self.assertIsInstance(handler.failed[0].value, ConnectionLost)
            self.assertEqual(self.pool.lost, [connection])

    def test_closed_before_any_answer(self) -> None:
        """Closed before any byte of the response: failed, not answered (so a retry may ask again)."""
        connection, transport = self.connect()
        handler = self.get(connection)
        connection.connectionLost(Failure(ConnectionDone()))
        reason, answered = handler.failed
        self.assertFalse(answered)
        self.assertIsInstance(reason.value, ConnectionDone)

    def test_head_over_the_limit(self) -> None:
        connection, transport = self.connect(max_headers=2)
        handler = self.get(connection)
        connection.dataReceived(OK)
        self.assertTrue(transport.disconnecting)
        self.assertIsNone(handler.head)
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertIsInstance(handler.failed[0].value, ResponseHeadTooLarge)

    def test_not_http(self) -> None:
        for answer in (b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"):
            connection, transport = self.connect()
            handler = self.get(connection)
            connection.dataReceived(answer)
            self.assertTrue(transport.disconnecting, answer)
            connection.connectionLost(Failure(ConnectionLost()))
            self.assertIsInstance(handler.failed[0].value, BadResponse)

    def test_abandoned(self) -> None:
        """An exchange that gives up hears nothing more; later bytes close the connection."""
        connection, transport = self.connect()
        handler = self.get(connection)
        connection.abandon()
        connection.dataReceived(OK)
        connection.connectionLost(Failure(ConnectionLost()))
        self.assertEqual((handler.head, handler.failed, self.pool.released), (None, None, []))

    def test_head_request_has_no_body(self) -> None:
        connection, transport = self.connect()
        handler = self.get(connection, method=b"HEAD")
        connection.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual((handler.body, handler.ended, self.pool.released), (b"", True, [connection]))

    def test_request_h11_refuses(self) -> None:
        """A request h11 will not write (twisted.web lets few through): refused, the connection closed."""
        connection, transport = self.connect()
        with self.assertRaises(RequestNotSendable):
            connection.request(Handler(), b"G(T", b"/", [(b"Host", b"t")], None)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_refusal_text_has_no_repr(self) -> None:
        """
        h11's refusal quotes the offending bytes as a Python repr (a header
        value, maybe a secret): the reason our caller reads is our own sentence.
        """
        connection, transport = self.connect()
        with self.assertRaises(RequestNotSendable) as caught:
            connection.request(Handler(), b"GET", b"/", [(b"Host", b"t"), (b"X-Token", b"s3cret\x0bx")], None)
        text = str(caught.exception)
        self.assertNotIn("b'", text)
        self.assertNotIn("s3cret", text)
        self.assertEqual(text, "its method, target or a header is not valid HTTP/1.1")


class UpstreamSwitchTests(SynchronousTestCase):
    """A 101 to an upgrade request: the connection leaves its pool and becomes a byte pipe."""

    def setUp(self) -> None:
        self.pool = Pool()
        self.connection = UpstreamConnection(self.pool, ("http", "t", 80), 1000, 10)
        self.transport = StringTransport()
        self.connection.makeConnection(self.transport)
        self.handler = Handler(self.connection)
        self.handler.raw = Raw()

    def upgrade(self) -> None:
        self.connection.request(self.handler, b"GET", b"/ws", [(b"Host", b"t"), (b"Connection", b"Upgrade"),
                                                               (b"Upgrade", b"websocket")], None)

    def test_switched(self) -> None:
        """The 101's headers go to the handler; bytes after it (same read, later ones) to the new protocol."""
        self.upgrade()
        self.connection.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                     b"Connection: Upgrade\r\n\r\n\x81\x02hi")
        reason, headers, connection = self.handler.switched
        self.assertEqual((reason, connection), (b"Switching Protocols", self.connection))
        self.assertIn((b"upgrade", b"websocket"), headers)
        self.assertEqual(self.pool.lost, [self.connection])  # no longer the pool's
        self.connection.dataReceived(b"\x81\x03you")
        self.assertEqual(self.handler.raw.data, b"\x81\x02hi\x81\x03you")
        self.assertIsNone(self.handler.head)
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertIsNotNone(self.handler.raw.lost)
        self.assertIsNone(self.handler.failed)
        self.assertEqual(self.pool.lost, [self.connection])  # (said once)

    def test_refused_upgrade_is_an_ordinary_response(self) -> None:
        self.upgrade()
        self.connection.dataReceived(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 2\r\n\r\nno")
        self.assertEqual((self.handler.head[0], self.handler.body, self.handler.ended), (426, b"no", True))
        self.assertFalse(hasattr(self.handler, "switched"))

    def test_101_without_an_upgrade_asked(self) -> None:
        """A 101 nobody asked for is not HTTP as h11 reads it: a bad answer, not a switch."""
        self.connection.request(self.handler, b"GET", b"/", [(b"Host", b"t")], None)
        self.connection.dataReceived(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n")
        self.connection.connectionLost(Failure(ConnectionDone()))
        self.assertFalse(hasattr(self.handler, "switched"))
        self.assertTrue(self.handler.failed[0].check(BadResponse))
