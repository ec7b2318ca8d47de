"""
Metrics (remotedialer.ops._metrics) of real servers and clients on the simulated
network: Go's counters under Go's names and labels, our gauges read at
scrape time, dial latency and failures, and the labels' bounds.
"""

from __future__ import annotations

import re

from twisted.internet import defer, task
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from remotedialer import ITrafficObserver, SessionLimits
from remotedialer.ops._metrics import (
    GO_COUNTERS,
    OVERFLOW,
    ClientMetrics,
    MetricsOptions,
    ServerMetrics,
    render,
)
from remotedialer.tunnel._stream import PAUSE_THRESHOLD
from tests.netsim import Network
from tests.support import Collector, Echo, Payload, SendPayload

GO = "session_server_"


def value(metrics, name, **labels):
    """A sample's value (0 when absent: a counter never bumped)."""
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


class _Net:
    """A server at 10.0.0.1 with metrics, and helpers to connect clients and open streams."""

    def __init__(self, testcase, options=None, **server_kwargs):
        self.net = Network(testcase)
        self.site = self.net.serve_tunnel("10.0.0.1:8123", **server_kwargs)
        self.server = self.site.server
        self.metrics = ServerMetrics(self.server, options=options)
        self.echo = self.net.listen(Factory.forProtocol(Echo), "127.0.0.1:7000")

    def client(self, key="foo", **kwargs):
        client = self.net.client(self.site.url, key, **kwargs)
        self.net.result(client.when_connected())
        return client

    def stream(self, key="foo", address="127.0.0.1:7000", protocol=None):
        protocol = protocol if protocol is not None else Collector()
        self.net.connect(self.server.endpoint(key, "tcp", address), protocol)
        return protocol


class GoCountersTests(SynchronousTestCase):
    def test_sessions_and_connections(self):
        """Sessions added and removed, streams opened and closed: Go's counters, with Go's labels."""
        t = _Net(self)
        client = t.client("foo")
        first, second = t.stream(), t.stream()
        first.transport.write(b"x" * 1000)
        t.net.flush()
        self.assertEqual(first.received, 1000)
        m = t.metrics
        self.assertEqual(value(m, GO + "total_add_websocket_session", clientkey="foo", peer="false"), 1)
        self.assertEqual(value(m, GO + "total_remove_websocket_session", clientkey="foo", peer="false"), 0)
        self.assertEqual(value(m, GO + "total_add_connections", clientkey="foo", proto="tcp", addr=""), 2)
        self.assertEqual(value(m, GO + "total_remove_connections", clientkey="foo", proto="tcp", addr=""), 0)
        self.assertEqual(value(m, "remotedialer_streams", kind="client"), 2)
        self.assertEqual(value(m, "remotedialer_sessions", kind="client"), 1)
        self.assertEqual(value(m, "remotedialer_clients"), 1)

        second.transport.loseConnection()
        t.net.flush()
        self.assertEqual(value(m, GO + "total_remove_connections", clientkey="foo", proto="tcp", addr=""), 1)
        self.assertEqual(value(m, "remotedialer_streams", kind="client"), 1)

        client.stopService()
        t.net.flush()
        self.assertEqual(value(m, GO + "total_remove_websocket_session", clientkey="foo", peer="false"), 1)
        self.assertEqual(value(m, GO + "total_remove_connections", clientkey="foo", proto="tcp", addr=""), 2)
        self.assertEqual(value(m, "remotedialer_sessions", kind="client"), 0)
        self.assertEqual(value(m, "remotedialer_streams", kind="client"), 0)

    def test_bytes_are_the_sessions_and_outlive_them(self):
        """
        Byte counters are what the sessions sent and received (Errors
        counted apart), and stay when the session ends (monotonic).
        """
        t = _Net(self)
        client = t.client("foo")
        stream = t.stream()
        stream.transport.write(b"y" * 50_000)
        t.net.flush()
        [session] = t.server.sessions.local_sessions()
        m = t.metrics
        sent = value(m, GO + "total_transmit_bytes", clientkey="foo")
        errors = value(m, GO + "total_transmit_error_bytes", clientkey="foo")
        received = value(m, GO + "total_receive_bytes", clientkey="foo")
        self.assertGreater(sent, 50_000)
        self.assertGreater(received, 50_000)
        self.assertEqual(errors, 0)
        self.assertEqual(sent + errors, session.bytes_sent)
        self.assertEqual(received, session.bytes_received)

        stream.transport.loseConnection()  # an Error (EOF) goes out
        t.net.flush()
        errors = value(m, GO + "total_transmit_error_bytes", clientkey="foo")
        self.assertGreater(errors, 0)
        client.stopService()
        t.net.flush()
        before = (value(m, GO + "total_transmit_bytes", clientkey="foo"),
                  value(m, GO + "total_transmit_error_bytes", clientkey="foo"),
                  value(m, GO + "total_receive_bytes", clientkey="foo"))
        self.assertEqual(before[0] + before[1], session.bytes_sent)
        self.assertEqual(before[2], session.bytes_received)

        t.client("foo")  # a new session adds to the old one's totals
        t.stream().transport.write(b"z")
        t.net.flush()
        self.assertGreater(value(m, GO + "total_transmit_bytes", clientkey="foo"), before[0])

    def test_rendered_as_go_names_them(self):
        """The text format names Go's counters exactly as Go does: no _total suffix anywhere."""
        t = _Net(self)
        t.client("foo")
        t.stream()
        text = render(t.metrics.registry).decode()
        for name, (documentation, _) in GO_COUNTERS.items():
            self.assertIn(f"# HELP {name} {documentation}\n", text)
            self.assertIn(f"# TYPE {name} counter\n", text)
            self.assertNotIn(f"{name}_total", text)
        self.assertIn(GO + 'total_add_websocket_session{clientkey="foo",peer="false"} 1.0\n', text)
        self.assertIn(GO + 'total_add_connections{addr="",clientkey="foo",proto="tcp"} 1.0\n', text)
        self.assertRegex(text, GO + r'total_transmit_bytes\{clientkey="foo"\} \d+\.0\n')
        # Our own metrics follow the usual conventions.
        self.assertIn("# TYPE remotedialer_dial_failures_total counter\n", text)
        self.assertIn("# TYPE remotedialer_streams gauge\n", text)

    def test_each_server_has_its_own_registry(self):
        """Two servers in one process count apart; a server is observed once."""
        t = _Net(self)
        other = _Net(self)
        t.client("foo")
        self.assertEqual(value(t.metrics, GO + "total_add_websocket_session", clientkey="foo",
                               peer="false"), 1)
        self.assertEqual(value(other.metrics, GO + "total_add_websocket_session", clientkey="foo",
                               peer="false"), 0)
        self.assertRaises(ValueError, ServerMetrics, t.server)


