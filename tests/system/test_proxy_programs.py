"""
Agents behind a proxy, with the real programs: C{twistd remotedialer-server}
and C{twistd remotedialer-client} as subprocesses, and between them a
CONNECT proxy run by this test (tests/connectproxy.py, on 127.0.0.1) that
records the CONNECT lines it gets and wants Basic credentials.

  - ws:// through C{--proxy}: the tunnel comes up, a front-door request
    reaches a target behind the client, the proxy saw C{CONNECT
    127.0.0.1:<port>} with the credentials; with C{NO_PROXY} naming the
    server the proxy is bypassed; with a wrong password the client logs
    the 407 and the wait before its next attempt.
  - wss:// through C{HTTPS_PROXY} (C{HTTP_PROXY} names a dead proxy: it
    is not the one for wss), to a server name only the proxy can resolve,
    with TLS verified end to end against a test CA; with C{NO_PROXY}
    naming it, the client tries the name itself and logs why it failed.
  - The programs' options: C{--proxy}, C{--proxy ''}, C{--peer-proxy},
    and the one-line errors for proxies we cannot use.
"""

from __future__ import annotations

import os
import re

import treq
from twisted.internet import reactor
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer._tap import client as client_tap
from remotedialer._tap import server as server_tap
from tests.connectproxy import RecordingProxy
from tests.support import eventually, listen_tcp, wait
from tests.system.test_frontdoor import make_ca
from tests.system.test_programs import (
    Program,
    ProgramTestCase,
    assert_usage_error,
    parse,
    program_env,
    run,
    twistd_argv,
)

CREDENTIALS = ("agent", "s3cret")
BASIC_AGENT = "Basic YWdlbnQ6czNjcmV0"
PROXY_VARIABLES = {"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"}
#: The server's name in wss:// URLs: only the proxy resolves it (.test is reserved, RFC 6761).
SERVER_NAME = "tunnel.test"
BODY = b"hello from behind the client\n"


class Hello(Resource):
    isLeaf = True

    def render_GET(self, request) -> bytes:
        return BODY


