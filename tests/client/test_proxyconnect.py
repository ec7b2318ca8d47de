"""
The CONNECT through an HTTP proxy on StringTransport and a test clock:
the request's bytes, the proxy's answers (200 with the server's first
bytes in the same read, 407, too large, not HTTP, none at all), the
proxy out of reach, cancellation; and the tunnel's WebSocket through it,
refused by the server behind the proxy (the reason its owner is told).
"""

from __future__ import annotations

import txaio
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, DNSLookupError
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from remotedialer.client._proxyconnect import ProxyConnectEndpoint
from remotedialer.client._proxyrule import parse_proxy_url
from remotedialer.tunnel._exceptions import ProxyError
from remotedialer.tunnel._interfaces import ISessionOwner
from remotedialer.tunnel._websocket import client_factory

PROXY_ADDRESS = IPv4Address("TCP", "10.0.0.9", 3128)


class Wire(StringTransport):
    """A StringTransport that, as TCP's, lets a protocol unregister a producer it never registered."""

    def unregisterProducer(self) -> None:
        if self.producer is not None:
            super().unregisterProducer()


@implementer(IStreamClientEndpoint)
class ProxyLine:
    """The endpoint reaching the proxy: each connect is a StringTransport at once (or C{result})."""

    def __init__(self, result: defer.Deferred | None = None) -> None:
        self.transports: list[Wire] = []
        self.protocols: list[Protocol] = []
        self.result = result

    def connect(self, factory):
        if self.result is not None:
            return self.result
        protocol = factory.buildProtocol(PROXY_ADDRESS)
        transport = Wire(peerAddress=PROXY_ADDRESS)
        protocol.makeConnection(transport)
        self.transports.append(transport)
        self.protocols.append(protocol)
        return defer.succeed(protocol)


class Recorder(Protocol):
    def __init__(self) -> None:
        self.made = 0
        self.data = b""
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made += 1
        self.transport.write(b"client speaks first\r\n")

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def connectionLost(self, reason=None) -> None:
        self.lost = reason


ANSWER_200 = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 proxy\r\n\r\n"
ANSWER_407 = (b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n"
              b"Content-Length: 13\r\n\r\nlog in first.")


