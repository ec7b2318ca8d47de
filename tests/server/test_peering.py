"""
HA peering on the simulated network (tests/netsim.py): three servers fully
meshed, clients reached through any server, failover when a server dies.
"""

from __future__ import annotations

from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from remotedialer import ClientNotConnected, StreamError
from remotedialer.server._peering import PEER_RETRY_MAX
from tests.netsim import Network
from tests.support import Collector, Payload, SendPayload, sha256_of
from tests.system.test_end_to_end import _Factory

MiB = 1024 * 1024

#: Longest a peer link waits before trying again: its backoff's cap, plus
#: backoffPolicy's up to 1 s of jitter, plus a refusal's 0.3 s (HostnameEndpoint).
PEER_RETRY_WAIT = PEER_RETRY_MAX + 1.0 + 0.3


class _Mesh:
    """Servers A, B, C at 10.0.0.1-3, each peered with the other two."""

    def __init__(self, net, names=("A", "B", "C")):
        self.net = net
        self.sites = {
            name: net.serve_tunnel(f"10.0.0.{i}:8123", peer_id=name, peer_token=f"token-{name}")
            for i, name in enumerate(names, 1)
        }
        for name, site in self.sites.items():
            for other, other_site in self.sites.items():
                if other != name:
                    site.server.add_peer(other, f"token-{other}", other_site.url)
        for site in self.sites.values():
            net.start(site.server)
        net.flush()

    def meshed(self) -> bool:
        n = len(self.sites) - 1
        return all(
            len(s.server.sessions.peer_sessions()) == n
            and all(link.session is not None for link in s.server._peer_links.values())
            for s in self.sites.values()
        )

    def server(self, name):
        return self.sites[name].server

    def reachable(self, key="foo"):
        """The servers that can reach client C{key}."""
        return "".join(n for n in self.sites if key in self.server(n).sessions.reachable_clients())

    def client(self, urls, key="foo"):
        return self.net.client(urls, key, retry_policy=lambda attempt: 0.2)


