"""
The forwarders end to end on loopback, with real tools: curl through the
CONNECT proxy and SOCKS5 (plain HTTP, and TLS to a server of a test CA,
verified by curl itself), a port forward carrying 64 MiB both ways at once
to slow readers in bounded memory, tunnels and callers going away
mid-transfer, bad input next to working streams, and refusals while the
client is away.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tracemalloc

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from remotedialer.proxies._connectproxy import ConnectProxyFactory
from remotedialer.proxies._forward import PortForwardFactory
from remotedialer.proxies._socksproxy import SocksProxyFactory
from remotedialer.server._access import Route
from remotedialer.server._forwardstats import ForwarderStats
from remotedialer.server._splice import Forwarder
from tests.support import Collector, Echo, Payload, SendPayload, TunnelHarness, eventually, listen_tcp
from tests.system.test_frontdoor import listen_tls, make_ca

MiB = 1024 * 1024


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


async def dial(port: int, protocol: Protocol) -> Protocol:
    """Connect C{protocol} to 127.0.0.1:C{port}."""
    return await TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda: protocol))


def hello_site() -> Site:
    root = Resource()
    root.putChild(b"hello", Data(b"hello through the tunnel\n", "text/plain"))
    return Site(root)


async def curl(*args: str) -> tuple[bytes, bytes, int]:
    """curl with C{args}: (stdout, stderr, exit code); never any proxy from the environment."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return await getProcessOutputAndValue("curl", ["-sS", "--max-time", "20", *args], env=env)


class _Duplex(SendPayload):
    """
    Sends C{payload} (honouring pause, as a push producer) while reading
    slowly: after every C{every} bytes it stops reading for C{delay}
    seconds.  Keeps only a hash of what it reads.
    """

    def __init__(self, payload: Payload | None, expect: int, delay: float = 0.008,
                 every: int = 256 * 1024) -> None:
        super().__init__(payload if payload is not None else Payload(0), close=False)
        self._expect = expect
        self._delay = delay
        self._every = every
        self._since = 0
        self.hash = hashlib.sha256()
        self.received = 0
        self.done = defer.Deferred()
        self.reason = None
        self.sent_all = False

    def sent(self) -> None:
        self.sent_all = True
        self._maybe_close()

    def dataReceived(self, data: bytes) -> None:
        self.hash.update(data)
        self.received += len(data)
        self._since += len(data)
        if self._since >= self._every:
            self._since = 0
            self.transport.pauseProducing()
            reactor.callLater(self._delay, self.transport.resumeProducing)
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self.sent_all and self.received >= self._expect and self._expect:
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        self.reason = reason
        self.done.callback(None)


