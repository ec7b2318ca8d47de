"""
The server's own listeners (server._own), through the programs: a
C{--forward} to one is a one-line usage error (whatever the spelling);
every listener joins with the port it actually bound (C{tcp:0}, the admin
endpoint); and the real C{twistd remotedialer-server}, with a real
C{twistd remotedialer-client} that may dial anything on 127.0.0.1 (so only
the server's own rule stands between), refuses curl's requests for each
of its listeners in other spellings of 127.0.0.1, through the front door
(403), the CONNECT proxy (403) and SOCKS5 (0x02), while a target behind
the client still answers.

curl itself rewrites an IPv4 host in a URL to dotted quads
(C{http://0x7f.1:P/} is asked for as C{127.0.0.1:P}), so the spellings
reach the proxies through C{--connect-to ::0x7f.1:P}, which curl sends as
written; the URL forms are tried too.
"""

from __future__ import annotations

import json
import re
import shutil

from twisted.application.internet import StreamServerEndpointService
from twisted.trial.unittest import SkipTest, TestCase

from remotedialer._tap import server as server_tap
from tests.support import eventually, listen_tcp, wait
from tests.system.test_forwarders_e2e import curl, hello_site
from tests.system.test_programs import ProgramTestCase, _listening_port, assert_usage_error, parse, run

LOOPBACK = "tcp:0:interface=127.0.0.1"
REFUSED = b"front door: the target is this server's own listener\n"


class OwnListenerOptionsTests(TestCase):
    def test_a_forward_to_an_own_listener_is_a_usage_error(self):
        cases = [
            # (argv, the forward's target)
            ([], "0x7f.1:8123"),  # the tunnel's listener (default 127.0.0.1:8123)
            ([], "[::ffff:127.0.0.1]:8123"),
            ([], "localhost.:8123"),
            ([], "127.1:16443"),  # the forward's own listener
            (["--connect-proxy-listen", "8124"], "2130706433:8124"),
            (["--socks-listen", "1080"], "0177.0.0.1:1080"),
            (["--admin-listen", "9125"], "[::1]:9125"),
            (["--frontdoor-listen", "tcp:8125:interface=127.0.0.1"], "0x7F000001:8125"),
            (["--listen", "tcp:18123"], "0.0.0.0:18123"),  # (every interface: any address of this host)
        ]
        for argv, target in cases:
            with self.subTest(target=target):
                assert_usage_error(self, [*argv, "--forward", f"16443=foo:tcp/{target}"],
                                   f"--forward '16443=foo:tcp/{target}': the target {target} "
                                   "is this server's own listener")

    def test_other_forwards_are_not(self):
        for target in ("10.0.0.5:8123", "127.0.0.1:8124", "db.internal:8123"):
            options = parse(server_tap.Options, ["--forward", f"16443=foo:tcp/{target}"])
            self.assertEqual(len(options["forwards"]), 1)

    def test_listeners_join_with_the_ports_they_bound(self):
        """Every listener on tcp:0 joins the server's own listeners once it has its port."""

        async def go():
            top = server_tap.makeService(parse(server_tap.Options, [
                "--listen", LOOPBACK, "--frontdoor-listen", LOOPBACK, "--connect-proxy-listen", LOOPBACK,
                "--socks-listen", LOOPBACK, "--forward", f"{LOOPBACK}=foo:tcp/10.0.0.5:22",
                "--admin-listen", LOOPBACK]))
            own = top.front_door._access.own
            self.assertEqual(own.ports, frozenset())
            top.startService()
            self.addCleanup(top.stopService)
            listeners = [s for s in top if isinstance(s, StreamServerEndpointService)]
            self.assertEqual(len(listeners), 6)
            ports = {(await _listening_port(s)).getHost().port for s in listeners}
            self.assertEqual(own.ports, ports)
            for port in ports:
                self.assertTrue(own.holds("0x7f.1", port))

        return run(go())