class PeeringTests(SynchronousTestCase):
    def setUp(self):
        self.net = Network(self)

    def _mesh_with_client(self):
        mesh = _Mesh(self.net)
        self.assertTrue(mesh.meshed())
        client = mesh.client(mesh.sites["A"].url)
        self.net.result(client.when_connected())
        self.assertEqual(mesh.reachable(), "ABC")
        return mesh, client

    def test_request_through_another_server(self):
        """A client on A is reached through C: a large body arrives intact both ways."""
        net = self.net
        mesh, client = self._mesh_with_client()
        self.assertEqual(mesh.server("C").clients(), [])
        payload = Payload(24 * MiB)
        source = net.listen(Factory.forProtocol(lambda: SendPayload(payload, net.clock)))
        reader = net.connect(mesh.server("C").endpoint("foo", "tcp", source.address), Collector())
        net.flush()
        data = self.successResultOf(reader.done)
        self.assertEqual(sha256_of(data), payload.sha256)
        self.assertTrue(reader.reason.check(ConnectionDone))
        sink = _Factory(Collector)
        target = net.listen(sink)
        sender = net.connect(mesh.server("C").endpoint("foo", "tcp", target.address),
                             SendPayload(payload, net.clock))
        net.flush()
        [received] = sink.instances
        self.assertEqual(sha256_of(self.successResultOf(received.done)), payload.sha256)
        self.assertGreater(sender.pauses, 0)  # back-pressure through both hops

    def test_client_disconnect_seen_everywhere(self):
        """When the client goes, the other servers forget it and say so on dial."""
        mesh, client = self._mesh_with_client()
        client.stopService()
        self.net.flush()
        self.assertEqual(mesh.reachable(), "")
        endpoint = mesh.server("C").endpoint("foo", "tcp", "127.0.0.1:1")
        self.failureResultOf(endpoint.connect(Factory.forProtocol(Collector)), ClientNotConnected)

    def test_link_restart_reannounces(self):
        """A peer link that drops forgets what it announced; when it is back, it announces again."""
        net = self.net
        mesh, client = self._mesh_with_client()
        c = mesh.server("C")
        [from_a] = [s for s in c.sessions.peer_sessions() if s.client_key == "A"]
        from_a._drop()
        net.flush()
        self.assertTrue(from_a.closed)
        self.assertNotIn(from_a, c.sessions.peer_sessions())
        self.assertNotIn("foo", c.sessions.reachable_clients())
        net.run(PEER_RETRY_WAIT)
        self.assertTrue(any(s.client_key == "A" for s in c.sessions.peer_sessions()))
        self.assertIn("foo", c.sessions.reachable_clients())
        echo = net.listen(Factory.forProtocol(Collector))
        reader = net.connect(c.endpoint("foo", "tcp", echo.address), Collector())
        reader.transport.loseConnection()
        net.flush()
        self.successResultOf(reader.done)

    def test_server_restart_reannounces(self):
        """
        A restarts: its client comes back to it, its links come back up and
        announce the client again, and C reaches it through A once more.
        """
        net = self.net
        mesh, client = self._mesh_with_client()
        a = mesh.sites["A"]
        a.kill()
        net.flush()
        self.assertEqual(mesh.reachable(), "")
        net.run(1.0)  # down for a while: the client and B's and C's links are refused
        self.assertGreaterEqual(net.refused[a.address], 2)
        a.start_listening()
        net.run(0.5)  # the client's next attempt (0.2 s, after a refusal's 0.3 s)
        self.assertTrue(a.server.has_session("foo"))
        self.assertEqual(mesh.reachable(), "A")  # A's links are not up yet
        a.server.startService()
        net.flush()
        self.assertEqual(mesh.reachable(), "ABC")  # announced as each link opened
        net.run(PEER_RETRY_WAIT)  # B's and C's links to A are back too
        self.assertTrue(mesh.meshed())
        echo = net.listen(Factory.forProtocol(Collector))
        reader = net.connect(mesh.server("C").endpoint("foo", "tcp", echo.address), Collector())
        reader.transport.loseConnection()
        net.flush()
        self.successResultOf(reader.done)
        self.assertTrue(reader.reason.check(ConnectionDone))

    def test_wrong_token_refused_and_logged(self):
        """A peer presenting the wrong token is refused (401), and the server logs it."""
        net = self.net
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def refusals():
            return sum("refused peer link" in str(e.get("log_format", "")) for e in events)

        a = net.serve_tunnel("10.0.0.1:8123", peer_id="A", peer_token="token-A")
        a.server.add_peer("D", "token-D", "ws://127.0.0.1:1/connect")  # A expects D's token-D
        d = net.serve_tunnel("10.0.0.4:8123", peer_id="D", peer_token="not-token-D")
        d.server.add_peer("A", "token-A", a.url)
        net.start(d.server)
        net.flush()
        self.assertEqual(refusals(), 1)
        net.run(PEER_RETRY_WAIT)  # D keeps trying; A keeps refusing
        self.assertGreater(refusals(), 1)
        self.assertEqual(a.server.sessions.peer_sessions(), [])
        self.assertIsNone(d.server.peer_link("A").session)

    def test_kill_server_mid_transfer(self):
        """
        A dies mid-transfer: the stream through C fails with an error (no
        hang); the client fails over to B; new requests through C succeed.
        """
        net = self.net
        mesh = _Mesh(net)
        client = mesh.client([mesh.sites["A"].url, mesh.sites["B"].url])
        net.result(client.when_connected())
        self.assertEqual(mesh.reachable(), "ABC")
        payload = Payload(64 * MiB)
        source = net.listen(Factory.forProtocol(lambda: SendPayload(payload, net.clock)))
        reader = Collector()
        endpoint = mesh.server("C").endpoint("foo", "tcp", source.address)
        d = endpoint.connect(Factory.forProtocol(lambda: reader))
        net.flush(until=lambda: reader.received > 0)  # not to the end: the transfer is under way
        self.successResultOf(d)
        reader.transport.pauseProducing()  # keep it mid-transfer
        mesh.sites["A"].kill()
        net.flush()
        self.successResultOf(reader.done)
        self.assertFalse(reader.reason.check(ConnectionDone))
        self.assertLess(reader.received, payload.size)
        net.run(0.2)  # the client's next attempt goes to B
        self.assertTrue(mesh.server("B").has_session("foo"))
        self.assertEqual(mesh.reachable(), "BC")
        again = net.connect(mesh.server("C").endpoint("foo", "tcp", source.address), Collector())
        net.flush()
        self.assertEqual(sha256_of(self.successResultOf(again.done)), payload.sha256)

    def test_remove_peer_tears_link_down(self):
        """remove_peer closes the link both ways; the removed peer no longer reaches our clients."""
        net = self.net
        mesh, client = self._mesh_with_client()
        a, c = mesh.server("A"), mesh.server("C")
        accepted = mesh.sites["A"].listener.accepted
        a.remove_peer("C")
        net.flush()
        self.assertFalse(any(s.client_key == "A" for s in c.sessions.peer_sessions()))
        self.assertFalse(any(s.client_key == "C" for s in a.sessions.peer_sessions()))
        self.assertIsNone(a.peer_link("C"))
        self.assertNotIn("foo", c.sessions.reachable_clients())
        net.run(PEER_RETRY_WAIT)  # C's own link to A is refused from now on
        self.assertGreater(mesh.sites["A"].listener.accepted, accepted)  # C did try again
        self.assertFalse(any(s.client_key == "C" for s in a.sessions.peer_sessions()))
        self.assertNotIn("foo", c.sessions.reachable_clients())

    def test_peer_forward_never_loops(self):
        """A peer's Connect for a client that is not local here fails; it is not passed on."""
        mesh, client = self._mesh_with_client()
        b = mesh.server("B")
        [from_c] = [s for s in b.sessions.peer_sessions() if s.client_key == "C"]
        # B asks C to dial foo (only on A): C must refuse, not forward to A.
        reader = Collector()
        from_c.open_stream("foo::tcp", "127.0.0.1:1").attach(reader)
        self.net.flush()
        self.successResultOf(reader.done)
        self.assertTrue(reader.reason.check(StreamError))
        self.assertIn("failed to find Session for client foo", reader.reason.getErrorMessage())
