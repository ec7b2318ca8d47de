"""
The server program's forwarder flags: parsing and its one-line errors,
and the real C{twistd remotedialer-server} with a port forward, the
CONNECT proxy and SOCKS5 under front-door tokens, used by curl while a
real C{twistd remotedialer-client} serves the target.
"""

from __future__ import annotations

import os
import re
import shutil

from twisted.trial.unittest import SkipTest, TestCase

from remotedialer._tap import server as server_tap
from remotedialer._tap._forwarders import parse_forward
from remotedialer.server._access import Route
from remotedialer.server._auth import hash_token
from tests.support import eventually, listen_tcp, wait
from tests.system.test_forwarders_e2e import curl, hello_site
from tests.system.test_programs import ProgramTestCase, assert_usage_error, parse, run


class ForwarderOptionsTests(TestCase):
    def test_parse_forward(self):
        self.assertEqual(parse_forward("tcp:16443:interface=127.0.0.1=foo:tcp/10.0.0.5:6443"),
                         ("tcp:16443:interface=127.0.0.1", Route("foo", "tcp", "10.0.0.5:6443")))
        self.assertEqual(parse_forward("16443=foo:tcp/[fd00::1]:6443"),
                         ("tcp:16443:interface=127.0.0.1", Route("foo", "tcp", "[fd00::1]:6443")))
        self.assertEqual(parse_forward("2375=c:1:unix//var/run/docker.sock"),
                         ("tcp:2375:interface=127.0.0.1", Route("c:1", "unix", "/var/run/docker.sock")))

    def _bad(self, argv, *fragments):
        assert_usage_error(self, argv, *fragments)

    def test_bad_flags(self):
        self._bad(["--forward", "16443"], "--forward '16443': not LISTEN=CLIENT:proto/host:port")
        self._bad(["--forward", "16443=foo:tcp/10.0.0.5"], "--forward", "missing port")
        self._bad(["--forward", "16443=foo:udp/10.0.0.5:53"], "proto 'udp': use tcp, tcp4, tcp6 or unix")
        self._bad(["--forward", "bogus:1=foo:tcp/10.0.0.5:1"], "--forward 'bogus:1'")
        self._bad(["--connect-proxy-listen", "99999"], "--connect-proxy-listen", "port 99999 is not 0-65535")
        self._bad(["--socks-listen", "1080", "--forward", "1080=foo:tcp/h:1"], "a listener is given twice")
        self._bad(["--proxy-dial-wait", "-1"], "--proxy-dial-wait must be 0-30 seconds")

    def test_listeners_join_the_server_s_own(self):
        """No front-door or proxy request may target a forwarder's own port."""
        options = parse(server_tap.Options, ["--forward", "16443=foo:tcp/10.0.0.5:6443",
                                             "--connect-proxy-listen", "8124", "--socks-listen",
                                             "tcp:1080:interface=127.0.0.1"])
        self.assertEqual(options["connect-proxy-listen"], "tcp:8124:interface=127.0.0.1")
        self.assertEqual(options["frontdoor_access"].own.ports, frozenset([8123, 16443, 8124, 1080]))
        service = server_tap.makeService(options)
        self.assertEqual([s.name for s in service.forwarders],
                         ["forward:tcp:16443:interface=127.0.0.1",
                          "connect-proxy:tcp:8124:interface=127.0.0.1", "socks:tcp:1080:interface=127.0.0.1"])
        self.assertEqual(service.forwarders[0].target, "foo:tcp/10.0.0.5:6443")


    def test_a_forward_beyond_loopback_is_warned_about(self):
        from tests.forwarding import LogLines

        log = LogLines(self)
        server_tap.makeService(parse(server_tap.Options, [
            "--forward", "tcp:16443=foo:tcp/10.0.0.5:6443",
            "--forward", "16444=foo:tcp/10.0.0.5:22",
            # Loopback by the one rule (protocol._addresses.is_loopback), escaped colons and all:
            "--forward", r"tcp6:16445:interface=\:\:1=foo:tcp/10.0.0.5:22",
            "--forward", r"tcp6:16446:interface=\:\:ffff\:127.0.0.1=foo:tcp/10.0.0.5:22",
            # ...and not loopback, whatever its first characters say:
            "--forward", "tcp:16447:interface=127.example.com=foo:tcp/10.0.0.5:22",
        ]))
        self.assertEqual(log.matching("listens beyond loopback"), [
            "--forward tcp:16443: listens beyond loopback: "
            "anyone who reaches it reaches foo:tcp/10.0.0.5:6443",
            "--forward tcp:16447:interface=127.example.com: listens beyond loopback: "
            "anyone who reaches it reaches foo:tcp/10.0.0.5:22"])