class LabelTests(SynchronousTestCase):
    def test_addr_label_is_opt_in(self):
        t = _Net(self, MetricsOptions(addr_label=True))
        t.client("foo")
        t.stream()
        self.assertEqual(value(t.metrics, GO + "total_add_connections", clientkey="foo", proto="tcp",
                               addr="127.0.0.1:7000"), 1)

    def test_clientkey_label_can_be_dropped(self):
        t = _Net(self, MetricsOptions(clientkey_label=False))
        t.client("foo")
        t.client("bar")
        t.stream("foo")
        m = t.metrics
        self.assertEqual(value(m, GO + "total_add_websocket_session", clientkey="", peer="false"), 2)
        self.assertEqual(value(m, GO + "total_add_connections", clientkey="", proto="tcp", addr=""), 1)
        self.assertNotIn(b'clientkey="foo"', render(m.registry))

    def test_label_values_are_capped(self):
        """Past max_label_values distinct keys, the rest count under _other_: series stay bounded."""
        t = _Net(self, MetricsOptions(max_label_values=2))
        for key in ("a", "b", "c", "d"):
            t.client(key)
        m = t.metrics
        for key in ("a", "b"):
            self.assertEqual(value(m, GO + "total_add_websocket_session", clientkey=key, peer="false"), 1)
        self.assertEqual(value(m, GO + "total_add_websocket_session", clientkey=OVERFLOW, peer="false"), 2)
        self.assertNotIn(b'clientkey="c"', render(m.registry))

    def test_forwarded_proto_has_no_client_key(self):
        """A peer-forwarded Connect's proto 'foo::tcp' is labelled 'tcp' (no key in the label)."""
        mesh = _Peered(self)
        mesh.client_on_a("foo")
        b = mesh.b
        protocol = Collector()
        mesh.net.connect(b.server.endpoint("foo", "tcp", "127.0.0.1:7000"), protocol)
        text = render(mesh.a.metrics.registry).decode()
        self.assertIn(GO + 'total_add_connections{addr="",clientkey="B",proto="tcp"} 1.0', text)
        self.assertNotIn("::", text)


