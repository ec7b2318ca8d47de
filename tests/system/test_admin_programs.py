"""
The programs' admin endpoint (--admin-listen): its flags, and the real
C{twistd -n remotedialer-server/-client} serving /metrics, /status and
/readyz while a tunnel carries traffic.
"""

from __future__ import annotations

import json
import os
import re

import treq
from twisted.internet import defer, reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from remotedialer._tap._admin import ClientProgram, loopback_only
from remotedialer.server._auth import hash_token
from tests.support import eventually, listen_tcp, wait
from tests.system.test_programs import Program, ProgramTestCase, parse


def run(coroutine):
    return defer.Deferred.fromCoroutine(coroutine)


class AdminOptionsTests(TestCase):
    def test_off_unless_given(self):
        self.assertIsNone(parse(server_tap.Options, []).get("admin_listen"))
        self.assertIsNone(server_tap.makeService(parse(server_tap.Options, [])).admin)
        client = client_tap.makeService(parse(client_tap.Options, []))
        self.assertNotIsInstance(client, ClientProgram)

    def test_a_bare_port_is_loopback(self):
        for options_class in (server_tap.Options, client_tap.Options):
            options = parse(options_class, ["--admin-listen", "9125"])
            self.assertEqual(options["admin_listen"], "tcp:9125:interface=127.0.0.1")
            options = parse(options_class, ["--admin-listen", "tcp:9125"])
            self.assertEqual(options["admin_listen"], "tcp:9125")

    def test_bad_endpoint(self):
        for options_class in (server_tap.Options, client_tap.Options):
            for value, expected in [
                ("bogus:1", "--admin-listen 'bogus:1': "),
                ("99999", "--admin-listen 'tcp:99999:interface=127.0.0.1': port 99999 is not 0-65535"),
                ("tcp:port=70000", "--admin-listen 'tcp:port=70000': port 70000 is not 0-65535"),
            ]:
                with self.assertRaises(usage.UsageError) as caught:
                    parse(options_class, ["--admin-listen", value])
                self.assertIn(expected, str(caught.exception))
                self.assertNotIn("\n", str(caught.exception))

    def test_loopback_only(self):
        """What the listener warns about: an admin endpoint another host could reach."""
        cases = [("tcp:9125:interface=127.0.0.1", True), (r"tcp6:9125:interface=\:\:1", True),
                 ("ssl:9125:privateKey=k.pem:interface=localhost", True), ("unix:/run/admin.sock", True),
                 # How a dual-stack listener names 127.0.0.1 (ipaddress: not loopback before 3.13).
                 (r"tcp6:9125:interface=\:\:ffff\:127.0.0.1", True),
                 (r"tcp6:9125:interface=\:\:ffff\:10.0.0.1", False),
                 ("tcp:9125", False), ("tcp:9125:interface=0.0.0.0", False),
                 ("tcp:9125:interface=10.0.0.1", False)]
        for description, expected in cases:
            self.assertEqual(loopback_only(description), expected, description)

    def test_readiness_checks(self):
        """The server program is ready once its tunnel listener listens, and not while it drains."""
        top = server_tap.makeService(parse(server_tap.Options, ["--admin-listen", "0"]))
        self.assertEqual(top.admin.not_ready(), ["the tunnel listener is not listening"])
        top.server.draining = True
        self.assertIn("draining: the server is shutting down", top.admin.not_ready())

    def test_forwarders_in_metrics_and_status(self):
        """The server program's forwarder listeners: their counters in /metrics and /status."""
        top = server_tap.makeService(parse(server_tap.Options, [
            "--admin-listen", "0", "--forward", "tcp:0:interface=127.0.0.1=foo:tcp/127.0.0.1:6443"]))
        [stats] = top.forwarders
        stats.accepted()
        stats.failed("client-not-connected")
        [section] = top.admin.status()["forwarders"]
        self.assertEqual((section["kind"], section["connections"], section["failures"]),
                         ("forward", 1, {"client-not-connected": 1}))
        registry = top.admin.registry
        labels = {"forwarder": stats.name, "kind": "forward"}
        self.assertEqual(registry.get_sample_value("remotedialer_forwarder_connections_total", labels), 1)
        self.assertEqual(registry.get_sample_value("remotedialer_forwarder_failures_total",
                                                   {**labels, "reason": "client-not-connected"}), 1)
        self.assertEqual(registry.get_sample_value("remotedialer_forwarder_streams_open", labels), 0)

    def test_label_flags(self):
        options = parse(server_tap.Options, ["--admin-listen", "0", "--metrics-addr-label",
                                             "--metrics-no-clientkey-label"])
        top = server_tap.makeService(options)
        counters = top.server.session_factory.observer
        self.assertTrue(counters.options.addr_label)
        self.assertFalse(counters.options.clientkey_label)
        program = client_tap.makeService(parse(client_tap.Options, ["--admin-listen", "0"]))
        self.assertIsInstance(program, ClientProgram)
        options = program.client.session_factory.observer.options
        self.assertEqual((options.addr_label, options.clientkey_label), (False, True))


async def _get(url, pool):
    response = await treq.get(url, pool=pool)
    return response.code, await response.content()