class ForwarderProgramTests(ProgramTestCase):

    def test_help_lists_the_forwarder_flags(self):
        async def go():
            program = self.spawn("remotedialer-server", "--help")
            self.assertEqual(await self.finished(program), 0, program.err)
            for flag in (b"--forward=", b"--connect-proxy-listen=", b"--socks-listen=",
                         b"--proxy-dial-wait="):
                self.assertIn(flag, program.out)

        return run(go())

    def test_curl_through_the_server_program(self):
        """
        The real programs, with front-door tokens: curl through a port
        forward, the CONNECT proxy and SOCKS5 reaches a page behind the
        client; a wrong token is 407.
        """
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")

        async def go():
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            target = f"127.0.0.1:{(await listen_tcp(hello_site(), self)).getHost().port}"
            client_token, proxy_token = "client-t0ken", "proxy-t0ken"
            files = {"clients": f"sub sha256:{hash_token(client_token)}\n",
                     "frontdoor-tokens": f"sha256:{hash_token(proxy_token)}\n",
                     "token": client_token + "\n"}
            for name, text in files.items():
                with open(os.path.join(directory, name), "w") as f:
                    f.write(text)
            any_port = "tcp:0:interface=127.0.0.1"
            server = self.spawn(
                "-n", "--pidfile=", "remotedialer-server", "--listen", any_port,
                "--clients-file", os.path.join(directory, "clients"),
                "--frontdoor-tokens-file", os.path.join(directory, "frontdoor-tokens"),
                "--forward", f"{any_port}=sub:tcp/{target}", "--connect-proxy-listen", any_port,
                "--socks-listen", any_port)
            pattern = rb"(tunnel listener|forward:\S+|connect-proxy:\S+|socks:\S+) starting on (\d+)"
            await eventually(lambda: len(re.findall(pattern, server.out)) == 4 or not server.running,
                             timeout=30)
            ports = {kind.split(b":")[0]: int(port) for kind, port in re.findall(pattern, server.out)}
            self.assertEqual(len(ports), 4, server.out + server.err)
            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"ws://127.0.0.1:{ports[b'tunnel listener']}/connect",
                                "--id", "sub", "--token-file", os.path.join(directory, "token"),
                                "--allow", f"tcp/{target}")
            forward_url = f"http://127.0.0.1:{ports[b'forward']}/hello"
            for _ in range(200):  # until the client's tunnel is up (closed at once before)
                out, err, code = await curl(forward_url)
                if code == 0 or not client.running:
                    break
                await wait(0.1)
            self.assertEqual((out, code), (b"hello through the tunnel\n", 0), client.out + client.err)
            url = f"http://{target}/hello"
            connect = f"http://sub:{proxy_token}@127.0.0.1:{ports[b'connect-proxy']}"
            out, err, code = await curl("-p", "--proxy", connect, url)
            self.assertEqual((out, code), (b"hello through the tunnel\n", 0), err)
            out, err, code = await curl("--socks5-hostname", f"127.0.0.1:{ports[b'socks']}",
                                        "--proxy-user", f"sub:{proxy_token}", url)
            self.assertEqual((out, code), (b"hello through the tunnel\n", 0), err)
            out, err, code = await curl("-p", "--proxy", f"http://sub:wrong@127.0.0.1:{ports[b'connect-proxy']}",
                                        url)
            self.assertIn(b"response 407", err)
            for program in (client, server):
                await program.terminate()
                self.assertNotIn(b"Traceback", program.out + program.err)
            self.assertNotIn(proxy_token.encode(), server.out + server.err)

        return run(go())