class HandshakeTests(SynchronousTestCase):
    def connect(self, proxy: str = "http://agent:s3cret@10.0.0.9:3128", host: str = "tunnel.example.com",
                port: int = 443, line: ProxyLine | None = None, **kwargs):
        self.clock = Clock()
        self.line = line or ProxyLine()
        self.recorder = Recorder()
        endpoint = ProxyConnectEndpoint(self.clock, self.line, parse_proxy_url(proxy), host, port, **kwargs)
        self.result = endpoint.connect(Factory.forProtocol(lambda: self.recorder))
        return self.result

    @property
    def wire(self) -> Wire:
        return self.line.transports[0]

    @property
    def proxy_side(self) -> Protocol:
        return self.line.protocols[0]

    def failure_text(self) -> str:
        failure = self.failureResultOf(self.result, ProxyError)
        return str(failure.value)

    def test_request_bytes(self) -> None:
        """The CONNECT line, Host, and Basic credentials from the proxy URL; nothing more until answered."""
        self.connect()
        self.assertEqual(self.wire.value(),
                         b"CONNECT tunnel.example.com:443 HTTP/1.1\r\n"
                         b"Host: tunnel.example.com:443\r\n"
                         b"Proxy-Authorization: Basic YWdlbnQ6czNjcmV0\r\n"
                         b"\r\n")
        self.assertNoResult(self.result)
        self.assertEqual(self.recorder.made, 0)

    def test_request_without_credentials_ipv6_target(self) -> None:
        self.connect("10.0.0.9:3128", "fd00::7", 8443)
        self.assertEqual(self.wire.value(),
                         b"CONNECT [fd00::7]:8443 HTTP/1.1\r\nHost: [fd00::7]:8443\r\n\r\n")

    def test_200_then_server_bytes_in_the_same_read(self) -> None:
        """
        The answer and the server's first bytes in one read: the caller's
        protocol is connected on the same transport, then gets those bytes,
        and everything after; and the end of the connection.
        """
        self.connect()
        self.wire.clear()
        upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x82\x01x"
        self.proxy_side.dataReceived(ANSWER_200 + upgrade)
        self.assertIs(self.successResultOf(self.result), self.recorder)
        self.assertIs(self.recorder.transport, self.wire)
        self.assertEqual(self.recorder.made, 1)
        self.assertEqual(self.wire.value(), b"client speaks first\r\n")  # written through, at once
        self.assertEqual(self.recorder.data, upgrade)
        self.proxy_side.dataReceived(b"more")
        self.assertEqual(self.recorder.data, upgrade + b"more")
        self.assertEqual(self.clock.getDelayedCalls(), [])  # the answer's timer is gone
        self.proxy_side.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.recorder.lost.check(ConnectionDone))

    @given(st.lists(st.integers(min_value=1, max_value=len(ANSWER_200) + 5), max_size=8))
    def test_answer_in_any_pieces(self, cuts: list[int]) -> None:
        """However the answer and the bytes after it are cut into reads, the same bytes come through."""
        self.connect()
        data = b"HTTP/1.0 100 Continue\r\n\r\n" + ANSWER_200 + b"after"
        points = sorted({min(c, len(data)) for c in cuts})
        for start, end in zip([0, *points], [*points, len(data)], strict=True):
            if start < end:
                self.proxy_side.dataReceived(data[start:end])
        self.successResultOf(self.result)
        self.assertEqual(self.recorder.data, b"after")

    def test_any_2xx_opens(self) -> None:
        self.connect()
        self.proxy_side.dataReceived(b"HTTP/1.0 204 No Content\r\n\r\n")
        self.successResultOf(self.result)

    def test_407(self) -> None:
        """A refusal fails the attempt with the status and reason; the connection is dropped."""
        self.connect()
        self.proxy_side.dataReceived(ANSWER_407)
        self.assertEqual(self.failure_text(),
                         "proxy 10.0.0.9:3128 answered 407 Proxy Authentication Required")
        self.assertTrue(self.wire.disconnected)
        self.assertEqual(self.recorder.made, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_refusal_reason_is_escaped(self) -> None:
        self.connect()
        self.proxy_side.dataReceived(b"HTTP/1.1 403 No \x1b[31mway\r\n\r\n")
        self.assertEqual(self.failure_text(), "proxy 10.0.0.9:3128 answered 403 No \\x1b[31mway")

    def test_answer_too_large(self) -> None:
        """An answer whose head does not end within max_answer bytes fails the attempt."""
        self.connect(max_answer=1024)
        self.proxy_side.dataReceived(b"HTTP/1.1 200 OK\r\n")
        for _ in range(4):
            self.proxy_side.dataReceived(b"X-Padding: " + b"a" * 300 + b"\r\n")
        self.assertEqual(self.failure_text(),
                         "proxy 10.0.0.9:3128 answered CONNECT with over 1024 bytes of head")
        self.assertTrue(self.wire.disconnected)
        self.proxy_side.dataReceived(b"\r\n")  # (too late: ignored)
        self.assertEqual(self.recorder.made, 0)

    def test_not_http(self) -> None:
        self.connect()
        self.proxy_side.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        self.assertEqual(self.failure_text(),
                         "proxy 10.0.0.9:3128 answered CONNECT with something that is not HTTP")

    def test_no_answer_times_out(self) -> None:
        """A proxy that says nothing: the attempt fails after the timeout, and the connection is dropped."""
        self.connect(timeout=30.0)
        self.clock.advance(29.9)
        self.assertNoResult(self.result)
        self.proxy_side.dataReceived(b"HTTP/1.1 200 Connection est")  # (half an answer is none)
        self.clock.advance(0.1)
        self.assertEqual(self.failure_text(), "proxy 10.0.0.9:3128 did not answer CONNECT within 30 s")
        self.assertTrue(self.wire.disconnected)

    def test_closed_without_answer(self) -> None:
        self.connect()
        self.proxy_side.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.failure_text(),
                         "proxy 10.0.0.9:3128 closed the connection without answering CONNECT")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_proxy_out_of_reach(self) -> None:
        self.connect(line=ProxyLine(defer.fail(ConnectionRefusedError())))
        self.assertEqual(self.failure_text(),
                         "cannot reach proxy 10.0.0.9:3128: connection to 10.0.0.9:3128 refused")
        self.connect("http://proxy.corp.example:8080", line=ProxyLine(defer.fail(DNSLookupError("x"))))
        self.assertEqual(self.failure_text(),
                         "cannot reach proxy proxy.corp.example:8080: name resolution failed for "
                         "proxy.corp.example")

    def test_cancel_while_answering(self) -> None:
        self.connect()
        self.result.cancel()
        self.failureResultOf(self.result, defer.CancelledError)
        self.assertTrue(self.wire.disconnected)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.proxy_side.dataReceived(ANSWER_200)
        self.proxy_side.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.recorder.made, 0)

    def test_cancel_while_reaching_the_proxy(self) -> None:
        cancelled = []
        reaching: defer.Deferred = defer.Deferred(cancelled.append)
        self.connect(line=ProxyLine(reaching))
        self.result.cancel()
        self.failureResultOf(self.result, defer.CancelledError)
        self.assertEqual(cancelled, [reaching])


@implementer(ISessionOwner)
class _Owner:
    def __init__(self) -> None:
        self.failed: list[str] = []

    def session_opened(self, protocol, identity):
        raise AssertionError("the upgrade was refused: no session")

    def session_closed(self, session):
        raise AssertionError("no session")

    def link_failed(self, reason: str, retry_after: float | None = None) -> None:
        self.failed.append(reason)


class WebSocketThroughProxyTests(SynchronousTestCase):
    def test_upgrade_refused_behind_the_proxy(self) -> None:
        """
        The proxy's 200 and the server's 401 to the upgrade in one read: the
        WebSocket sent its upgrade through the pipe, and its owner hears
        "server answered 401 Unauthorized".
        """
        clock = MemoryReactorClock()
        previous = txaio.config.loop
        txaio.config.loop = clock
        self.addCleanup(setattr, txaio.config, "loop", previous)
        owner = _Owner()
        factory = client_factory(owner, "ws://tunnel.example.com/connect", {"X-Tunnel-ID": "foo"}, clock)
        line = ProxyLine()
        proxy = parse_proxy_url("10.0.0.9:3128")
        endpoint = ProxyConnectEndpoint(clock, line, proxy, "tunnel.example.com", 80)
        result = endpoint.connect(factory)
        [wire], [proxy_side] = line.transports, line.protocols
        self.assertTrue(wire.value().startswith(b"CONNECT tunnel.example.com:80 HTTP/1.1\r\n"))
        wire.clear()
        proxy_side.dataReceived(ANSWER_200 + b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n\r\n")
        protocol = self.successResultOf(result)
        self.assertTrue(wire.value().startswith(b"GET /connect HTTP/1.1\r\n"), wire.value())
        self.assertIn(b"X-Tunnel-ID: foo\r\n", wire.value())
        self.assertTrue(wire.disconnected)  # Autobahn dropped it
        proxy_side.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(owner.failed, ["server answered 401 Unauthorized"])
        self.assertIsNone(protocol.session)
        for call in clock.getDelayedCalls():
            call.cancel()