class _Peered:
    """Servers A and B peered, each with metrics."""

    def __init__(self, testcase):
        self.net = Network(testcase)
        sites = {}
        for i, name in enumerate("AB", 1):
            sites[name] = self.net.serve_tunnel(f"10.0.0.{i}:8123", peer_id=name, peer_token=f"t-{name}")
        for name, site in sites.items():
            site.metrics = ServerMetrics(site.server)
            other = "B" if name == "A" else "A"
            site.server.add_peer(other, f"t-{other}", sites[other].url)
            self.net.start(site.server)
        self.a, self.b = sites["A"], sites["B"]
        self.net.listen(Factory.forProtocol(Echo), "127.0.0.1:7000")
        self.net.flush()

    def client_on_a(self, key):
        client = self.net.client(self.a.url, key)
        self.net.result(client.when_connected())
        self.net.flush()
        return client


class PeerMetricsTests(SynchronousTestCase):
    def test_peer_counters_and_gauges(self):
        mesh = _Peered(self)
        mesh.client_on_a("foo")
        m = mesh.a.metrics
        self.assertEqual(value(m, GO + "total_peer_ws_attempt", peer="B"), 1)
        self.assertEqual(value(m, GO + "total_peer_ws_connected", peer="B"), 1)
        self.assertEqual(value(m, GO + "total_peer_ws_disconnected", peer="B"), 0)
        self.assertEqual(value(m, GO + "total_add_websocket_session", clientkey="B", peer="true"), 1)
        self.assertEqual(value(m, "remotedialer_sessions", kind="peer"), 1)
        self.assertEqual(value(m, "remotedialer_sessions", kind="peer_link"), 1)
        self.assertEqual((value(m, "remotedialer_peers"), value(m, "remotedialer_peers_connected")), (1, 1))
        self.assertEqual(value(mesh.b.metrics, "remotedialer_peer_clients"), 1)

        mesh.b.kill()
        mesh.net.flush()
        self.assertEqual(value(m, GO + "total_peer_ws_disconnected", peer="B"), 1)
        self.assertEqual(value(m, GO + "total_remove_websocket_session", clientkey="B", peer="true"), 1)
        self.assertEqual(value(m, "remotedialer_peers_connected"), 0)
        mesh.net.run(7)  # it retries
        self.assertGreaterEqual(value(m, GO + "total_peer_ws_attempt", peer="B"), 2)


class ClientMetricsTests(SynchronousTestCase):
    def _client(self, t, **kwargs):
        client = t.net.client(t.site.url, "foo", **kwargs)
        metrics = ClientMetrics(client)
        t.net.result(client.when_connected())
        return client, metrics

    def test_dials_latency_and_failures(self):
        """Each dial for a Connect is timed; failures are counted by reason."""
        t = _Net(self)

        def authorizer(proto, address):  # takes 0.4 s to decide
            return task.deferLater(t.net.clock, 0.4, lambda: address != "127.0.0.1:22")

        client, m = self._client(t, connect_authorizer=authorizer)
        t.stream()
        for address in ("127.0.0.1:22", "127.0.0.1:7001"):  # not allowed; nothing listens
            t.net.connect(t.server.endpoint("foo", "tcp", address), Collector())
        t.net.run(1)
        self.assertEqual(value(m, "remotedialer_dial_duration_seconds_count", outcome="connected"), 1)
        self.assertEqual(value(m, "remotedialer_dial_duration_seconds_count", outcome="failed"), 2)
        self.assertEqual(value(m, "remotedialer_dial_failures_total", reason="not_allowed"), 1)
        self.assertEqual(value(m, "remotedialer_dial_failures_total", reason="connection_refused"), 1)
        self.assertAlmostEqual(value(m, "remotedialer_dial_duration_seconds_sum", outcome="connected"), 0.4)
        bucket = "remotedialer_dial_duration_seconds_bucket"
        self.assertEqual(value(m, bucket, outcome="connected", le="0.25"), 0)
        self.assertEqual(value(m, bucket, outcome="connected", le="0.5"), 1)
        # The client's own connection counters, under its key.
        self.assertEqual(value(m, GO + "total_add_connections", clientkey="foo", proto="tcp", addr=""), 3)
        self.assertEqual(value(m, "remotedialer_streams", kind="tunnel"), 1)

    def test_pending_dials(self):
        t = _Net(self)
        waiting = []

        def authorizer(proto, address):  # decides only when told
            waiting.append(defer.Deferred())
            return waiting[-1]

        client, m = self._client(t, connect_authorizer=authorizer)
        t.stream()
        t.stream()
        self.assertEqual(value(m, "remotedialer_pending_dials"), 2)
        for d in waiting:
            d.callback(False)
        t.net.flush()
        self.assertEqual(value(m, "remotedialer_pending_dials"), 0)
        self.assertEqual(value(m, "remotedialer_dial_failures_total", reason="not_allowed"), 2)

    def test_tunnel_state(self):
        t = _Net(self)
        client, m = self._client(t, retry_policy=lambda attempt: 0.5)
        self.assertEqual(value(m, "remotedialer_tunnel_connected"), 1)
        self.assertEqual((value(m, "remotedialer_tunnel_attempts_total"),
                          value(m, "remotedialer_tunnel_opened_total")), (1, 1))
        t.site.kill()
        t.net.flush()
        self.assertEqual(value(m, "remotedialer_tunnel_connected"), 0)
        self.assertEqual(value(m, "remotedialer_tunnel_closed_total"), 1)
        self.assertNotIn(b"session_server_total_add_websocket_session{", render(m.registry))
        t.net.run(1.2)
        self.assertGreaterEqual(value(m, "remotedialer_tunnel_attempts_total"), 2)