class ScopedTokenProgramTests(ProgramTestCase):
    """
    The real server program with front-door tokens scoped to clients, used
    by curl: the front door, the CONNECT proxy (user name and .tunnel host),
    SOCKS5 and a port forward, then SIGHUP moving a token to another client.
    """

    def test_scoped_tokens_through_the_server_program(self):
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")

        async def go():
            directory = os.path.abspath(self.mktemp())
            os.makedirs(directory)
            target = f"127.0.0.1:{(await listen_tcp(hello_site(), self)).getHost().port}"
            foo_token, bar_token = "foo-t0ken", "bar-t0ken"
            tokens_file = os.path.join(directory, "frontdoor-tokens")
            files = {"clients": f"foo sha256:{hash_token('client-t0ken')}\n",
                     "frontdoor-tokens": f"# callers\nalice sha256:{hash_token(foo_token)} clients=foo\n"
                                         f"bob sha256:{hash_token(bar_token)} clients=bar,bar-*\n",
                     "token": "client-t0ken\n"}
            for name, text in files.items():
                with open(os.path.join(directory, name), "w") as f:
                    f.write(text)
            any_port = "tcp:0:interface=127.0.0.1"
            server = self.spawn(
                "-n", "--pidfile=", "remotedialer-server", "--listen", any_port,
                "--clients-file", os.path.join(directory, "clients"), "--frontdoor-tokens-file", tokens_file,
                "--forward", f"{any_port}=foo:tcp/{target}", "--connect-proxy-listen", any_port,
                "--socks-listen", any_port)
            pattern = rb"(tunnel listener|forward:\S+|connect-proxy:\S+|socks:\S+) starting on (\d+)"
            await eventually(lambda: len(re.findall(pattern, server.out)) == 4 or not server.running,
                             timeout=30)
            ports = {kind.split(b":")[0]: int(port) for kind, port in re.findall(pattern, server.out)}
            self.assertEqual(len(ports), 4, server.out + server.err)
            client = self.spawn("-n", "--pidfile=", "remotedialer-client",
                                "--connect", f"ws://127.0.0.1:{ports[b'tunnel listener']}/connect",
                                "--id", "foo", "--token-file", os.path.join(directory, "token"),
                                "--allow", f"tcp/{target}")
            front = f"http://127.0.0.1:{ports[b'tunnel listener']}/client/foo/http/{target}/hello"
            connect = ports[b"connect-proxy"]
            url = f"http://{target}/hello"
            hello = b"hello through the tunnel\n"

            async def status(*args):
                out, err, code = await curl("-o", "/dev/null", "-w", "%{http_code}", *args)
                return out

            for _ in range(200):  # until the client's tunnel is up
                up = await status("-H", f"Authorization: Bearer {foo_token}", front) == b"200"
                if up or not client.running:
                    break
                await wait(0.1)

            # The front door: foo's token (as kubectl sends it, or as Proxy-Authorization) for foo: 200.
            for header in ("Authorization", "Proxy-Authorization"):
                out, err, code = await curl("-H", f"{header}: Bearer {foo_token}", front)
                self.assertEqual((out, code), (hello, 0), err + client.out + client.err)
            # bar's token for foo: 403, one line naming neither the token nor bar.
            out, err, code = await curl("-w", "%{http_code}", "-H", f"Authorization: Bearer {bar_token}",
                                        front)
            self.assertEqual(out, b"front door: the token presented is not for this client\n403")
            out, err, code = await curl("-i", "-H", "Authorization: Bearer wrong", front)
            self.assertIn(b"401 Unauthorized", out)
            self.assertIn(b"WWW-Authenticate: Bearer", out)

            # The CONNECT proxy: user name, then the .tunnel host form.
            out, err, code = await curl("-p", "--proxy", f"http://foo:{foo_token}@127.0.0.1:{connect}", url)
            self.assertEqual((out, code), (hello, 0), err)
            out, err, code = await curl("-p", "--proxy", f"http://foo:{bar_token}@127.0.0.1:{connect}", url)
            self.assertIn(b"CONNECT tunnel failed, response 403", err)
            tunnel_host = url.replace("127.0.0.1:", "127.0.0.1.foo.tunnel:")
            out, err, code = await curl("-p", "--proxy", f"http://127.0.0.1:{connect}",
                                        "--proxy-user", f":{foo_token}", tunnel_host)
            self.assertEqual((out, code), (hello, 0), err)
            out, err, code = await curl("-p", "--proxy", f"http://127.0.0.1:{connect}",
                                        "--proxy-user", f":{bar_token}", tunnel_host)
            self.assertIn(b"CONNECT tunnel failed, response 403", err)

            # SOCKS5: not allowed (0x02) for bar's token.
            socks = f"127.0.0.1:{ports[b'socks']}"
            out, err, code = await curl("--socks5-hostname", socks, "--proxy-user", f"foo:{foo_token}", url)
            self.assertEqual((out, code), (hello, 0), err)
            out, err, code = await curl("--socks5-hostname", socks, "--proxy-user", f"foo:{bar_token}", url)
            self.assertNotEqual(code, 0)
            self.assertEqual(out, b"")

            # A port forward takes no token: the operator chose its target.
            out, err, code = await curl(f"http://127.0.0.1:{ports[b'forward']}/hello")
            self.assertEqual((out, code), (hello, 0), err)

            # SIGHUP: bar's token now covers foo too, foo's token is gone.
            with open(tokens_file, "w") as f:
                f.write(f"bob sha256:{hash_token(bar_token)} clients=bar,foo\n")
            server.transport.signalProcess("HUP")
            await eventually(lambda: b"front-door tokens file" in server.out and b"reloaded" in server.out,
                             timeout=10)
            out, err, code = await curl("-p", "--proxy", f"http://foo:{bar_token}@127.0.0.1:{connect}", url)
            self.assertEqual((out, code), (hello, 0), err)
            self.assertEqual(await status("-H", f"Authorization: Bearer {foo_token}", front), b"401")
            self.assertEqual(await status("-H", f"Authorization: Bearer {bar_token}", front), b"200")

            for program in (client, server):
                await program.terminate()
                self.assertNotIn(b"Traceback", program.out + program.err)
            for token in (foo_token, bar_token):
                self.assertNotIn(token.encode(), server.out + server.err)

        return run(go())

    def test_dual_stack_loopback_caller_is_loopback(self):
        """
        A tunnel listener on an IPv6 socket sees a local IPv4 caller as
        ::ffff:127.0.0.1: the front door takes it for loopback (its answer
        is the unknown client's 500, not the 403 of a caller refused).
        """
        if shutil.which("curl") is None:
            raise SkipTest("curl is not installed")

        async def go():
            server = self.spawn("-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                "--listen", r"tcp6:0:interface=\:\:ffff\:127.0.0.1", "--access-log")
            pattern = rb"tunnel listener starting on (\d+)"
            await eventually(lambda: re.search(pattern, server.out) or not server.running, timeout=30)
            port = int(re.search(pattern, server.out).group(1))
            out, err, code = await curl("-w", "%{http_code}",
                                        f"http://127.0.0.1:{port}/client/nobody/http/127.0.0.1:1/")
            self.assertEqual(out, b"failed to find Session for client nobody\n500", err)
            await eventually(lambda: b"::ffff:127.0.0.1" in server.out, timeout=10)  # the caller, as seen
            await server.terminate()
            self.assertNotIn(b"Traceback", server.out + server.err)

        return run(go())
