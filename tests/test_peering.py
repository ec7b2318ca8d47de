"""
HA peering on loopback with real reactors: three servers fully meshed,
clients reached through any server, failover when a server dies.
"""

from __future__ import annotations

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import TestCase

from remotedialer import ClientNotConnected, StreamError, TunnelClient, allow_all

from tests.support import Collector, Payload, SendPayload, TunnelHarness, eventually, listen_tcp, sha256_of, wait
from tests.test_end_to_end import _connect, _Factory

MiB = 1024 * 1024


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class _Mesh:
    """Servers A, B, C, each peered with the other two."""

    def __init__(self, testcase, names=("A", "B", "C")):
        self.testcase = testcase
        self.harnesses = {
            name: TunnelHarness(testcase, peer_id=name, peer_token=f"token-{name}") for name in names
        }

    async def start(self):
        for harness in self.harnesses.values():
            await harness.start()
        for name, harness in self.harnesses.items():
            for other, other_harness in self.harnesses.items():
                if other != name:
                    harness.server.add_peer(other, f"token-{other}", other_harness.url)
            harness.server.startService()
            self.testcase.addCleanup(harness.server.stopService)
        await eventually(self.meshed, timeout=15)

    def meshed(self) -> bool:
        n = len(self.harnesses) - 1
        return all(
            len(h.server.sessions.peer_sessions()) == n
            and all(link.session is not None for link in h.server._peer_links.values())
            for h in self.harnesses.values()
        )

    def server(self, name):
        return self.harnesses[name].server

    async def kill(self, name):
        """The server dies: its port, its links and every WebSocket it holds go at once."""
        harness = self.harnesses[name]
        await harness.stop_listening()
        await harness.server.stopService()
        for session in harness.server.sessions.local_sessions() + harness.server.sessions.peer_sessions():
            session._drop()

    def client(self, urls, key="foo"):
        client = TunnelClient(urls, headers={"X-Tunnel-ID": key}, reactor=reactor, client_key=key,
                              connect_authorizer=allow_all, retry_policy=lambda attempt: 0.2)
        client.startService()
        self.testcase.addCleanup(client.stopService)
        return client