class FlowGaugeTests(SynchronousTestCase):
    def test_paused_streams_and_buffered_bytes(self):
        """A reader that stops reading: Pause sent here, the far side paused, bytes held here."""
        t = _Net(self)
        client, client_metrics = ClientMetricsTests()._client(t)
        payload = Payload(4 * PAUSE_THRESHOLD)
        t.net.listen(Factory.forProtocol(lambda: SendPayload(payload, t.net.clock, close=False)),
                     "127.0.0.1:7002")

        class Still(Protocol):
            def connectionMade(self):
                self.transport.pauseProducing()

        t.stream(address="127.0.0.1:7002", protocol=Still())
        t.net.flush()
        m = t.metrics
        self.assertEqual(value(m, "remotedialer_paused_streams", by="local"), 1)
        self.assertGreater(value(m, "remotedialer_buffered_bytes", direction="inbound"), PAUSE_THRESHOLD)
        self.assertEqual(value(client_metrics, "remotedialer_paused_streams", by="remote"), 1)
        self.assertEqual(value(m, "remotedialer_paused_streams", by="remote"), 0)

    def test_too_many_streams_is_an_open_failure(self):
        t = _Net(self, session_limits=SessionLimits(max_streams=1))
        t.client("foo")
        t.stream()
        endpoint = t.server.endpoint("foo", "tcp", "127.0.0.1:7000")
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Protocol)))
        self.assertEqual(value(t.metrics, "remotedialer_stream_open_failures_total",
                               reason="too_many_streams"), 1)

    def test_gauges_need_no_observer(self):
        """Gauges read the server's own sessions: metrics made after clients connected still see them."""
        net = Network(self)
        site = net.serve_tunnel("10.0.0.1:8123")
        client = net.client(site.url, "foo")
        net.result(client.when_connected())
        metrics = ServerMetrics(site.server)
        self.assertEqual(value(metrics, "remotedialer_sessions", kind="client"), 1)
        self.assertEqual(value(metrics, GO + "total_add_websocket_session", clientkey="foo", peer="false"), 0)

    def test_observer_interface(self):
        self.assertTrue(verifyObject(ITrafficObserver, _Net(self).metrics.counters))

    def test_no_route_is_an_open_failure(self):
        t = _Net(self)
        endpoint = t.server.endpoint("nobody", "tcp", "127.0.0.1:7000")
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Protocol)))
        self.assertEqual(value(t.metrics, "remotedialer_stream_open_failures_total", reason="no_route"), 1)
        text = render(t.metrics.registry).decode()
        self.assertTrue(re.search(r'remotedialer_stream_open_failures_total\{reason="no_route"\} 1\.0', text))
        t.server.draining = True
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Protocol)))
        self.assertEqual(value(t.metrics, "remotedialer_stream_open_failures_total", reason="draining"), 1)
