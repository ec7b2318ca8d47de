"""
The server program's flags for a fleet behind one address: --backlog on
every listener the programs open (checked with C{ss} on the real program's
sockets), listeners wrapped in C{haproxy:} (PROXY protocol v1 and v2: the
caller's address in the logs, /status and the limiter), --also-listen,
--trusted-proxy (X-Forwarded-For on the tunnel path), and the limiter's
--auth-* settings.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import re
import shutil
import struct
import subprocess

import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import SkipTest, TestCase
from twisted.web.client import HTTPConnectionPool

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from remotedialer._tap._listen import Listening, _gates, loopback_only, port_of, with_backlog
from remotedialer.server._forwarded import TrustedProxies
from tests.support import eventually, self_signed_certificate
from tests.system.test_programs import ProgramTestCase, assert_usage_error, parse, run

LOOPBACK = "tcp:0:interface=127.0.0.1"


def listeners(service) -> list[Listening]:  # type: ignore[no-untyped-def]
    """Every listening service under C{service}."""
    found = [service] if isinstance(service, Listening) else []
    for child in getattr(service, "services", ()):
        found += listeners(child)
    return found


class ListenDescriptionTests(TestCase):
    def test_port_and_loopback_through_haproxy(self) -> None:
        for description, port, loopback in (
            ("haproxy:tcp:8123:interface=127.0.0.1", 8123, True),
            ("haproxy:tcp:port=8124:interface=\\:\\:1", 8124, True),
            ("haproxy:tcp:8125", 8125, False),
            ("haproxy:tcp6:8126:interface=\\:\\:", 8126, False),
        ):
            got = (port_of(description), loopback_only(description))
            self.assertEqual(got, (port, loopback), description)

    def test_with_backlog(self) -> None:
        for description, expected in (
            ("tcp:8123", "tcp:8123:backlog=9"),
            ("haproxy:tcp:8123:interface=127.0.0.1", "haproxy:tcp:8123:interface=127.0.0.1:backlog=9"),
            ("ssl:443:privateKey=k.pem", "ssl:443:privateKey=k.pem:backlog=9"),
            ("unix:/run/x.sock", "unix:/run/x.sock:backlog=9"),
            ("tcp:8123:backlog=5", "tcp:8123:backlog=5"),  # its own wins
            ("tcp:8123:interface=a\\:backlog=5", "tcp:8123:interface=a\\:backlog=5:backlog=9"),
            ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),  # takes none
        ):
            self.assertEqual(with_backlog(description, 9), expected)


class AcceptGateTests(TestCase):
    """
    A listener in front of the request-head guard stops accepting while half
    of the guard's pending-heads limit is taken: a burst past the limit waits
    in the kernel's backlog and is served in turn, none closed.
    """

    def test_burst_past_the_pending_limit(self):
        from twisted.internet import defer
        from twisted.web.server import Site
        from twisted.web.static import Data

        from remotedialer.protocol._limits import UpgradeLimits
        from remotedialer.server._guard import HeaderGuardFactory

        async def go():
            guard = HeaderGuardFactory(Site(Data(b"ok", "text/plain")), UpgradeLimits(max_pending=400))
            listening = Listening("listen", LOOPBACK, guard)
            listening.privilegedStartService()
            listening.startService()
            self.addCleanup(listening.stopService)
            port = (await listening._waitingForPort).getHost().port
            raws = [_Raw(b"") for _ in range(1000)]  # each connects and says nothing yet: its head is pending
            await defer.gatherResults([
                TCP4ClientEndpoint(reactor, "127.0.0.1", port).connect(Factory.forProtocol(lambda r=raw: r))
                for raw in raws])
            for raw in raws:
                self.addCleanup(raw.transport.abortConnection)
            await eventually(lambda: guard.pending >= 200)
            for raw in raws:
                raw.transport.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await eventually(lambda: all(r.received.startswith(b"HTTP/1.1 ") or r.lost for r in raws),
                             timeout=30)
            self.assertEqual(len([r for r in raws if r.lost]), 0)  # the guard closed none
            self.assertGreater(_gates[guard].pauses, 0)

        return run(go())


class FleetOptionsTests(TestCase):
    def test_backlog_on_every_listener(self) -> None:
        """The default, 4096, and --backlog reach every listener of both programs; backlog= wins."""
        flags = ["--listen", LOOPBACK, "--frontdoor-listen", LOOPBACK, "--admin-listen", "0",
                 "--also-listen", "haproxy:" + LOOPBACK, "--forward", f"{LOOPBACK}=foo:tcp/127.0.0.1:6443",
                 "--connect-proxy-listen", LOOPBACK, "--socks-listen", "tcp:0:interface=127.0.0.1:backlog=7"]
        for extra, backlog in (([], 4096), (["--backlog", "1000"], 1000)):
            top = server_tap.makeService(parse(server_tap.Options, flags + extra))
            found = [listening.description for listening in listeners(top)]
            self.assertEqual(len(found), 7, found)
            for description in found:
                wanted = 7 if "socks" in description or description.endswith("backlog=7") else backlog
                self.assertTrue(description.endswith(f":backlog={wanted}"), description)
            client = client_tap.makeService(parse(client_tap.Options, ["--admin-listen", "0", *extra]))
            [admin] = listeners(client)
            self.assertTrue(admin.description.endswith(f":backlog={backlog}"))

    def test_bad_backlog(self) -> None:
        assert_usage_error(self, ["--backlog", "0"], "--backlog must be 1 or more")
        assert_usage_error(self, ["--backlog", "many"], "--backlog 'many' is not a whole number")
        assert_usage_error(self, ["--backlog", "0"], "--backlog", options=client_tap.Options)

    def test_auth_flags(self) -> None:
        options = parse(server_tap.Options, [])
        limiter = server_tap.makeService(options).server._resource._limiter
        self.assertEqual((limiter._interval, limiter._tolerance, limiter._max_waiting), (2.0, 18.0, 4))
        options = parse(server_tap.Options, ["--auth-failures-per-second", "4", "--auth-failure-burst", "3",
                                             "--auth-max-waiting", "9", "--auth-forget-after", "60",
                                             "--auth-max-failing-ids", "12"])
        limiter = server_tap.makeService(options).server._resource._limiter
        self.assertEqual((limiter._interval, limiter._tolerance, limiter._max_waiting, limiter._forget_after,
                          limiter._max_ids), (0.25, 0.5, 9, 60.0, 12))
        for flag in ("--auth-failures-per-second", "--auth-failure-burst", "--auth-max-waiting",
                     "--auth-forget-after", "--auth-max-failing-ids"):
            assert_usage_error(self, [flag, "0"], flag, "must be over 0")

    def test_trusted_proxy(self) -> None:
        options = parse(server_tap.Options, ["--trusted-proxy", "10.0.0.0/8", "--trusted-proxy", "fd00::1"])
        proxies = server_tap.makeService(options).server._resource._proxies
        self.assertEqual(proxies, TrustedProxies.parse(["10.0.0.0/8", "fd00::1/128"]))
        self.assertEqual(parse(server_tap.Options, [])["trusted_proxies"], TrustedProxies())
        assert_usage_error(self, ["--trusted-proxy", "10.0.0.0/33"], "--trusted-proxy", "10.0.0.0/33")
        assert_usage_error(self, ["--trusted-proxy", "ingress"], "--trusted-proxy", "not an address")

    def test_haproxy_listeners(self) -> None:
        options = parse(server_tap.Options, ["--listen", "haproxy:tcp:9998:interface=127.0.0.1",
                                             "--also-listen", "tcp:9999:interface=127.0.0.1"])
        own = options["frontdoor_access"].own
        self.assertTrue(own.holds("127.0.0.1", 9998) and own.holds("127.0.0.1", 9999))  # (never dialed)
        assert_usage_error(self, ["--listen", "haproxy:ssl:8443:privateKey=k.pem"],
                           "--listen", "the PROXY header comes before TLS")
        assert_usage_error(self, ["--also-listen", "haproxy:ssl:8443:privateKey=k.pem"], "--also-listen")
        assert_usage_error(self, ["--also-listen", "bogus:1"], "--also-listen 'bogus:1'")

    def test_tls_inside_haproxy(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        cert, key = self_signed_certificate(directory)
        tls = ["--tls-cert", cert, "--tls-key", key]
        options = parse(server_tap.Options, ["--listen", "haproxy:" + LOOPBACK, *tls])
        self.assertIsNotNone(options["tls_options"])
        parse(server_tap.Options, ["--listen", LOOPBACK, "--also-listen", "haproxy:" + LOOPBACK, *tls])
        assert_usage_error(self, ["--listen", LOOPBACK, "--also-listen", "unix:/tmp/x", *tls],
                           "--also-listen")


def _upgrade(client_id: str, extra: bytes = b"") -> bytes:
    key = base64.b64encode(os.urandom(16))
    return (b"GET /connect HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + key + b"\r\n"
            b"X-Tunnel-ID: " + client_id.encode() + b"\r\n" + extra + b"\r\n")


def _proxy_v2(source: str, source_port: int, dest_port: int) -> bytes:
    """A PROXY protocol v2 header (TCP over IPv4 or IPv6) from C{source}."""
    src = ipaddress.ip_address(source)
    family = 0x11 if src.version == 4 else 0x21
    dst = ipaddress.ip_address("127.0.0.1" if src.version == 4 else "::1")
    body = src.packed + dst.packed + struct.pack("!HH", source_port, dest_port)
    return b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, family]) + struct.pack("!H", len(body)) + body


class _Raw(Protocol):
    """Sends C{data} on connect; collects what comes back."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.received = b""
        self.lost = False

    def connectionMade(self) -> None:
        self.transport.write(self.data)

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason=None) -> None:  # type: ignore[no-untyped-def]
        self.lost = True


