"""
Port forwards over an in-memory tunnel, the splice's counters, and the
proxies' shared access rules (client from user name or host suffix).
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.proxies._forward import PortForwardFactory
from remotedialer.server._access import FrontDoorAccess, ProxyAccess, Refusal, Route, split_tunnel_host
from remotedialer.server._auth import hash_token
from remotedialer.server._forwardstats import FAILURE_REASONS, ForwarderStats
from tests.forwarding import TARGET, LogLines, connect_caller, forwarder, received, tunnel_with_targets
from tests.protocol.test_addresses import LOOPBACK_SPELLINGS
from tests.server.test_own import listeners as own_listeners
from tests.support import Payload, SendPayload

LOOPBACK = IPv4Address("TCP", "127.0.0.1", 5000)


class PortForwardTests(SynchronousTestCase):
    def setUp(self):
        self.tunnel = tunnel_with_targets()
        self.log = LogLines(self)

    def factory(self, address: str = TARGET, connected: bool = True):
        self.forwarder = forwarder(self.tunnel, "forward", dial_wait=0, reaches=lambda key: connected)
        return PortForwardFactory(self.forwarder, Route("foo", "tcp", address))

    def test_callers_tcp_turns_nagle_off(self):
        """
        The caller's TCP connection relays small replies at once (Nagle off,
        as every relay's TCP half): the port forward's, and any splice's
        (both proxies splice once their handshake is done).
        """
        from remotedialer.server._splice import TunnelSplice
        from tests.tunnel.test_relay import TCPLikeTransport

        forward = self.factory("10.0.0.6:22").buildProtocol(LOOPBACK)
        splice = TunnelSplice(self.forwarder)
        for protocol in (forward, splice):
            transport = TCPLikeTransport()
            transport.getPeer = lambda: LOOPBACK
            protocol.makeConnection(transport)
            if protocol is splice:
                splice.splice(Route("foo", "tcp", "10.0.0.6:22"))
            self.assertTrue(transport.no_delay, protocol)
        self.tunnel.flush()

    def test_relays_both_ways(self):
        _, caller = connect_caller(self.tunnel, self.factory("10.0.0.6:22"))
        self.tunnel.flush()
        caller.transport.write(b"ping")
        self.tunnel.flush()
        self.assertEqual(received(caller), b"220 hello\r\nping")
        stats = self.forwarder.stats
        self.assertEqual((stats.connections, stats.streams_total, stats.streams_open), (1, 1, 1))
        caller.transport.loseConnection()
        self.tunnel.flush()
        self.assertEqual((stats.streams_open, self.tunnel.streams), (0, (0, 0)))
        self.assertEqual(stats.failures, {})

    def test_refused_at_once_while_the_client_is_away(self):
        """No route to the client: the connection is refused (no protocol), logged throttled."""
        factory = self.factory(connected=False)
        for _ in range(20):
            self.assertIsNone(factory.buildProtocol(LOOPBACK))
        self.assertEqual(self.forwarder.stats.failures, {"client-not-connected": 20})
        lines = self.log.matching("client foo is not connected: connection closed")
        self.assertEqual(len(lines), 5)
        self.assertIn("forward:test: foo:tcp/10.0.0.5:6443:", lines[0])
        self.tunnel.clock.advance(10)
        self.assertEqual(len(self.log.matching("15 more forwarding failures")), 1)

    def test_refused_when_the_target_is_our_own_listener(self):
        """
        A forward whose target became one of the server's own listeners (a
        tcp:0 listener got its port) is refused, each connection closed at
        once, counted and logged (throttled); no stream is opened.
        """
        self.forwarder = forwarder(self.tunnel, "forward", dial_wait=0, reaches=lambda key: True)
        own = own_listeners()
        factory = PortForwardFactory(self.forwarder, Route("foo", "tcp", "0x7f.1:40123"), own=own)
        _, caller = connect_caller(self.tunnel, factory)  # (not yet: relayed as ever)
        self.tunnel.flush()
        own.add("127.0.0.1", 40123)
        self.assertIsNone(factory.buildProtocol(LOOPBACK))
        self.assertEqual(self.forwarder.stats.failures, {"dial-refused": 1, "own-listener": 1})
        self.assertEqual(self.log.matching("own listener"), [
            "forward:test: foo:tcp/0x7f.1:40123: "
            "the target is this server's own listener: connection closed"])
        self.assertEqual(self.forwarder.stats.streams_total, 1)

    def test_dial_refused_aborts(self):
        """The client refuses the target: the caller's connection is aborted, the refusal counted."""
        _, caller = connect_caller(self.tunnel, self.factory("10.9.9.9:80"))
        self.tunnel.flush()
        self.assertIsNotNone(caller.reason)
        self.assertFalse(caller.reason.check(ConnectionDone), "aborted, not closed cleanly")
        self.assertEqual(received(caller), b"")
        self.assertEqual(self.forwarder.stats.failures, {"dial-refused": 1})
        self.assertEqual(self.forwarder.stats.streams_open, 0)

    def test_tunnel_lost_mid_stream(self):
        """The tunnel drops after data flowed: the caller's connection ends; a stream error is counted."""
        _, caller = connect_caller(self.tunnel, self.factory("10.0.0.6:22"))
        self.tunnel.flush()
        self.assertEqual(received(caller), b"220 hello\r\n")
        self.tunnel.disconnect()
        self.tunnel.flush()
        self.assertIsNotNone(caller.reason)
        self.assertEqual(self.forwarder.stats.failures, {"stream-error": 1})
        self.assertEqual(self.forwarder.stats.streams_open, 0)

    def test_back_pressure_reaches_the_target(self):
        """A caller that stops reading pauses the stream, so the far side is told to Pause."""
        payload = Payload(8 * 1024 * 1024)
        self.tunnel.add_target("tcp", "10.0.0.7:9", Factory.forProtocol(
            lambda: SendPayload(payload, clock=self.tunnel.clock)))
        proxy, caller = connect_caller(self.tunnel, self.factory("10.0.0.7:9"))
        caller.transport.pauseProducing()  # the caller reads nothing
        for _ in range(2000):
            self.tunnel.clock.advance(0)
        self.assertIn("PAUSE", [m.type for m in self.tunnel.messages])
        stream = proxy.peer.transport
        self.assertLess(stream.buffered_inbound, 4 * 1024 * 1024)
        caller.transport.resumeProducing()
        self.tunnel.flush()
        for _ in range(5000):
            if caller.reason is not None:
                break
            self.tunnel.clock.advance(0)
        self.assertEqual(caller.received, payload.size)