class PeeringTests(TestCase):
    timeout = 90

    async def _mesh_with_client(self):
        mesh = _Mesh(self)
        await mesh.start()
        client = mesh.client(mesh.harnesses["A"].url)
        await client.when_connected()
        await eventually(lambda: all("foo" in mesh.server(n).sessions.reachable_clients() for n in "ABC"))
        return mesh, client

    def test_request_through_another_server(self):
        """A client on A is reached through C: a large body arrives intact both ways."""

        async def go():
            mesh, client = await self._mesh_with_client()
            self.assertEqual(mesh.server("C").clients(), [])
            payload = Payload(24 * MiB)
            source = await listen_tcp(Factory.forProtocol(lambda: SendPayload(payload)), self)
            reader = Collector()
            await _connect(mesh.server("C").endpoint("foo", "tcp", f"127.0.0.1:{source.getHost().port}"), reader)
            data = await reader.done
            self.assertEqual(sha256_of(data), payload.sha256)
            self.assertTrue(reader.reason.check(ConnectionDone))
            sink = _Factory(Collector)
            target = await listen_tcp(sink, self)
            await _connect(mesh.server("C").endpoint("foo", "tcp", f"127.0.0.1:{target.getHost().port}"),
                           SendPayload(payload))
            await eventually(lambda: sink.instances)
            self.assertEqual(sha256_of(await sink.instances[0].done), payload.sha256)

        return run(go())

    def test_client_disconnect_seen_everywhere(self):
        """When the client goes, the other servers forget it and say so on dial."""

        async def go():
            mesh, client = await self._mesh_with_client()
            await client.stopService()
            await eventually(lambda: not any("foo" in mesh.server(n).sessions.reachable_clients() for n in "ABC"))
            with self.assertRaises(ClientNotConnected):
                await mesh.server("C").endpoint("foo", "tcp", "127.0.0.1:1").connect(Factory.forProtocol(Collector))

        return run(go())

    def test_link_restart_reannounces(self):
        """A peer link that drops forgets what it announced; when it is back, it announces again."""

        async def go():
            mesh, client = await self._mesh_with_client()
            c = mesh.server("C")
            [from_a] = [s for s in c.sessions.peer_sessions() if s.client_key == "A"]
            from_a._drop()
            await eventually(lambda: from_a.closed)
            self.assertNotIn(from_a, c.sessions.peer_sessions())
            await eventually(lambda: any(s.client_key == "A" for s in c.sessions.peer_sessions()), timeout=10)
            await eventually(lambda: "foo" in c.sessions.reachable_clients())
            echo = await listen_tcp(Factory.forProtocol(Collector), self)
            reader = Collector()
            await _connect(c.endpoint("foo", "tcp", f"127.0.0.1:{echo.getHost().port}"), reader)
            reader.transport.loseConnection()
            await reader.done

        return run(go())

    def test_server_restart_reannounces(self):
        """
        A restarts: its client comes back to it, its links come back up and
        announce the client again, and C reaches it through A once more.
        """

        async def go():
            mesh, client = await self._mesh_with_client()
            a = mesh.harnesses["A"]
            port = a.port.getHost().port
            await mesh.kill("A")
            await eventually(lambda: "foo" not in mesh.server("C").sessions.reachable_clients())
            await a.start(port)
            a.server.startService()
            await eventually(lambda: a.server.has_session("foo"), timeout=15)
            await eventually(mesh.meshed, timeout=15)
            await eventually(lambda: "foo" in mesh.server("C").sessions.reachable_clients())
            echo = await listen_tcp(Factory.forProtocol(Collector), self)
            reader = Collector()
            await _connect(mesh.server("C").endpoint("foo", "tcp", f"127.0.0.1:{echo.getHost().port}"), reader)
            reader.transport.loseConnection()
            await reader.done
            self.assertTrue(reader.reason.check(ConnectionDone))

        return run(go())

    def test_wrong_token_refused_and_logged(self):
        """A peer presenting the wrong token is refused (401), and the server logs it."""

        async def go():
            events = []
            globalLogPublisher.addObserver(events.append)
            self.addCleanup(globalLogPublisher.removeObserver, events.append)
            a = TunnelHarness(self, peer_id="A", peer_token="token-A")
            await a.start()
            a.server.add_peer("D", "token-D", "ws://127.0.0.1:1/connect")  # A expects D's token-D
            d = TunnelHarness(self, peer_id="D", peer_token="not-token-D")
            await d.start()
            d.server.add_peer("A", "token-A", a.url)
            d.server.startService()
            self.addCleanup(d.server.stopService)
            await eventually(lambda: any("refused peer link" in str(e.get("log_format", "")) for e in events))
            await wait(0.3)
            self.assertEqual(a.server.sessions.peer_sessions(), [])
            self.assertIsNone(d.server.peer_link("A").session)

        return run(go())

    def test_kill_server_mid_transfer(self):
        """
        A dies mid-transfer: the stream through C fails with an error (no
        hang); the client fails over to B; new requests through C succeed.
        """

        async def go():
            mesh = _Mesh(self)
            await mesh.start()
            client = mesh.client([mesh.harnesses["A"].url, mesh.harnesses["B"].url])
            await client.when_connected()
            await eventually(lambda: "foo" in mesh.server("C").sessions.reachable_clients())
            payload = Payload(64 * MiB)
            source = await listen_tcp(Factory.forProtocol(lambda: SendPayload(payload)), self)
            address = f"127.0.0.1:{source.getHost().port}"
            reader = Collector()
            await _connect(mesh.server("C").endpoint("foo", "tcp", address), reader)
            await eventually(lambda: reader.received > 0)
            reader.transport.pauseProducing()  # keep it mid-transfer
            await mesh.kill("A")
            await reader.done
            self.assertFalse(reader.reason.check(ConnectionDone))
            self.assertLess(reader.received, payload.size)
            await eventually(lambda: mesh.server("B").has_session("foo"), timeout=15)
            await eventually(lambda: "foo" in mesh.server("C").sessions.reachable_clients(), timeout=15)
            again = Collector()
            await _connect(mesh.server("C").endpoint("foo", "tcp", address), again)
            self.assertEqual(sha256_of(await again.done), payload.sha256)

        return run(go())

    def test_remove_peer_tears_link_down(self):
        """remove_peer closes the link both ways; the removed peer no longer reaches our clients."""

        async def go():
            mesh, client = await self._mesh_with_client()
            a, c = mesh.server("A"), mesh.server("C")
            a.remove_peer("C")
            await eventually(lambda: not any(s.client_key == "A" for s in c.sessions.peer_sessions()))
            await eventually(lambda: not any(s.client_key == "C" for s in a.sessions.peer_sessions()))
            self.assertIsNone(a.peer_link("C"))
            await eventually(lambda: "foo" not in c.sessions.reachable_clients())
            await wait(1.0)  # C's own link to A is refused from now on
            self.assertFalse(any(s.client_key == "C" for s in a.sessions.peer_sessions()))

        return run(go())

    def test_peer_forward_never_loops(self):
        """A peer's Connect for a client that is not local here fails; it is not passed on."""

        async def go():
            mesh, client = await self._mesh_with_client()
            b = mesh.server("B")
            [from_c] = [s for s in b.sessions.peer_sessions() if s.client_key == "C"]
            # B asks C to dial foo (only on A): C must refuse, not forward to A.
            reader = Collector()
            from_c.open_stream("foo::tcp", "127.0.0.1:1").attach(reader)
            await reader.done
            self.assertTrue(reader.reason.check(StreamError))
            self.assertIn("failed to find Session for client foo", reader.reason.getErrorMessage())

        return run(go())
