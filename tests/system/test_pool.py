"""
The front door's kept-alive connections (remotedialer.frontdoor._pool), end to end on
loopback: a connection is reused for the next request to the same client
and target, never for another client's; every response head on a reused
connection is bounded; a client's reconnect retires its pool, so the old
session can drain; a kept-alive connection the target closed under a new
request is retried on a fresh one.
"""

from __future__ import annotations

import treq
from twisted.internet import reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer import Server, TunnelClient, allow_all
from remotedialer.frontdoor._resource import FrontDoor
from tests.support import eventually, listen_tcp
from tests.system.test_frontdoor import run


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request):
        return b"hello"


class ManyHeaders(Resource):
    isLeaf = True

    def render_GET(self, request):
        for i in range(20):
            request.setHeader(f"X-H{i}".encode(), b"v")
        return b"many"


class CloseOnSecond(Protocol):
    """Answers the first request of a connection; closes it, unanswered, on the second."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.seen = b""

    def dataReceived(self, data: bytes) -> None:
        self.seen += data
        requests = self.seen.count(b"\r\n\r\n")
        if requests == 1 and data.endswith(b"\r\n\r\n"):
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        elif requests >= 2:
            self.transport.loseConnection()


class PoolTests(TestCase):
    timeout = 60

    async def _setup(self, **front_door_kwargs):
        self.server = Server(reactor=reactor)
        root = Resource()
        root.putChild(b"connect", self.server.resource)
        self.front_door = FrontDoor(self.server, **front_door_kwargs)
        root.putChild(b"client", self.front_door)
        self.front = await listen_tcp(Site(root), self)
        target_root = Resource()
        target_root.putChild(b"hello", Hello())
        target_root.putChild(b"many", ManyHeaders())
        self.target_factory = WrappingFactory(Site(target_root))
        self.target = await listen_tcp(self.target_factory, self)
        self.clients = {}
        for key in ("foo", "bar"):
            await self._connect(key)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    async def _connect(self, key: str) -> TunnelClient:
        client = TunnelClient(f"ws://127.0.0.1:{self.front.getHost().port}/connect",
                              headers={"X-Tunnel-ID": key}, reactor=reactor,
                              connect_authorizer=allow_all, client_key=key)
        client.startService()
        self.addCleanup(client.stopService)
        await client.when_connected()
        await eventually(lambda: self.server.has_session(key))
        self.clients[key] = client
        return client

    def url(self, key: str, path: str, port: int | None = None) -> str:
        port = port if port is not None else self.target.getHost().port
        return f"http://127.0.0.1:{self.front.getHost().port}/client/{key}/http/127.0.0.1:{port}/{path}"

    async def get(self, key: str, path: str, port: int | None = None):
        response = await treq.get(self.url(key, path, port), pool=self.pool)
        return response, await response.content()

    def test_connection_reused(self):
        """Requests to one client and target share one tunnel stream and one target connection."""

        async def go():
            await self._setup()
            for _ in range(3):
                response, body = await self.get("foo", "hello")
                self.assertEqual((response.code, body), (200, b"hello"))
            self.assertEqual(len(self.target_factory.protocols), 1)
            self.assertEqual(len(self.clients["foo"].session.streams), 1)

        return run(go())

    def test_no_reuse_when_off(self):
        """idle_connections=0: a new stream (and target connection) for every request."""

        async def go():
            await self._setup(idle_connections=0)
            for _ in range(2):
                response, body = await self.get("foo", "hello")
                self.assertEqual(body, b"hello")
            await eventually(lambda: not self.clients["foo"].session.streams)

        return run(go())

    def test_one_pool_per_client(self):
        """The same host:port behind two clients: each request goes through its own client's tunnel."""

        async def go():
            await self._setup()
            await self.get("foo", "hello")
            self.assertEqual(len(self.clients["bar"].session.streams), 0)
            response, body = await self.get("bar", "hello")
            self.assertEqual(body, b"hello")
            self.assertEqual(len(self.clients["bar"].session.streams), 1)
            self.assertEqual(len(self.clients["foo"].session.streams), 1)
            self.assertEqual(len(self.front_door.pools), 2)

        return run(go())

    def test_head_limit_on_reused_connection(self):
        """A response head over the limit is refused on a kept-alive connection too."""

        async def go():
            await self._setup(response_headers=10)
            response, body = await self.get("foo", "hello")
            self.assertEqual(response.code, 200)
            response, body = await self.get("foo", "many")
            self.assertEqual(response.code, 502, body)
            self.assertIn(b"response head is over", body)
            self.assertEqual(len(self.target_factory.protocols), 1)  # it was the reused one

        return run(go())

    def test_reconnect_retires_pool(self):
        """A new session of a client: the idle connections on the old one are closed (it can drain)."""

        async def go():
            await self._setup()
            await self.get("foo", "hello")
            old = self.server.sessions.local_session("foo")
            self.assertEqual(len(old.streams), 1)  # idle, kept alive
            await self._connect("foo")
            new = self.server.sessions.local_session("foo")
            self.assertIsNot(new, old)
            await eventually(lambda: not old.streams, timeout=5)
            response, body = await self.get("foo", "hello")
            self.assertEqual(body, b"hello")
            self.assertEqual((len(old.streams), len(new.streams)), (0, 1))

        return run(go())

    def test_closed_connection_retried(self):
        """A kept-alive connection the target closes under the next request: asked again, on a new one."""

        async def go():
            await self._setup()
            factory = Factory.forProtocol(CloseOnSecond)
            factory.connections = 0
            port = (await listen_tcp(factory, self)).getHost().port
            for _ in range(3):
                response, body = await self.get("foo", "x", port)
                self.assertEqual((response.code, body), (200, b"ok"))
            self.assertEqual(factory.connections, 3)

        return run(go())