class AdminProgramTests(ProgramTestCase):

    async def ports(self, program: Program, *names: str) -> list[int]:
        """The ports the program's listeners (by log prefix) said they started on."""

        def found():
            return {m.group(1): int(m.group(2))
                    for m in re.finditer(rb"(admin endpoint|tunnel listener|\w+) starting on (\d+)",
                                         program.out)}

        wanted = [name.encode() for name in names]
        await eventually(lambda: all(n in found() for n in wanted) or not program.running, timeout=30)
        ports = found()
        self.assertTrue(all(n in ports for n in wanted), program.out + program.err)
        return [ports[n] for n in wanted]

    def test_programs_serve_metrics_and_status(self):
        """
        The real programs with --admin-listen: readiness follows the tunnel,
        /metrics and /status show the client and its traffic, and no token
        appears anywhere.
        """

        async def go():
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            root = Resource()
            root.putChild(b"hello", Data(b"hello through the tunnel", "text/plain"))
            target = await listen_tcp(Site(root), self)
            target_address = f"127.0.0.1:{target.getHost().port}"
            token = "admin-test-t0ken"
            with open(os.path.join(directory, "clients"), "w") as f:
                f.write(f"sub sha256:{hash_token(token)}\n")
            with open(os.path.join(directory, "token"), "w") as f:
                f.write(token + "\n")

            server = self.spawn("-n", "--pidfile=", "remotedialer-server",
                                "--listen", "tcp:0:interface=127.0.0.1",
                                "--clients-file", os.path.join(directory, "clients"),
                                "--admin-listen", "tcp:0:interface=127.0.0.1")
            port, server_admin = await self.ports(server, "tunnel listener", "admin endpoint")
            admin_url = f"http://127.0.0.1:{server_admin}"
            pool = HTTPConnectionPool(reactor, persistent=False)
            self.assertEqual(await _get(admin_url + "/healthz", pool), (200, b"ok\n"))
            self.assertEqual(await _get(admin_url + "/readyz", pool), (200, b"ready\n"))
            # The same request-head limits as the tunnel's listener.
            response = await treq.get(admin_url + "/healthz", headers={"X-Big": "x" * 70_000}, pool=pool)
            await response.content()
            self.assertEqual(response.code, 431)

            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"ws://127.0.0.1:{port}/connect", "--id", "sub",
                                "--token-file", os.path.join(directory, "token"),
                                "--allow", f"tcp/{target_address}",
                                "--admin-listen", "tcp:0:interface=127.0.0.1")
            [client_admin] = await self.ports(client, "admin endpoint")
            client_url = f"http://127.0.0.1:{client_admin}"
            for _ in range(200):
                code, _body = await _get(client_url + "/readyz", pool)
                if code == 200 or not client.running:
                    break
                self.assertEqual(code, 503)
                await wait(0.05)
            self.assertEqual(code, 200, client.out + client.err)

            code, body = await _get(f"http://127.0.0.1:{port}/client/sub/http/{target_address}/hello", pool)
            self.assertEqual((code, body), (200, b"hello through the tunnel"))

            code, metrics = await _get(admin_url + "/metrics", pool)
            self.assertEqual(code, 200)
            for line in (b'session_server_total_add_websocket_session{clientkey="sub",peer="false"} 1.0\n',
                         b'session_server_total_add_connections{addr="",clientkey="sub",proto="tcp"} 1.0\n',
                         b'remotedialer_sessions{kind="client"} 1.0\n',
                         b"# TYPE session_server_total_receive_bytes counter\n",
                         b"process_cpu_seconds_total "):
                self.assertIn(line, metrics)
            code, body = await _get(admin_url + "/status", pool)
            status = json.loads(body)
            [entry] = status["clients"]
            self.assertEqual((entry["client_key"], len(entry["sessions"])), ("sub", 1))
            self.assertGreater(entry["bytes_received"], len(b"hello through the tunnel"))

            code, metrics = await _get(client_url + "/metrics", pool)
            self.assertIn(b"remotedialer_tunnel_connected 1.0\n", metrics)
            self.assertIn(b'remotedialer_dial_duration_seconds_count{outcome="connected"} 1.0\n', metrics)
            code, body = await _get(client_url + "/status", pool)
            tunnel = json.loads(body)["tunnel"]
            self.assertEqual((tunnel["state"], tunnel["url"]), ("connected", f"ws://127.0.0.1:{port}/connect"))
            code, page = await _get(client_url + "/", pool)
            self.assertEqual(code, 200)

            for url in (admin_url, client_url):
                for path in ("/status", "/metrics", "/"):
                    self.assertNotIn(token.encode(), (await _get(url + path, pool))[1])
            for program in (client, server):
                await program.terminate()
                self.assertNotIn(b"Traceback", program.out + program.err)

        return run(go())

    def test_busy_admin_port_is_one_line(self):
        async def go():
            busy = await listen_tcp(Factory.forProtocol(Protocol), self)
            busy_port = busy.getHost().port
            for program_args in (["remotedialer-server", "--insecure-any-client",
                                  "--listen", "tcp:0:interface=127.0.0.1"],
                                 ["remotedialer-client"]):
                program = self.spawn("-n", "--pidfile=", *program_args,
                                     "--admin-listen", f"tcp:{busy_port}:interface=127.0.0.1")
                await eventually(lambda p=program: not p.running, timeout=30)
                self.assertEqual(await program.ended, 1)
                output = program.out + program.err
                self.assertNotIn(b"Traceback", output)
                self.assertIn(b"--admin-listen: cannot listen on 127.0.0.1:%d: " % busy_port, output)

        return run(go())