class ForwardersEndToEndTests(TestCase):
    timeout = 120

    async def _setup(self, dial_wait: float = 0.25):
        self.harness = TunnelHarness(self)
        await self.harness.start()
        self.client = await self.harness.connect_client("foo")
        self.stats: dict[str, ForwarderStats] = {}

    def forwarder(self, kind: str, dial_wait: float = 0.25) -> Forwarder:
        stats = self.stats[kind] = ForwarderStats(f"{kind}:test", kind)
        server = self.harness.server
        return Forwarder(server, stats, reactor, dial_wait=dial_wait, reaches=server.reaches)

    async def listen(self, factory) -> int:
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        return port.getHost().port

    async def proxies(self) -> tuple[int, int]:
        connect = await self.listen(ConnectProxyFactory(self.forwarder("connect-proxy")))
        socks = await self.listen(SocksProxyFactory(self.forwarder("socks")))
        return connect, socks

    async def forward(self, client: str, address: str, kind: str = "forward") -> int:
        return await self.listen(PortForwardFactory(self.forwarder(kind, 0), Route(client, "tcp", address)))

    def setUp(self):
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")

    def test_curl_through_connect_and_socks(self):
        """curl reaches a web page behind client foo through both proxies; failures are clear."""

        async def go():
            await self._setup()
            target = (await listen_tcp(hello_site(), self)).getHost().port
            connect, socks = await self.proxies()
            url = f"http://127.0.0.1:{target}/hello"
            for args in (["-p", "--proxy", f"http://foo:x@127.0.0.1:{connect}", url],
                         ["--socks5-hostname", f"127.0.0.1:{socks}", "--proxy-user", "foo:x", url],
                         ["--socks5-hostname", f"127.0.0.1:{socks}",
                          f"http://127.0.0.1.foo.tunnel:{target}/hello"]):
                out, err, code = await curl(*args)
                self.assertEqual((out, code), (b"hello through the tunnel\n", 0), err)
            out, err, code = await curl("-p", "--proxy", f"http://bar:x@127.0.0.1:{connect}", url)
            self.assertEqual(code, 56)
            self.assertIn(b"CONNECT tunnel failed, response 502", err)
            out, err, code = await curl("--socks5-hostname", f"127.0.0.1:{socks}", "--proxy-user", "bar:x",
                                        url)
            self.assertEqual(code, 97)
            self.assertIn(b"(3)", err)  # network unreachable: the client is not connected
            self.assertEqual(self.stats["connect-proxy"].failures, {"client-not-connected": 1})
            self.assertEqual(self.stats["socks"].streams_total, 2)
            await eventually(lambda: self.stats["socks"].streams_open == 0)

        return run(go())

    def test_tls_end_to_end_through_both_proxies(self):
        """TLS from curl to a server only a test CA vouches for: verified for its name, SNI untouched."""

        async def go():
            await self._setup()
            ca, leaf, key = make_ca(self.mktemp())
            target = (await listen_tls(hello_site(), self, leaf, key)).getHost().port
            connect, socks = await self.proxies()
            url = f"https://localhost:{target}/hello"
            for proxy in (["--proxy", f"http://foo:x@127.0.0.1:{connect}"],
                          ["--socks5-hostname", f"127.0.0.1:{socks}", "--proxy-user", "foo:x"]):
                out, err, code = await curl("--cacert", ca, *proxy, url)
                self.assertEqual((out, code), (b"hello through the tunnel\n", 0), err)
                # Another trust root: curl itself refuses the certificate (exit 60).
                other, _, _ = make_ca(self.mktemp(), "other CA")
                out, err, code = await curl("--cacert", other, *proxy, url)
                self.assertEqual(code, 60, err)

        return run(go())

    def test_64mib_both_ways_to_slow_readers_in_bounded_memory(self):
        """
        64 MiB each way at once through a port forward, both readers slow:
        byte-exact, both senders paused, and the Python heap (server,
        client and both ends, in this process) stays far below the data.
        """

        async def go():
            await self._setup()
            up, down = Payload(64 * MiB, seed=1), Payload(64 * MiB, seed=2)
            targets = []

            def target_protocol():
                targets.append(_Duplex(down, expect=0))
                return targets[-1]

            target = (await listen_tcp(Factory.forProtocol(target_protocol), self)).getHost().port
            port = await self.forward("foo", f"127.0.0.1:{target}")
            local = _Duplex(up, expect=down.size)
            tracemalloc.start()
            try:
                await dial(port, local)
                await local.done
                await eventually(lambda: targets and targets[0].reason is not None, timeout=30)
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            self.assertEqual((local.received, local.hash.hexdigest()), (down.size, down.sha256))
            self.assertEqual((targets[0].received, targets[0].hash.hexdigest()), (up.size, up.sha256))
            self.assertTrue(local.reason.check(ConnectionDone), local.reason)
            self.assertGreater(local.pauses, 0)
            self.assertGreater(targets[0].pauses, 0)
            self.assertLess(peak, 24 * MiB, f"peak Python heap {peak / MiB:.1f} MiB")
            self.assertEqual(self.stats["forward"].failures, {})
            await eventually(lambda: self.stats["forward"].streams_open == 0)

        return run(go())

    def test_tunnel_lost_mid_transfer_ends_the_forwarded_connection(self):
        """
        The client goes away while a download runs: the forwarded connection
        ends at once (within 2 s: a margin for a loaded CI machine).
        """

        async def go():
            await self._setup()
            big = Payload(1024 * MiB)
            source = Factory.forProtocol(lambda: _Duplex(big, expect=0))
            target = (await listen_tcp(source, self)).getHost().port
            port = await self.forward("foo", f"127.0.0.1:{target}")
            local = _Duplex(None, expect=big.size, delay=0.001)
            await dial(port, local)
            await eventually(lambda: local.received > 4 * MiB)
            await self.client.stopService()
            started = reactor.seconds()
            await local.done
            self.assertLess(reactor.seconds() - started, 2.0)
            self.assertLess(local.received, big.size)
            self.assertEqual(self.stats["forward"].failures, {"stream-error": 1})

        return run(go())

    def test_caller_leaving_mid_transfer_ends_the_target_connection(self):
        async def go():
            await self._setup()
            big = Payload(1024 * MiB)
            targets = []

            def target_protocol():
                targets.append(_Duplex(big, expect=0))
                return targets[-1]

            target = (await listen_tcp(Factory.forProtocol(target_protocol), self)).getHost().port
            port = await self.forward("foo", f"127.0.0.1:{target}")
            local = _Duplex(None, expect=big.size, delay=0.001)
            await dial(port, local)
            await eventually(lambda: local.received > 4 * MiB)
            local.transport.abortConnection()
            await eventually(lambda: targets[0].reason is not None, timeout=2)
            await eventually(lambda: not self.harness.server.sessions.local_session("foo").streams)

        return run(go())

    def test_bad_input_leaves_the_others_alone(self):
        """Garbage at either proxy: a clear answer and a close; a live stream beside it goes on."""

        async def go():
            await self._setup()
            echo = (await listen_tcp(Factory.forProtocol(Echo), self)).getHost().port
            connect, socks = await self.proxies()
            live = Collector()
            await dial(connect, live)
            live.transport.write(f"CONNECT 127.0.0.1:{echo} HTTP/1.1\r\nHost: x\r\n"
                                 "Proxy-Authorization: Bearer any\r\n\r\n".encode())
            # (Bearer carries no user name: the client comes from... nothing: 407.)
            await live.done
            self.assertIn(b"407 Proxy Authentication Required", b"".join(live.chunks))
            live = Collector()
            await dial(connect, live)
            live.transport.write(f"CONNECT 127.0.0.1.foo.tunnel:{echo} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            await eventually(lambda: live.received)
            self.assertEqual(b"".join(live.chunks), b"HTTP/1.1 200 Connection established\r\n\r\n")
            for where, data, answer in [(connect, b"\x16\x03\x01\x02\x00\r\n\r\n", b"400 Bad Request"),
                                        (socks, b"\x05\x01\x00\x05\x09\x00\x01", b"\x05\x07"),
                                        (socks, b"GET / HTTP/1.1\r\n\r\n", b"not an HTTP proxy")]:
                bad = Collector()
                await dial(where, bad)
                bad.transport.write(data)
                got = await bad.done
                self.assertIn(answer, got)
            before = live.received
            live.transport.write(b"still echoing")
            await eventually(lambda: b"".join(live.chunks).endswith(b"still echoing"))
            self.assertGreater(live.received, before)
            live.transport.loseConnection()
            await live.done

        return run(go())

    def test_refused_at_once_while_the_client_is_away(self):
        """A forward to a client that is not connected: the connection closes at once, no bytes."""

        async def go():
            await self._setup()
            port = await self.forward("nobody", "127.0.0.1:9")
            for _ in range(3):
                caller = Collector()
                await dial(port, caller)
                await caller.done
                self.assertEqual(caller.received, 0)
            self.assertEqual(self.stats["forward"].failures, {"client-not-connected": 3})
            self.assertEqual(self.stats["forward"].streams_total, 0)

        return run(go())