class PoolUnitTests(SynchronousTestCase):
    """One pool's bookkeeping, on a Clock, with connections over StringTransports."""

    target = ("http", "10.0.0.1", 80)

    def pools(self, **kwargs):
        from twisted.internet.task import Clock

        from remotedialer.frontdoor._pool import ClientPools

        self.clock = Clock()
        return ClientPools(self.clock, None, **kwargs)

    def connection(self, pool):
        from twisted.internet.testing import StringTransport

        from remotedialer.frontdoor._upstream import UpstreamConnection

        connection = UpstreamConnection(pool, self.target, 1000, 10)
        connection.makeConnection(StringTransport())
        pool.connections.add(connection)
        return connection

    def test_failed_dial_leaves_no_pool(self) -> None:
        """
        A pool whose first dial fails (the client is not connected) is not
        kept: requests for a thousand unknown names leave no pool behind.
        """
        from twisted.internet.defer import fail
        from twisted.internet.error import ConnectError

        class Refusing:
            def connect(self, factory):
                return fail(ConnectError("client k is not connected"))

        pools = self.pools()
        for i in range(1000):
            d = pools.pool_for(f"k{i}").connect(self.target, Refusing(), 1000, 10)
            self.failureResultOf(d, ConnectError)
        self.assertEqual(len(pools), 0)

    def test_most_recent_first_and_bounded(self) -> None:
        """The most recently idle connection is handed out first; past max_idle the oldest is closed."""
        pool = self.pools(max_idle=2).pool_for("k")
        a, b, c = (self.connection(pool) for _ in range(3))
        for connection in (a, b, c):
            pool.release(connection)
        self.assertTrue(a.transport.disconnecting)
        self.assertFalse(b.transport.disconnecting or c.transport.disconnecting)
        self.assertIs(pool.take(self.target), c)
        self.assertIs(pool.take(self.target), b)
        self.assertIsNone(pool.take(self.target))
        self.assertIsNone(pool.take(("https", "10.0.0.1", 80)))

    def test_idle_timeout(self) -> None:
        """A connection idle for idle_timeout is closed (one timer for the pool); a busy one is not."""
        pool = self.pools(idle_timeout=10).pool_for("k")
        old, newer, busy = (self.connection(pool) for _ in range(3))
        pool.release(old)
        self.clock.advance(6)
        pool.release(newer)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)
        self.clock.advance(4)
        self.assertTrue(old.transport.disconnecting)
        self.assertFalse(newer.transport.disconnecting)
        self.clock.advance(6)
        self.assertTrue(newer.transport.disconnecting)
        self.assertFalse(busy.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_not_persistent(self) -> None:
        """max_idle 0: a connection is closed when its response is done."""
        pool = self.pools(max_idle=0).pool_for("k")
        connection = self.connection(pool)
        pool.release(connection)
        self.assertTrue(connection.transport.disconnecting)
        self.assertIsNone(pool.take(self.target))

    def test_retired_closes_idle_and_later_released(self) -> None:
        pools = self.pools()
        pool = pools.pool_for("k")
        idle, busy = self.connection(pool), self.connection(pool)
        pool.release(idle)
        pools.retire("k")
        self.assertTrue(idle.transport.disconnecting)
        self.assertFalse(busy.transport.disconnecting)
        pool.release(busy)
        self.assertTrue(busy.transport.disconnecting)
        self.assertIsNot(pools.pool_for("k"), pool)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_lost_connection_leaves_the_pool(self) -> None:
        """An idle connection whose stream ends is not handed out; the pool goes with its last connection."""
        pools = self.pools()
        pool = pools.pool_for("k")
        connection = self.connection(pool)
        pool.release(connection)
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(pool.take(self.target))
        self.assertEqual((len(pools), self.clock.getDelayedCalls()), (0, []))

    def test_pool_kept_while_a_dial_is_under_way(self) -> None:
        """
        Two requests dial at once; the first connection ends before the
        second dial completes: the pool is not forgotten while that dial is
        under way, so its connection, once idle, is handed out to the next
        request and closed when the client's pool is retired (a forgotten
        pool's idle connection would be out of everyone's reach).
        """
        from twisted.internet.defer import Deferred
        from twisted.internet.testing import StringTransport

        dials: list[tuple[Deferred, object]] = []

        class Pending:
            def connect(self, factory):
                d = Deferred()
                dials.append((d, factory))
                return d

        def complete(index: int):
            d, factory = dials[index]
            protocol = factory.buildProtocol(None)
            protocol.makeConnection(StringTransport())
            d.callback(protocol)
            return protocol

        pools = self.pools()
        pool = pools.pool_for("k")
        first = pool.connect(self.target, Pending(), 1000, 10)
        second = pool.connect(self.target, Pending(), 1000, 10)
        a = complete(0)
        self.assertIs(self.successResultOf(first), a)
        a.connectionLost(Failure(ConnectionDone()))  # (the target said Connection: close)
        b = complete(1)
        self.assertIs(self.successResultOf(second), b)
        pool.release(b)
        self.assertIs(pools.pool_for("k"), pool)
        self.assertIs(pools.pool_for("k").take(self.target), b)
        pool.release(b)
        pools.retire("k")
        self.assertTrue(b.transport.disconnecting)

    def test_failed_dial_beside_another_under_way(self) -> None:
        """A dial that fails while another is under way does not drop the pool either."""
        from twisted.internet.defer import Deferred
        from twisted.internet.error import ConnectError

        dials: list[Deferred] = []

        class Pending:
            def connect(self, factory):
                dials.append(Deferred())
                return dials[-1]

        pools = self.pools()
        pool = pools.pool_for("k")
        first = pool.connect(self.target, Pending(), 1000, 10)
        second = pool.connect(self.target, Pending(), 1000, 10)
        dials[0].errback(ConnectError("refused"))
        self.failureResultOf(first, ConnectError)
        self.assertIs(pools.pool_for("k"), pool)
        dials[1].errback(ConnectError("refused"))
        self.failureResultOf(second, ConnectError)
        self.assertEqual(len(pools), 0)
