"""
Protocol upgrades through the front door, over loopback, as Go users get
them from httputil.ReverseProxy: an HTTP/1.1 request with C{Connection:
Upgrade} keeps its C{Upgrade}; the target's 101 goes back with its
headers; then bytes flow both ways through the tunnel stream, with
back-pressure, and a close on either side ends the other.  A WebSocket
(Autobahn at both ends: messages, one of 1 MiB, closes from each side), a
raw C{SPDY/3.1} upgrade (kubectl's exec and port-forward before
WebSockets), an ordinary answer to an upgrade request, and an upgrade on a
site that cannot switch protocols.
"""

from __future__ import annotations

import hashlib

from autobahn.twisted.websocket import (
    WebSocketClientFactory,
    WebSocketClientProtocol,
    WebSocketServerFactory,
    WebSocketServerProtocol,
)
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer import FrontDoor, Server, ServerSite, TunnelClient, allow_all
from tests.support import eventually, listen_tcp

MIB = 1024 * 1024


class _Echo(WebSocketServerProtocol):
    """A WebSocket target: echoes every message; C{close-me} makes it close (4001)."""

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if payload == b"close-me":
            self.sendClose(4001, "asked to")
            return
        self.sendMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.closes.append((wasClean, code, reason))


class _Caller(WebSocketClientProtocol):
    """A WebSocket caller: its messages and its close, as Deferreds."""

    def onConnect(self, response) -> None:
        self.factory.response = response

    def onOpen(self) -> None:
        self.messages: defer.DeferredQueue = defer.DeferredQueue()
        self.factory.opened.callback(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.messages.put(payload)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if not self.factory.opened.called:
            self.factory.opened.errback(ConnectionError(f"not opened: {code} {reason}"))
        self.factory.closed.callback((wasClean, code, reason))


class _RawTarget(Protocol):
    """
    A target switching to C{SPDY/3.1} by hand: reads the head, answers 101
    (with C{greeting} in the same write, bytes of the new protocol), then
    echoes.  Records the request head.
    """

    answer = (b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n"
              b"Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: portforward.k8s.io\r\n\r\n")

    def __init__(self, record: list[bytes], greeting: bytes = b"") -> None:
        self._record = record
        self._greeting = greeting
        self._head = b""
        self._switched = False
        self.lost = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        if self._switched:
            self.transport.write(data)
            return
        self._head += data
        if b"\r\n\r\n" not in self._head:
            return
        head, _, rest = self._head.partition(b"\r\n\r\n")
        self._record.append(head)
        self._switched = True
        self.transport.write(self.answer + self._greeting + rest)

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class _RawCaller(Protocol):
    """Sends an upgrade request by hand, then bytes; collects the head and what follows."""

    def __init__(self, request: bytes) -> None:
        self._request = request
        self.head = b""
        self.after = b""
        self.switched = defer.Deferred()
        self.lost = defer.Deferred()
        self._waiting: tuple[int, defer.Deferred] | None = None

    def connectionMade(self) -> None:
        self.transport.write(self._request)

    def dataReceived(self, data: bytes) -> None:
        if not self.switched.called:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            self.head, _, data = self.head.partition(b"\r\n\r\n")
            self.switched.callback(self.head)
        self.after += data
        self._check()

    def received(self, size: int) -> defer.Deferred:
        """Fires once C{size} bytes have come after the head."""
        d: defer.Deferred = defer.Deferred()
        self._waiting = (size, d)
        self._check()
        return d

    def _check(self) -> None:
        if self._waiting is not None and len(self.after) >= self._waiting[0]:
            d = self._waiting[1]
            self._waiting = None
            d.callback(self.after)

    def connectionLost(self, reason=None) -> None:
        self.lost.callback(None)


class _Refuses(Resource):
    """A target that will not switch: 426 and a body."""

    isLeaf = True

    def render(self, request) -> bytes:
        request.setResponseCode(426)
        request.setHeader(b"Upgrade", b"websocket")
        return b"upgrade refused by the target\n"


class FrontDoorUpgradeTests(TestCase):
    timeout = 60

    async def _setup(self, streaming_site: bool = True) -> None:
        self.server = Server(reactor=reactor)
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        root.putChild(b"client", FrontDoor(self.server))
        site = ServerSite(root, stream_prefixes=(b"/client/",)) if streaming_site else Site(root)
        self.front = await listen_tcp(site, self)
        self.client = TunnelClient(f"ws://127.0.0.1:{self.front.getHost().port}/connect",
                                   headers={"X-Tunnel-ID": "foo"}, reactor=reactor,
                                   connect_authorizer=allow_all, client_key="foo")
        self.client.startService()
        self.addCleanup(self.client.stopService)
        await self.client.when_connected()
        await eventually(lambda: self.server.has_session("foo"))

    def _url(self, scheme: str, target_port: int, path: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.front.getHost().port}/client/foo/http/127.0.0.1:{target_port}/{path}"

    async def _websocket_target(self) -> WebSocketServerFactory:
        factory = WebSocketServerFactory()
        factory.protocol = _Echo
        factory.closes = []
        self.ws_target = await listen_tcp(factory, self)
        return factory

    async def _websocket_caller(self, protocols: list[str] | None = None) -> _Caller:
        factory = WebSocketClientFactory(self._url("ws", self.ws_target.getHost().port),
                                         protocols=protocols or [])
        factory.protocol = _Caller
        factory.opened = defer.Deferred()
        factory.closed = defer.Deferred()
        factory.setProtocolOptions(maxMessagePayloadSize=4 * MIB, maxFramePayloadSize=4 * MIB)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port)
        await endpoint.connect(factory)
        caller = await factory.opened
        self.addCleanup(lambda: caller.transport.abortConnection())
        return caller

    async def test_websocket_messages_both_ways(self) -> None:
        """Messages (one of 1 MiB) echo through; the subprotocol and the target's 101 headers come back."""
        await self._setup()
        target = await self._websocket_target()
        target.setProtocolOptions(maxMessagePayloadSize=4 * MIB, maxFramePayloadSize=4 * MIB)

        def choose(request) -> str | None:
            return "v5.channel.k8s.io" if "v5.channel.k8s.io" in request.protocols else None

        _Echo.onConnect = lambda self, request: choose(request)
        self.addCleanup(lambda: delattr(_Echo, "onConnect"))
        caller = await self._websocket_caller(["v5.channel.k8s.io", "v4.channel.k8s.io"])
        self.assertEqual(caller.factory.response.protocol, "v5.channel.k8s.io")
        caller.sendMessage(b"hello", isBinary=True)
        self.assertEqual(await caller.messages.get(), b"hello")
        big = hashlib.sha256(b"x").digest() * (MIB // 32)
        caller.sendMessage(big, isBinary=True)
        echoed = await caller.messages.get()
        self.assertEqual(hashlib.sha256(echoed).hexdigest(), hashlib.sha256(big).hexdigest())

    async def test_websocket_caller_closes(self) -> None:
        """A close from the caller reaches the target, cleanly, with its code."""
        await self._setup()
        target = await self._websocket_target()
        caller = await self._websocket_caller()
        caller.sendClose(4000, "bye")
        was_clean, code, _reason = await caller.factory.closed
        self.assertTrue(was_clean)
        await eventually(lambda: target.closes)
        self.assertEqual(target.closes[0][1], 4000)

    async def test_websocket_target_closes(self) -> None:
        """A close from the target reaches the caller, cleanly, with its code and reason."""
        await self._setup()
        await self._websocket_target()
        caller = await self._websocket_caller()
        caller.sendMessage(b"close-me", isBinary=True)
        was_clean, code, reason = await caller.factory.closed
        self.assertEqual((was_clean, code, reason), (True, 4001, "asked to"))

    async def _raw_target(self, greeting: bytes = b"", answer: bytes | None = None,
                          ) -> tuple[int, list[bytes], list[_RawTarget]]:
        record: list[bytes] = []
        targets: list[_RawTarget] = []

        def build() -> _RawTarget:
            protocol = _RawTarget(record, greeting)
            if answer is not None:
                protocol.answer = answer
            targets.append(protocol)
            return protocol

        port = await listen_tcp(Factory.forProtocol(build), self)
        return port.getHost().port, record, targets

    async def _raw_caller(self, target_port: int, extra: bytes = b"") -> _RawCaller:
        request = (f"POST /client/foo/http/127.0.0.1:{target_port}/api/v1/namespaces/default/pods/demo/"
                   f"portforward HTTP/1.1\r\nHost: front\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
                   f"X-Stream-Protocol-Version: portforward.k8s.io\r\nAuthorization: Bearer x\r\n"
                   f"Content-Length: 0\r\n\r\n").encode() + extra
        caller = _RawCaller(request)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: caller))
        self.addCleanup(lambda: caller.transport.abortConnection())
        return caller

    async def test_spdy_upgrade(self) -> None:
        """
        A raw SPDY/3.1 upgrade: the target gets Upgrade and Connection: Upgrade
        (the caller's credentials dropped, as for any front-door request), the
        caller gets the 101 with the target's headers, the target's first
        bytes (sent with its 101) and then an echo of 4 MiB, byte for byte.
        """
        await self._setup()
        port, record, targets = await self._raw_target(greeting=b"GREETING")
        caller = await self._raw_caller(port)
        head = await caller.switched
        status, *lines = head.split(b"\r\n")
        self.assertEqual(status, b"HTTP/1.1 101 Switching Protocols", caller.after)
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(b":") for line in lines)}
        self.assertEqual(headers[b"upgrade"], b"SPDY/3.1")
        self.assertEqual(headers[b"connection"], b"Upgrade")
        self.assertEqual(headers[b"x-stream-protocol-version"], b"portforward.k8s.io")
        sent = record[0].lower()
        self.assertIn(b"\r\nupgrade: spdy/3.1", sent)
        self.assertIn(b"\r\nconnection: upgrade", sent)
        self.assertNotIn(b"authorization", sent)
        self.assertEqual(await caller.received(8), b"GREETING")
        payload = hashlib.sha256(b"y").digest() * (4 * MIB // 32)
        caller.transport.write(payload)
        echoed = await caller.received(8 + len(payload))
        self.assertEqual(hashlib.sha256(echoed[8:]).digest(), hashlib.sha256(payload).digest())

    async def test_caller_close_ends_target(self) -> None:
        """The caller hanging up closes the target's connection, through the tunnel."""
        await self._setup()
        port, _record, targets = await self._raw_target()
        caller = await self._raw_caller(port)
        await caller.switched
        caller.transport.loseConnection()
        await eventually(lambda: targets and targets[0].lost.called)

    async def test_target_close_ends_caller(self) -> None:
        """The target hanging up closes the caller's connection."""
        await self._setup()
        port, _record, targets = await self._raw_target()
        caller = await self._raw_caller(port)
        await caller.switched
        await eventually(lambda: targets)
        targets[0].transport.loseConnection()
        await caller.lost

    async def test_no_switch_is_an_ordinary_answer(self) -> None:
        """A target answering 426 to an upgrade: the caller gets the 426 and its body."""
        await self._setup()
        target = await listen_tcp(Site(_Refuses()), self)
        caller = await self._raw_caller(target.getHost().port)
        head = await caller.switched
        self.assertTrue(head.startswith(b"HTTP/1.1 426 "), head)
        await eventually(lambda: b"upgrade refused by the target" in caller.after)
        # (the connection stays an HTTP one: another request could follow)

    async def test_site_that_cannot_switch(self) -> None:
        """
        Under a plain twisted.web Site (no protocol switch possible), an
        upgrade request goes to the target as an ordinary request (Upgrade
        dropped, as a hop-by-hop header): the target does not switch.
        """
        await self._setup(streaming_site=False)
        port, record, _targets = await self._raw_target()
        await self._raw_caller(port)
        await eventually(lambda: record)
        self.assertNotIn(b"upgrade:", record[0].lower())

    async def test_switch_to_another_protocol(self) -> None:
        """A 101 to another protocol than asked is no answer (as Go's ReverseProxy): 502, one line."""
        await self._setup()
        port, _record, _targets = await self._raw_target(
            answer=b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: evil\r\n\r\n")
        caller = await self._raw_caller(port)
        head = await caller.switched
        self.assertTrue(head.startswith(b"HTTP/1.1 502 "), head)
        await eventually(lambda: b"switched to another protocol than asked" in caller.after)

    async def test_connection_options_are_this_hops(self) -> None:
        """
        Headers a Connection header names are this hop's, both ways (RFC 9110
        7.6.1): not passed to the target, nor from it; and an answer without a
        Content-Type gets none (not twisted.web's text/html).
        """
        await self._setup()
        port, record, _targets = await self._raw_target(
            answer=b"HTTP/1.1 200 OK\r\nConnection: X-Internal\r\nX-Internal: 1\r\nX-Kept: 2\r\n"
                   b"Content-Length: 2\r\n\r\nok")
        request = (f"GET /client/foo/http/127.0.0.1:{port}/x HTTP/1.1\r\nHost: front\r\n"
                   f"Connection: keep-alive, X-Secret\r\nX-Secret: s\r\nX-Other: o\r\n\r\n").encode()
        caller = _RawCaller(request)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.front.getHost().port)
        await endpoint.connect(Factory.forProtocol(lambda: caller))
        self.addCleanup(lambda: caller.transport.abortConnection())
        head = (await caller.switched).lower()
        self.assertTrue(head.startswith(b"http/1.1 200 "), head)
        self.assertIn(b"\r\nx-kept: 2", head)
        self.assertNotIn(b"x-internal", head)
        self.assertNotIn(b"content-type", head)
        sent = record[0].lower()
        self.assertIn(b"\r\nx-other: o", sent)
        self.assertNotIn(b"x-secret", sent)