class ProxyProgramTests(ProgramTestCase):
    timeout = 120

    def spawn_with(self, environment: dict[str, str], *args: str) -> Program:
        """A program, its environment's proxy variables replaced by C{environment}."""
        program = Program()
        cwd = self.mktemp()
        os.makedirs(cwd)
        env = {k: v for k, v in program_env().items() if k not in PROXY_VARIABLES}
        env.update(environment)
        argv = twistd_argv() + list(args)
        reactor.spawnProcess(program, argv[0], argv, env=env, path=cwd)
        self.addCleanup(lambda: run(program.terminate(grace=5)))
        return program

    async def proxy(self) -> tuple[RecordingProxy, int]:
        proxy = RecordingProxy(reactor, CREDENTIALS, hosts={SERVER_NAME: "127.0.0.1"})
        port = await listen_tcp(proxy, self)
        self.addCleanup(lambda: run(eventually(lambda: proxy.open == 0)))
        return proxy, port.getHost().port

    async def target(self) -> int:
        port = await listen_tcp(Site(Hello()), self)
        return port.getHost().port

    async def server(self, *tls: str) -> int:
        server = self.spawn_with({}, "-n", "--pidfile=", "remotedialer-server", "--insecure-any-client",
                                 "--listen", "tcp:0:interface=127.0.0.1", *tls)
        found = await self.logged(server, rb"starting on (\d+)")
        return int(found.group(1))

    def client(self, environment: dict[str, str], url: str, target: int, *flags: str) -> Program:
        return self.spawn_with(environment, "-n", "--pidfile=", "remotedialer-client", "--connect", url,
                               "--id", "agent", "--allow", f"tcp/127.0.0.1:{target}", *flags)

    async def fetch_through(self, front: str, target: int, client: Program, **kwargs) -> None:
        """A front-door request to the target behind the client succeeds (once the tunnel is up)."""
        pool = HTTPConnectionPool(reactor, persistent=False)
        url = f"{front}/client/agent/http/127.0.0.1:{target}/"
        for _ in range(300):
            response = await treq.get(url, pool=pool, **kwargs)
            body = await response.content()
            if response.code != 500 or not client.running:
                break
            await wait(0.1)
        self.assertEqual((response.code, body), (200, BODY), client.out + client.err)

    async def logged(self, program: Program, pattern: bytes) -> re.Match[bytes]:
        await eventually(lambda: re.search(pattern, program.out) or not program.running, timeout=30)
        found = re.search(pattern, program.out)
        self.assertIsNotNone(found, program.out + program.err)
        return found

    def test_ws_through_the_proxy_flag(self) -> None:
        async def go() -> None:
            proxy, proxy_port = await self.proxy()
            target = await self.target()
            port = await self.server()
            url = f"ws://127.0.0.1:{port}/connect"
            front = f"http://127.0.0.1:{port}"

            # A wrong password: one line per attempt, naming the 407 and the wait.
            wrong = self.client({}, url, target, "--proxy", f"http://agent:wrong@127.0.0.1:{proxy_port}")
            line = await self.logged(wrong, rb"\[remotedialer\.client[^]]*#warn\] (tunnel to .*)\n")
            self.assertRegex(line.group(1).decode(),
                             rf"^tunnel to ws://127\.0\.0\.1:{port}/connect failed: proxy 127\.0\.0\.1:"
                             rf"{proxy_port} answered 407 Proxy Authentication Required; "
                             r"retrying in \d+\.\d s$")
            self.assertNotIn(b"wrong", wrong.out + wrong.err)
            self.assertNotIn(b"Scheduling retry", wrong.out)
            await wrong.terminate()
            self.assertGreaterEqual(proxy.refused, 1)

            # The right one: the tunnel, and a request through it.
            seen = len(proxy.requests)
            client = self.client({"NO_PROXY": "other.example"}, url, target,
                                 "--proxy", f"http://agent:s3cret@127.0.0.1:{proxy_port}")
            await self.fetch_through(front, target, client)
            self.assertEqual(proxy.requests[seen:], [f"CONNECT 127.0.0.1:{port} HTTP/1.1"])
            self.assertEqual(proxy.authorizations[seen:], [BASIC_AGENT])
            await self.logged(client, rb"through proxy http://127\.0\.0\.1:\d+ \(--proxy\)")
            self.assertNotIn(b"s3cret", client.out + client.err)
            await client.terminate()

            # NO_PROXY names the server: straight there, the proxy never hears of it.
            seen = len(proxy.requests)
            direct = self.client({"NO_PROXY": "example.com, 127.0.0.1"}, url, target,
                                 "--proxy", f"http://agent:s3cret@127.0.0.1:{proxy_port}")
            await self.fetch_through(front, target, direct)
            self.assertEqual(proxy.requests[seen:], [])
            await direct.terminate()

        return run(go())

    def test_wss_through_the_environments_proxy(self) -> None:
        async def go() -> None:
            proxy, proxy_port = await self.proxy()
            target = await self.target()
            ca, leaf, key = make_ca(os.path.abspath(self.mktemp()), dns_names=(SERVER_NAME, "localhost"))
            port = await self.server("--tls-cert", leaf, "--tls-key", key)
            url = f"wss://{SERVER_NAME}:{port}/connect"
            environment = {"https_proxy": f"http://agent:s3cret@127.0.0.1:{proxy_port}",
                           "http_proxy": "http://127.0.0.1:1"}  # (not the one for wss://)
            client = self.client(environment, url, target, "--ca-file", ca)
            with open(ca, "rb") as f:
                trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
            agent = Agent(reactor, contextFactory=trust, pool=HTTPConnectionPool(reactor, persistent=False))
            await self.fetch_through(f"https://127.0.0.1:{port}", target, client, agent=agent)
            self.assertEqual(proxy.requests, [f"CONNECT {SERVER_NAME}:{port} HTTP/1.1"])
            self.assertEqual(proxy.authorizations, [BASIC_AGENT])
            await client.terminate()

            # NO_PROXY names the server: the client resolves the name itself, and cannot.
            direct = self.client({**environment, "NO_PROXY": ".test"}, url, target, "--ca-file", ca)
            # (Not through the proxy: name resolution fails, unless some DNS answers for .test.)
            await self.logged(direct, rb"tunnel to wss://tunnel\.test:\d+/connect failed: (?!proxy)[^\n]*; "
                                      rb"retrying in \d+\.\d s\n")
            self.assertEqual(len(proxy.requests), 1)
            await direct.terminate()

        return run(go())