class ProxyAccessTests(SynchronousTestCase):
    def test_suffix(self):
        self.assertEqual(split_tunnel_host("10.0.0.5.foo.tunnel"), ("10.0.0.5", "foo"))
        self.assertEqual(split_tunnel_host("kubernetes.default.svc.c-1.TUNNEL"),
                         ("kubernetes.default.svc", "c-1"))
        for host in ["10.0.0.5", "foo.tunnel", ".foo.tunnel", "x..tunnel", "tunnel"]:
            self.assertIsNone(split_tunnel_host(host), host)

    def test_routes(self):
        access = ProxyAccess()
        self.assertEqual(access.route("foo", "10.0.0.5", 6443), Route("foo", "tcp", "10.0.0.5:6443"))
        self.assertEqual(access.route(None, "fd00::1.foo.tunnel", 443), Route("foo", "tcp", "[fd00::1]:443"))
        self.assertEqual(access.route("foo", "db.foo.tunnel", 5432), Route("foo", "tcp", "db:5432"))
        for user, host, reason in [(None, "10.0.0.5", "no-client"), ("foo", "db.bar.tunnel", "no-client"),
                                   ("a/b", "h", "no-client"), ("\x1b[31m", "h", "no-client"),
                                   ("foo", "a b", "bad-request")]:
            refusal = access.route(user, host, 443)
            self.assertIsInstance(refusal, Refusal)
            self.assertEqual(refusal.reason, reason)

    def test_own_listener(self):
        access = ProxyAccess(FrontDoorAccess(own=own_listeners(("127.0.0.1", 8123))))
        for host in ("127.0.0.1", "localhost", "[::1]", "::1", *LOOPBACK_SPELLINGS):
            self.assertEqual(access.route("foo", host, 8123).reason, "own-listener", host)
        self.assertIsInstance(access.route("foo", "10.0.0.5", 8123), Route)

    def test_callers(self):
        outside = IPv4Address("TCP", "192.0.2.1", 5000)
        self.assertIsNone(ProxyAccess().caller_refusal(LOOPBACK, None))
        for host in ("::1", "::ffff:127.0.0.1"):
            self.assertIsNone(ProxyAccess().caller_refusal(IPv6Address("TCP", host, 5000), None), host)
        self.assertEqual(ProxyAccess().caller_refusal(outside, None).reason, "caller-refused")
        self.assertIsNone(ProxyAccess(FrontDoorAccess(open=True)).caller_refusal(outside, None))
        tokens = ProxyAccess(FrontDoorAccess(token_hashes=frozenset([bytes.fromhex(hash_token("t"))])))
        self.assertTrue(tokens.needs_password)
        self.assertIsNone(tokens.caller_refusal(outside, b"t"))
        self.assertEqual(tokens.caller_refusal(LOOPBACK, b"u").reason, "unauthenticated")
        self.assertEqual(tokens.caller_refusal(LOOPBACK, None).reason, "unauthenticated")


