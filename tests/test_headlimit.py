"""
The front door's bound on response heads (remotedialer._headlimit): a head
at the limit passes, one byte or one header line more aborts the connection
with ResponseHeadTooLarge; the body after a head is never counted.  And end
to end: a target answering with endless header lines gets a 502 at once.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from remotedialer._headlimit import ResponseHeadTooLarge, _HeadLimitFactory


class Recorder(Protocol):
    def __init__(self) -> None:
        self.data = b""
        self.reason = None

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.reason = reason


def head(lines: int, pad: int = 0) -> bytes:
    return b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(lines - 1)) + \
        b"X-Last: " + b"p" * pad + b"\r\n\r\n"


class HeadLimitTests(SynchronousTestCase):
    def connect(self, head_bytes: int = 1000, max_headers: int = 10):
        recorder = Recorder()
        factory = _HeadLimitFactory(Factory.forProtocol(lambda: recorder), head_bytes, max_headers)
        wrapper = factory.buildProtocol(None)
        transport = StringTransport()
        wrapper.makeConnection(transport)
        return wrapper, transport, recorder

    def test_head_at_byte_limit(self) -> None:
        data = head(3, pad=0)
        size = len(data)
        wrapper, transport, recorder = self.connect(head_bytes=size)
        for i in range(0, len(data), 7):
            wrapper.dataReceived(data[i:i + 7])
        wrapper.dataReceived(b"body" * 10_000)  # the body is not counted
        self.assertFalse(transport.disconnecting)
        self.assertEqual(recorder.data, data + b"body" * 10_000)

        wrapper, transport, recorder = self.connect(head_bytes=size - 1)
        wrapper.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        wrapper.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(recorder.reason.check(ResponseHeadTooLarge))
        self.assertIn(f"over {size - 1} bytes", str(recorder.reason.value))

    def test_header_count(self) -> None:
        wrapper, transport, recorder = self.connect(head_bytes=100_000, max_headers=10)
        wrapper.dataReceived(head(10))
        self.assertFalse(transport.disconnecting)
        wrapper, transport, recorder = self.connect(head_bytes=100_000, max_headers=10)
        wrapper.dataReceived(head(11))
        self.assertTrue(transport.disconnecting)

    def test_endless_head_cut_early(self) -> None:
        """Header lines without end are cut as soon as the limit passes; nothing more is taken."""
        wrapper, transport, recorder = self.connect(head_bytes=1000, max_headers=1000)
        wrapper.dataReceived(b"HTTP/1.1 200 OK\r\n")
        sent = 0
        while not transport.disconnecting and sent < 100_000:
            wrapper.dataReceived(b"X-A: " + b"a" * 95 + b"\r\n")
            sent += 102
        self.assertLess(sent, 1200)
        self.assertLess(len(recorder.data), 1000)

    def test_rearmed_for_each_request(self) -> None:
        """begin() (a kept-alive connection handed out again) counts the next response's head."""
        wrapper, transport, recorder = self.connect(head_bytes=100_000, max_headers=10)
        wrapper.begin()
        wrapper.dataReceived(head(10) + b"body")
        self.assertFalse(transport.disconnecting)
        wrapper.dataReceived(head(11))  # not a head: the first response's body, not counted
        self.assertFalse(transport.disconnecting)
        wrapper.begin()
        self.assertEqual(wrapper.requests, 2)
        wrapper.dataReceived(head(11))
        self.assertTrue(transport.disconnecting)

    def test_informational_head_then_counted_head(self) -> None:
        """After a 1xx head another head follows: it is counted too, in the same read or a later one."""
        for split in (False, True):
            wrapper, transport, recorder = self.connect(head_bytes=100_000, max_headers=10)
            informational = b"HTTP/1.1 100 Continue\r\n\r\n"
            if split:
                wrapper.dataReceived(informational)
                wrapper.dataReceived(head(11))
            else:
                wrapper.dataReceived(informational + head(11))
            self.assertTrue(transport.disconnecting, split)
            self.assertEqual(recorder.data, informational)

            wrapper, transport, recorder = self.connect(head_bytes=100_000, max_headers=10)
            wrapper.dataReceived(informational + head(10) + b"body")
            self.assertFalse(transport.disconnecting)
            self.assertEqual(recorder.data, informational + head(10) + b"body")