class ProxyOptionsTests(SynchronousTestCase):
    def environment(self, **values: str) -> None:
        """The process's proxy variables are C{values} until the test ends."""
        saved = {name: os.environ.pop(name) for name in PROXY_VARIABLES if name in os.environ}
        os.environ.update(values)

        def restore() -> None:
            for name in PROXY_VARIABLES:
                os.environ.pop(name, None)
            os.environ.update(saved)

        self.addCleanup(restore)

    def test_proxy_flag_replaces_the_environment(self) -> None:
        self.environment(HTTPS_PROXY="http://env.proxy:1", NO_PROXY=".internal")
        options = parse(client_tap.Options, ["--connect", "wss://rancher.example/connect",
                                             "--proxy", "http://agent:s3cret@flag.proxy:3128"])
        rule = options["proxy_rule"]
        self.assertEqual(str(rule.proxy_for("wss://rancher.example/connect")), "http://flag.proxy:3128")
        self.assertIsNone(rule.proxy_for("wss://a.internal/connect"))  # NO_PROXY still applies
        client = client_tap.makeService(options)
        [(url, proxy, _)] = client._rotation.targets
        self.assertEqual((url, proxy.authorization), ("wss://rancher.example/connect", BASIC_AGENT))

    def test_environment_by_default(self) -> None:
        self.environment(https_proxy="env.proxy:3128")
        options = parse(client_tap.Options, ["--connect", "wss://rancher.example/connect"])
        proxy = options["proxy_rule"].proxy_for("wss://rancher.example/connect")
        self.assertEqual((str(proxy), proxy.source), ("http://env.proxy:3128", "https_proxy"))

    def test_empty_proxy_flag_dials_direct(self) -> None:
        """--proxy '' ignores the environment, even a proxy variable we could not use."""
        self.environment(HTTPS_PROXY="https://env.proxy:3128")
        assert_usage_error(self, ["--connect", "wss://rancher.example/connect"],
                           "HTTPS_PROXY 'https://env.proxy:3128': https:// proxies", "(--proxy overrides",
                           options=client_tap.Options)
        options = parse(client_tap.Options, ["--connect", "wss://rancher.example/connect", "--proxy", ""])
        self.assertIsNone(options["proxy_rule"].proxy_for("wss://rancher.example/connect"))

    def test_unusable_proxy_flag(self) -> None:
        for value, fragment in [("https://agent:s3cret@p:3128", "https:// proxies (TLS to the proxy)"),
                                ("socks5://p:1080", "SOCKS proxies are not supported"),
                                ("http://p:notaport", "--proxy 'http://p:notaport': ")]:
            assert_usage_error(self, ["--proxy", value], fragment, options=client_tap.Options)
            with self.assertRaises(Exception) as caught:
                parse(client_tap.Options, ["--proxy", value])
            self.assertNotIn("s3cret", str(caught.exception))

    def test_peer_proxy(self) -> None:
        self.environment(HTTPS_PROXY="https://env.proxy:3128")
        peers = ["--id", "a", "--token", "t", "--peers", "b:t:wss://b.example/connect"]
        parse(server_tap.Options, [])  # no peers: the variable is never read
        assert_usage_error(self, peers, "HTTPS_PROXY 'https://env.proxy:3128'", "(--peer-proxy overrides")
        options = parse(server_tap.Options, [*peers, "--peer-proxy", "http://agent:s3cret@p:3128"])
        server = server_tap.makeService(options).server
        self.assertEqual(str(server._peer_links["b"].proxy), "http://p:3128")
        options = parse(server_tap.Options, [*peers, "--peer-proxy", ""])
        self.assertIsNone(server_tap.makeService(options).server._peer_links["b"].proxy)