class FleetProgramTests(ProgramTestCase):
    async def ports(self, program, *names: str) -> list[int]:  # type: ignore[no-untyped-def]
        pattern = (rb"(admin endpoint|front door|tunnel listener \(PROXY\)|tunnel listener|\w+) "
                   rb"starting on (\d+)")

        def found():  # type: ignore[no-untyped-def]
            return {m.group(1): int(m.group(2)) for m in re.finditer(pattern, program.out)}

        wanted = [name.encode() for name in names]
        await eventually(lambda: all(n in found() for n in wanted) or not program.running, timeout=30)
        ports = found()
        self.assertTrue(all(n in ports for n in wanted), program.out + program.err)
        return [ports[n] for n in wanted]

    async def send(self, port: int, data: bytes, bind: str | None = None) -> _Raw:
        raw = _Raw(data)
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port,
                                      bindAddress=(bind, 0) if bind else None)
        await endpoint.connect(Factory.forProtocol(lambda: raw))
        self.addCleanup(lambda: raw.transport.abortConnection())
        await eventually(lambda: b"\r\n\r\n" in raw.received or raw.lost, timeout=10)
        return raw

    async def status(self, admin: int) -> dict[str, str]:
        pool = HTTPConnectionPool(reactor, persistent=False)
        response = await treq.get(f"http://127.0.0.1:{admin}/status", pool=pool)
        status = json.loads(await response.content())
        return {c["client_key"]: c["sessions"][0]["remote"] for c in status["clients"]}

    def test_proxy_protocol(self):
        """
        A haproxy: listener beside a plain one: PROXY v1 and v2 callers are
        known by the header's address (/status, the log, the limiter's log
        line); a connection without the header is closed unanswered; the
        plain listener's callers are themselves.
        """

        async def go():
            server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                "--listen", "haproxy:" + LOOPBACK, "--also-listen", LOOPBACK,
                                "--admin-listen", LOOPBACK, "--auth-failure-burst", "1")
            proxied, plain, admin = await self.ports(server, "tunnel listener (PROXY)", "tunnel listener",
                                                     "admin endpoint")
            v1 = await self.send(proxied, b"PROXY TCP4 203.0.113.9 127.0.0.1 5555 8123\r\n" + _upgrade("v1"))
            v2 = await self.send(proxied, _proxy_v2("2001:db8::7", 6000, 8123) + _upgrade("v2"))
            direct = await self.send(plain, _upgrade("direct"))
            bare = await self.send(proxied, _upgrade("bare"))
            for raw in (v1, v2, direct):
                self.assertTrue(raw.received.startswith(b"HTTP/1.1 101 "), raw.received)
            self.assertEqual((bare.received, bare.lost), (b"", True))
            remotes = await self.status(admin)
            self.assertEqual(remotes["v1"], "203.0.113.9:5555")
            self.assertEqual(remotes["v2"], "[2001:db8::7]:6000")
            self.assertRegex(remotes["direct"], r"^127\.0\.0\.1:\d+$")
            self.assertNotIn("bare", remotes)
            self.assertIn(b"client v1 session ", server.out)
            self.assertIn(b"up from 203.0.113.9:5555", server.out)
            # A refusal names the header's address too (the limiter keys on it).
            refused = await self.send(proxied, b"PROXY TCP4 198.51.100.3 127.0.0.1 7000 8123\r\n"
                                      + _upgrade("bad\x7fid"))
            self.assertTrue(refused.received.startswith(b"HTTP/1.1 400 "), refused.received)
            await eventually(lambda: b"refused tunnel from 198.51.100.3:7000: 400" in server.out)
            await server.terminate()
            self.assertNotIn(b"Traceback", server.out + server.err)

        return run(go())

    def test_trusted_proxy(self):
        """X-Forwarded-For names the caller when the peer is a trusted proxy, and only then."""

        async def go():
            server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                "--listen", "tcp:0:interface=0.0.0.0", "--trusted-proxy", "127.0.0.2/32",
                                "--admin-listen", LOOPBACK)
            port, admin = await self.ports(server, "tunnel listener", "admin endpoint")
            forwarded = b"X-Forwarded-For: 192.0.2.1, 198.51.100.7, 127.0.0.2\r\n"
            via_proxy = await self.send(port, _upgrade("proxied", forwarded), bind="127.0.0.2")
            spoofed = await self.send(port, _upgrade("spoofed", forwarded), bind="127.0.0.3")
            for raw in (via_proxy, spoofed):
                self.assertTrue(raw.received.startswith(b"HTTP/1.1 101 "), raw.received)
            remotes = await self.status(admin)
            self.assertEqual(remotes["proxied"], "198.51.100.7:0")
            self.assertRegex(remotes["spoofed"], r"^127\.0\.0\.3:\d+$")
            await server.terminate()
            self.assertNotIn(b"Traceback", server.out + server.err)

        return run(go())

    def test_backlog_of_the_real_sockets(self):
        """The kernel's own view (ss: Send-Q of a listening socket is its backlog)."""
        if shutil.which("ss") is None:
            raise SkipTest("needs ss (iproute2)")

        def backlog(port: int) -> int:
            out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                                 check=True).stdout.split()
            return int(out[2])

        async def go():
            try:  # (the kernel caps every backlog at net.core.somaxconn)
                with open("/proc/sys/net/core/somaxconn") as f:
                    cap = int(f.read())
            except (OSError, ValueError):
                cap = 4096
            for extra, wanted in (([], min(4096, cap)), (["--backlog", "77"], min(77, cap))):
                server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                    "--listen", LOOPBACK, "--also-listen", "haproxy:" + LOOPBACK,
                                    "--frontdoor-listen", LOOPBACK, "--admin-listen", LOOPBACK, *extra)
                ports = await self.ports(server, "tunnel listener", "tunnel listener (PROXY)", "front door",
                                         "admin endpoint")
                self.assertEqual([backlog(p) for p in ports], [wanted] * 4)
                await server.terminate()
                self.assertNotIn(b"Traceback", server.out + server.err)

        return run(go())