class StatsTests(SynchronousTestCase):
    def test_counts_and_snapshot(self):
        stats = ForwarderStats("socks:1080", "socks")
        stats.accepted()
        stats.stream_opened()
        stats.failed("dial-refused")
        stats.stream_closed()
        self.assertEqual(stats.snapshot(), {
            "name": "socks:1080", "kind": "socks", "target": "", "connections": 1, "streams_total": 1,
            "streams_open": 0, "failures": {"dial-refused": 1}})
        with self.assertRaises(ValueError):
            stats.failed("made up")
        self.assertEqual(len(set(FAILURE_REASONS)), len(FAILURE_REASONS))


class ThroughAPeerTests(SynchronousTestCase):
    """A forwarder on server B reaches a client connected to server A, its peer."""

    def test_port_forward_and_connect_proxy_on_the_other_server(self):
        from twisted.internet.endpoints import TCP4ClientEndpoint

        from remotedialer.proxies._connectproxy import ConnectProxyFactory
        from remotedialer.server._splice import Forwarder
        from tests.netsim import Network
        from tests.support import Collector, Echo

        net = Network(self)
        a = net.serve_tunnel("10.0.0.1:8123", peer_id="A", peer_token="token-A")
        b = net.serve_tunnel("10.0.0.2:8123", peer_id="B", peer_token="token-B")
        a.server.add_peer("B", "token-B", b.url)
        b.server.add_peer("A", "token-A", a.url)
        net.start(a.server)
        net.start(b.server)
        client = net.client(a.url, "foo")
        net.result(client.when_connected())
        net.flush()
        self.assertFalse(b.server.has_session("foo"))
        self.assertTrue(b.server.reaches("foo"))
        echo = net.listen(Factory.forProtocol(Echo))

        def on_b(port, factory_class, *args):
            stats = ForwarderStats("on-b", "forward")
            forwarder = Forwarder(b.server, stats, net.clock, dial_wait=0, reaches=b.server.reaches)
            net.listen(factory_class(forwarder, *args), f"10.0.0.2:{port}")
            return net.connect(TCP4ClientEndpoint(net.reactor, "10.0.0.2", port), Collector()), stats

        caller, stats = on_b(16443, PortForwardFactory, Route("foo", "tcp", echo.address))
        caller.transport.write(b"via B")
        net.flush()
        self.assertEqual(received(caller), b"via B")
        caller, stats = on_b(8124, ConnectProxyFactory)
        caller.transport.write(b"CONNECT %s HTTP/1.1\r\nHost: x\r\n"
                               b"Proxy-Authorization: Basic Zm9vOg==\r\n\r\n" % echo.address.encode())
        net.flush()
        caller.transport.write(b"via B again")
        net.flush()
        self.assertEqual(received(caller), b"HTTP/1.1 200 Connection established\r\n\r\nvia B again")
        self.assertEqual(stats.streams_open, 1)
