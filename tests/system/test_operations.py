"""
The programs as an operator runs them: reconnect backoff, secrets and
headers from files, and real twistd processes -- JSON logs, a graceful
drain on SIGTERM with a transfer in flight (it completes, and the client
moves to another server), and peers found through a real DNS server.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket

import treq
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater
from twisted.names import dns, server
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from twisted.web.static import Data

from remotedialer._tap import client as client_tap
from remotedialer.client._client import reconnect_policy
from tests.server.test_discovery import MemoryZone
from tests.support import eventually, listen_tcp, wait
from tests.system.test_programs import Program, ProgramTestCase


class ReconnectPolicyTests(SynchronousTestCase):
    def test_window_grows_and_is_capped(self):
        rng = random.Random(5)
        policy = reconnect_policy(10.0, random=rng.random)
        for attempt, (low, high) in {1: (0.5, 1.0), 2: (1.0, 2.0), 3: (2.0, 4.0), 4: (4.0, 8.0),
                                     5: (5.0, 10.0), 40: (5.0, 10.0)}.items():
            delays = [policy(attempt) for _ in range(200)]
            self.assertTrue(all(low <= d <= high for d in delays), (attempt, min(delays), max(delays)))
            self.assertGreater(max(delays) - min(delays), (high - low) / 2)  # jitter spreads them

    def test_option(self):
        options = client_tap.Options()
        options.parseOptions(["--reconnect-max", "3"])
        service = client_tap.makeService(options)
        self.assertTrue(all(service._retry_policy(n) <= 3.0 for n in range(1, 30)))
        for bad in ("0", "-1", "x"):
            with self.assertRaises(usage.UsageError):
                client_tap.Options().parseOptions(["--reconnect-max", bad])


class DrainTimeoutOptionTests(SynchronousTestCase):
    def test_option(self):
        from remotedialer._tap import server as server_tap

        options = server_tap.Options()
        options.parseOptions(["--insecure-any-client"])
        self.assertEqual(server_tap.makeService(options).drain_timeout, 30.0)
        options = server_tap.Options()
        options.parseOptions(["--insecure-any-client", "--drain-timeout", "2.5"])
        self.assertEqual(server_tap.makeService(options).drain_timeout, 2.5)
        for bad in ("-1", "soon"):
            with self.assertRaises(usage.UsageError) as caught:
                server_tap.Options().parseOptions(["--insecure-any-client", "--drain-timeout", bad])
            self.assertIn("--drain-timeout", str(caught.exception))


class NumberFlagTests(SynchronousTestCase):
    def test_every_number_flag_names_itself(self):
        """A number flag given a word: the one-line usage error says which flag."""
        from remotedialer._tap import server as server_tap

        checked = 0
        programs = ((server_tap.Options, ["--insecure-any-client"]), (client_tap.Options, []))
        for options_class, base in programs:
            for entry in options_class.optParameters:
                if len(entry) < 5 or not callable(entry[4]):
                    continue
                with self.assertRaises(usage.UsageError) as caught:
                    options_class().parseOptions([*base, f"--{entry[0]}", "lots"])
                self.assertIn(f"--{entry[0]} 'lots' is not", str(caught.exception))
                checked += 1
        self.assertGreater(checked, 20)


class HeaderFileTests(SynchronousTestCase):
    def write(self, text: str) -> str:
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_headers_from_file(self):
        path = self.write("# gateway credentials\nX-Gateway-Key: s3cret value\n\nX-Region:eu-1\n")
        options = client_tap.Options()
        options.parseOptions(["--header-file", path, "--header", "X-Region: us-2"])
        self.assertEqual(options["headers"], {"X-Gateway-Key": "s3cret value", "X-Region": "us-2"})
        service = client_tap.makeService(options)
        self.assertEqual(service._rotation._headers["X-Gateway-Key"], "s3cret value")

    def test_mistakes_name_the_line_not_the_secret(self):
        for bad in ("no colon s3cret", ": s3cret", "Bad Name: s3cret"):
            text = f"X-Good: 1\n{bad}\n"
            with self.assertRaises(usage.UsageError) as caught:
                client_tap.Options().parseOptions(["--header-file", self.write(text)])
            message = str(caught.exception)
            self.assertIn("line 2", message)
            self.assertNotIn("s3cret", message)
        with self.assertRaises(usage.UsageError) as caught:
            client_tap.Options().parseOptions(["--header-file", "/nonexistent/headers"])
        self.assertIn("--header-file", str(caught.exception))


class _Slow(Resource):
    """
    A download served in small pieces, its last one held back until the test
    calls C{release}: certainly still in flight when SIGTERM comes.
    """

    isLeaf = True

    def __init__(self, body: bytes, piece: int = 32 * 1024, every: float = 0.01) -> None:
        super().__init__()
        self.body = body
        self.piece = piece
        self.every = every
        self.started = 0
        self.calls: list = []
        self.released = defer.Deferred()

    def render_GET(self, request):
        self.started += 1
        request.setHeader(b"content-length", str(len(self.body)).encode())
        pieces = [self.body[i:i + self.piece] for i in range(0, len(self.body), self.piece)]
        gone: list = []
        request.notifyFinish().addBoth(gone.append)

        def step():
            if gone:
                return
            if len(pieces) == 1 and not self.released.called:
                self.released.addCallback(lambda _: step())
                return
            if pieces:
                request.write(pieces.pop(0))
                self.calls.append(reactor.callLater(self.every, step))
            else:
                request.finish()

        step()
        return NOT_DONE_YET

    def cancel(self):
        for call in self.calls:
            if call.active():
                call.cancel()


def _port_of(program: Program) -> int:
    found = re.search(rb"starting on (\d+)", program.out)
    assert found is not None, program.out + program.err
    return int(found.group(1))


def _json_lines(program: Program) -> list[dict]:
    return [json.loads(line) for line in program.out.decode().splitlines() if line.strip()]


class ProgramTests(ProgramTestCase):
    timeout = 60

    async def _server(self, *args: str, listen: str = "tcp:0:interface=127.0.0.1") -> tuple[Program, int]:
        program = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                             "--listen", listen, *args)
        await eventually(lambda: b"starting on" in program.out or not program.running, timeout=30)
        return program, _port_of(program)

    async def _peers_on_one_port(self, *args: str) -> tuple[Program, Program, int]:
        """
        Servers on 127.0.0.1 and 127.0.0.2 with one port, each finding the
        other through --peers-dns rd.peers.test:PORT.  The port is free when
        chosen, but another process may bind it before a server starts: then
        (and only then) both start again on another.
        """
        for _ in range(5):
            port = _free_port_on_both()
            common = [*args, "--peers-dns", f"rd.peers.test:{port}"]
            a = await self._listening("--id", f"127.0.0.1:{port}", *common,
                                      listen=f"tcp:{port}:interface=127.0.0.1")
            b = a and await self._listening("--id", f"127.0.0.2:{port}", *common,
                                            listen=f"tcp:{port}:interface=127.0.0.2")
            if a and b:
                return a, b, port
            if a:
                await a.terminate()
        self.fail("no port stayed free on both 127.0.0.1 and 127.0.0.2")

    async def _listening(self, *args: str, listen: str) -> Program | None:
        """The server program, listening; None if its port was taken (any other failure fails)."""
        program = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                             "--listen", listen, *args)
        await eventually(lambda: b"starting on" in program.out or not program.running, timeout=30)
        if b"starting on" in program.out:
            return program
        await program.ended
        self.assertIn(b"--listen: cannot listen on", program.out + program.err)
        return None

    async def _until_200(self, url: str, pool, *watch: Program) -> bytes:
        for _ in range(300):
            response = await treq.get(url, pool=pool)
            body = await response.content()
            if response.code == 200:
                return body
            for program in watch:
                self.assertTrue(program.running, program.out + program.err)
            await wait(0.05)
        self.fail(f"{url} never answered 200")

    def test_drain_on_sigterm(self):
        """
        SIGTERM with a download in flight through server A: A refuses new
        front-door requests (503) while the download completes intact, then
        exits; the client, given A and B, is reachable through B.  Both
        programs log JSON lines, each tunnel's up and down among them.
        """

        async def go():
            body = random.Random(7).randbytes(1024 * 1024 + 3)
            slow = _Slow(body)
            self.addCleanup(slow.cancel)
            root = Resource()
            root.putChild(b"slow", slow)
            root.putChild(b"hello", Data(b"hello", "text/plain"))
            target = await listen_tcp(Site(root), self)
            target_address = f"127.0.0.1:{target.getHost().port}"
            a, a_port = await self._server("--drain-timeout", "20", "--log-format", "json")
            b, b_port = await self._server()
            client = self.spawn("-n", "--pidfile=", "remotedialer-client", "--log-format", "json",
                                "--connect", f"ws://127.0.0.1:{a_port}/connect,ws://127.0.0.1:{b_port}/connect",
                                "--id", "foo", "--allow", f"tcp/{target_address}", "--reconnect-max", "1")
            pool = HTTPConnectionPool(reactor, persistent=False)

            def url(port, path):
                return f"http://127.0.0.1:{port}/client/foo/http/{target_address}/{path}"

            await self._until_200(url(a_port, "hello"), pool, a, client)
            download = treq.get(url(a_port, "slow"), pool=pool).addCallback(treq.content)
            finished: list = []
            download.addBoth(lambda result: finished.append(True) or result)
            await eventually(lambda: slow.started == 1 and len(slow.calls) > 3, timeout=10)
            a.transport.signalProcess("TERM")
            await eventually(lambda: b"draining" in a.out, timeout=10)
            refused = await treq.get(url(a_port, "hello"), pool=pool)
            self.assertEqual((refused.code, await refused.content()), (503, b"server is shutting down"))
            self.assertTrue(a.running)
            self.assertEqual(finished, [])  # still in flight
            slow.released.callback(None)
            got = await download
            self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(body).hexdigest())
            self.assertEqual(await a.ended, None)  # twistd re-raises SIGTERM once stopped
            self.assertEqual(await self._until_200(url(b_port, "hello"), pool, b, client), b"hello")

            records = _json_lines(a)
            texts = [r["text"] for r in records]
            self.assertTrue(any("drain: streams finished" in t for t in texts), texts)
            up = [r for r in records if r.get("kind") == "client" and "up from" in r["text"]]
            down = [r for r in records if r.get("kind") == "client" and "down after" in r["text"]]
            self.assertEqual([(r["client_key"], r["level"]) for r in up], [("foo", "info")])
            self.assertEqual([r["reason"] for r in down], ["server is shutting down"])
            self.assertGreater(down[0]["lived"], 0.0)
            self.assertEqual(up[0]["session_id"], down[0]["session_id"])
            for record in records:
                self.assertEqual({"time", "level", "namespace", "text"} - record.keys(), set(), record)
            client_records = [r for r in _json_lines(client) if "tunnel to" in r["text"]]
            self.assertTrue(any(f":{b_port}/connect up" in r["text"] for r in client_records), client_records)
            # The client heard why (the drain's close frame, 1001 going away), not "closed uncleanly".
            [a_down] = [r for r in client_records if f":{a_port}/connect down after" in r["text"]]
            self.assertEqual(a_down["reason"], "tunnel closed: server is shutting down", client_records)
            for program in (a, b, client):
                self.assertNotIn(b"Traceback", program.out + program.err)
            await client.terminate()
            await b.terminate()
            self.assertIn(b"tunnel to", client.out)

        return defer.Deferred.fromCoroutine(go())

    def test_peers_found_through_dns(self):
        """
        Two servers on 127.0.0.1 and 127.0.0.2, the same port, find each
        other through a real DNS server; a client of the first is reached
        through the second; when DNS stops listing the second, the first
        lets it go.
        """

        async def go():
            zone = MemoryZone()
            factory = server.DNSServerFactory(authorities=[zone])
            factory.noisy = False
            udp = reactor.listenUDP(0, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
            self.addCleanup(udp.stopListening)
            zone.set("rd.peers.test", ["127.0.0.1", "127.0.0.2"])
            token = os.path.abspath(self.mktemp())
            secret = "peer-" + random.Random(1).randbytes(8).hex()
            with open(token, "w") as f:
                f.write(secret + "\n")
            a, b, port = await self._peers_on_one_port(
                "--token-file", token, "--peers-dns-server", f"127.0.0.1:{udp.getHost().port}",
                "--peers-dns-interval", "0.3")
            root = Resource()
            root.putChild(b"hello", Data(b"hello via a peer", "text/plain"))
            target = await listen_tcp(Site(root), self)
            target_address = f"127.0.0.1:{target.getHost().port}"
            client = self.spawn("-n", "--pidfile=", "remotedialer-client", "--connect",
                                f"ws://127.0.0.1:{port}/connect", "--id", "foo",
                                "--allow", f"tcp/{target_address}")
            pool = HTTPConnectionPool(reactor, persistent=False)
            through_b = f"http://127.0.0.2:{port}/client/foo/http/{target_address}/hello"
            self.assertEqual(await self._until_200(through_b, pool, a, b, client), b"hello via a peer")
            self.assertIn(f"peer discovery: 127.0.0.2:{port} found".encode(), a.out)
            self.assertIn(f"peer discovery: 127.0.0.1:{port} found".encode(), b.out)
            self.assertNotIn(f"127.0.0.1:{port} found".encode(), a.out)  # not itself

            zone.set("rd.peers.test", ["127.0.0.1"])
            await eventually(lambda: f"127.0.0.2:{port} gone from".encode() in a.out, timeout=10)
            for program in (a, b, client):
                self.assertNotIn(b"Traceback", program.out + program.err)
                self.assertNotIn(secret.encode(), program.out + program.err)
            await deferLater(reactor, 0, lambda: None)

        return defer.Deferred.fromCoroutine(go())

    def test_missing_tls_key_is_one_line(self):
        """A TLS key file that is not there: one line naming the flags, exit status 1."""

        async def go():
            missing = os.path.abspath(os.path.join(self.mktemp(), "key.pem"))
            program = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                 "--tls-cert", missing, "--tls-key", missing)
            await eventually(lambda: not program.running, timeout=30)
            self.assertEqual(await program.ended, 1)
            output = program.out + program.err
            self.assertNotIn(b"Traceback", output)
            [line] = [line for line in output.splitlines() if b"--tls-cert/--tls-key" in line]
            self.assertIn(b"No such file or directory", line)

        return defer.Deferred.fromCoroutine(go())


def _free_port_on_both() -> int:
    """A TCP port free on 127.0.0.1 and on 127.0.0.2 (both loopback on Linux)."""
    for _ in range(20):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.2", port))
                except OSError:
                    continue
        return port
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")