class OwnListenerProgramTests(ProgramTestCase):
    def test_forward_to_an_own_listener_refused_at_start(self):
        async def go():
            program = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                 "--admin-listen", "19125", "--forward", "16443=foo:tcp/0x7f.1:19125")
            self.assertNotEqual(await self.finished(program), 0)
            lines = [line for line in (program.out + program.err).splitlines() if b"own listener" in line]
            self.assertEqual(len(lines), 1, program.out + program.err)
            self.assertTrue(lines[0].endswith(b": --forward '16443=foo:tcp/0x7f.1:19125': "
                                              b"the target 0x7f.1:19125 is this server's own listener"),
                            lines)
            self.assertNotIn(b"Traceback", program.out + program.err)

        return run(go())

    def test_every_listener_refused_in_every_spelling(self):
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")

        async def go():
            target = f"127.0.0.1:{(await listen_tcp(hello_site(), self)).getHost().port}"
            hello = b"hello through the tunnel\n"
            # Every listener on port 0: the rule knows each by the port it got.
            server = self.spawn(
                "-n", "--pidfile=", "remotedialer-server", "--insecure-any-client", "--listen", LOOPBACK,
                "--frontdoor-listen", LOOPBACK, "--connect-proxy-listen", LOOPBACK,
                "--socks-listen", LOOPBACK, "--forward", f"{LOOPBACK}=foo:tcp/{target}",
                "--admin-listen", LOOPBACK)
            pattern = (rb"(tunnel listener|front door|forward|connect-proxy|socks|admin endpoint)"
                       rb"\S* starting on (\d+)")
            await eventually(lambda: len(re.findall(pattern, server.out)) == 6 or not server.running,
                             timeout=30)
            ports = {kind.decode(): int(port) for kind, port in re.findall(pattern, server.out)}
            self.assertEqual(len(ports), 6, server.out + server.err)
            client = self.spawn("-n", "--pidfile=", "remotedialer-client", "--id", "foo",
                                "--connect", f"ws://127.0.0.1:{ports['tunnel listener']}/connect",
                                "--allow", "tcp/127.0.0.1:*")
            front = f"http://127.0.0.1:{ports['front door']}/client/foo/http"
            connect = f"http://foo:pass@127.0.0.1:{ports['connect-proxy']}"
            socks = ("--socks5-hostname", f"127.0.0.1:{ports['socks']}", "--proxy-user", "foo:pass")

            # A real target behind the client works every way in.
            for _ in range(200):  # until the client's tunnel is up
                out, err, code = await curl(f"{front}/{target}/hello")
                if out == hello or not client.running:
                    break
                await wait(0.1)
            for args in ([f"{front}/{target}/hello"], ["-p", "--proxy", connect, f"http://{target}/hello"],
                         [*socks, f"http://{target}/hello"],
                         [f"http://127.0.0.1:{ports['forward']}/hello"]):
                out, err, code = await curl(*args)
                self.assertEqual((out, code), (hello, 0), (args, err, client.out + client.err))

            spellings = ["0x7f.1", "2130706433", "127.1", "0177.0.0.1", "[::ffff:127.0.0.1]", "localhost",
                         "127.0.0.1", "[::1]", "0x7F.0.0.0x1", "127.0.0.1."]
            for kind, port in sorted(ports.items()):
                for spelling in spellings:
                    own = f"{spelling}:{port}"
                    where = f"{kind} as {own}"
                    out, err, code = await curl("-g", "-w", "%{http_code}", f"{front}/{own}/status")
                    self.assertEqual(out, REFUSED + b"403", where)
                    out, err, code = await curl("-p", "--proxy", connect, "--connect-to", f"::{own}",
                                                "http://own.example/")
                    self.assertEqual((code, err.strip()), (56, b"curl: (56) CONNECT tunnel failed, "
                                                                b"response 403"), where)
                    out, err, code = await curl(*socks, "--connect-to", f"::{own}", "http://own.example/")
                    self.assertEqual(code, 97, (where, err))
                    self.assertTrue(err.strip().endswith(b"(2)"), (where, err))  # not allowed by ruleset
                # The URL forms (curl asks for 127.0.0.1 whatever the URL's spelling).
                for url in (f"http://0x7f.1:{port}/", f"http://2130706433:{port}/"):
                    out, err, code = await curl("-p", "--proxy", connect, url)
                    self.assertIn(b"CONNECT tunnel failed, response 403", err, (kind, url))
                    out, err, code = await curl(*socks, url)
                    self.assertEqual(code, 97, (kind, url, err))

            # Nesting: one GET through the front door into each listener, 20 hops deep, is
            # refused at the first hop (no stream opened into ourselves).
            for kind, port in sorted(ports.items()):
                path = f"/{target}/hello"
                for _ in range(20):
                    path = f"/0x7f.1:{port}/client/foo/http" + path
                out, err, code = await curl("-w", "%{http_code}", front + path)
                self.assertEqual(out, REFUSED + b"403", kind)

            # No stream was opened for any of those: the proxies' counters (the admin
            # endpoint's status) hold the one real request each, and the refusals.
            out, err, code = await curl(f"http://127.0.0.1:{ports['admin endpoint']}/status")
            counters = {f["kind"]: f for f in json.loads(out)["forwarders"]}
            refused = len(ports) * (len(spellings) + 2)
            for kind in ("connect-proxy", "socks"):
                self.assertEqual((counters[kind]["streams_total"], counters[kind]["failures"]),
                                 (1, {"own-listener": refused}), kind)
            out, err, code = await curl(f"{front}/{target}/hello")
            self.assertEqual(out, hello)
            self.assertIn(b"the target is this server's own listener", server.out)
            for program in (client, server):
                await program.terminate()
                self.assertNotIn(b"Traceback", program.out + program.err)

        return run(go())
