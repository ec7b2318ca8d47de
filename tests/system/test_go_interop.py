"""
Interop against the real Go remotedialer programs (opt-in, slow).

Why: the unit and end-to-end tests only ever pair this project with itself,
so they cannot catch a difference from Go that takes a minute to show.  The
known one is the keepalive (PROTOCOL.md section 1): a Go end drops a link on
which it has received no PING or PONG for 60 s, whatever data flows.  These
tests stream a long "watch" response through each Go/Python pairing for
longer than that and check that every line arrives once, in order, over one
tunnel that never reconnected.

How to run (build the Go example programs ``server`` and ``client`` of
github.com/rancher/remotedialer into one directory first)::

    REMOTEDIALER_GO_BIN=/tmp/goref/bin REMOTEDIALER_SOAK_SECONDS=600 \\
        .venv/bin/python -m twisted.trial tests.system.test_go_interop

Without ``REMOTEDIALER_GO_BIN`` every test here is skipped.
``REMOTEDIALER_SOAK_SECONDS`` (default 150: more than two 60 s keepalive
deadlines) is how long each soak streams; set it to 5 for a quick run of
every pairing.  The soaks run one after another, so the module takes about
three times that.

Every program is a real process on 127.0.0.1: the Go binaries, and ours as
``twistd -n remotedialer-server|client`` run from this checkout
(it goes first on PYTHONPATH, so an installed copy does not hide local
edits).  The target service (``/hello``, ``/watch/<lines>``) runs in the
test process.  Each process's output is saved to ``<name>.log`` in the
test's temporary directory; failure messages say where.

"Did not reconnect" is judged from the accepting server's log, which prints
one line per tunnel upgrade it accepts (Go: ``Handling backend connection
request [<key>]``; ours: ``client|peer session <key>/<n> connected``):
exactly one for the link under test, and the dialing side's "open" lines
are reported alongside.
"""

from __future__ import annotations

import functools
import os
import re
import socket
import sys
import time

import treq
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall
from twisted.trial.unittest import TestCase
from twisted.web.client import HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

from tests.support import listen_tcp, wait

SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GO_BIN = os.environ.get("REMOTEDIALER_GO_BIN", "")
SOAK_SECONDS = int(os.environ.get("REMOTEDIALER_SOAK_SECONDS", "150"))
#: Process start-up, tunnel and peer set-up, and teardown, on a loaded machine.
SETUP_MARGIN = 120


def _skip_reason() -> str | None:
    if not GO_BIN:
        return ("set REMOTEDIALER_GO_BIN to a directory holding the Go remotedialer "
                "example binaries (server, client) to run the Go interop tests")
    missing = [name for name in ("server", "client") if not os.access(os.path.join(GO_BIN, name), os.X_OK)]
    if missing:
        return f"REMOTEDIALER_GO_BIN={GO_BIN!r} has no executable {', '.join(missing)}"
    return None


SKIP = _skip_reason()
#: This interpreter's twistd.  (``python -m twisted`` is ``twist``, which has no -n.)
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
HELLO = b"hello from the target\n"


def inline(method):
    """Run an ``async def`` test method as a Deferred (trial waits for it)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        return defer.Deferred.fromCoroutine(method(self, *args, **kwargs))

    return wrapper


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expected_lines(count: int) -> list[bytes]:
    return [b"line %04d" % n for n in range(1, count + 1)] + [b"end"]


# The target service behind the client.


class Watch(Resource):
    """
    ``GET /watch/<n>``: like a Kubernetes watch, a chunked response that stays
    open, one numbered line a second (``line 0001`` ... ``line <n>``), then
    ``end`` and the response finishes: about n seconds in all.  (Go's front
    door drops the query string, so the length is in the path.)
    """

    isLeaf = True

    def render_GET(self, request):
        try:
            [total] = [int(part) for part in request.postpath]
        except ValueError:
            request.setResponseCode(400)
            return b"usage: /watch/<lines>\n"
        request.setHeader(b"content-type", b"text/plain")
        numbers = iter(range(1, total + 1))

        def tick():
            number = next(numbers, None)
            if number is None:
                loop.stop()
                request.write(b"end\n")
                request.finish()
            else:
                request.write(b"line %04d\n" % number)

        loop = LoopingCall(tick)
        loop.start(1.0, now=True)
        request.notifyFinish().addErrback(lambda _: loop.stop() if loop.running else None)
        return NOT_DONE_YET


class Hello(Resource):
    """
    ``GET /hello``: a short body, then the target closes the connection.  So
    the front door's probes leave no idle stream in the tunnel whose later
    close (Twisted's 60 s idle timeout) would be incidental traffic on it:
    during a soak the watch is the only stream, its data all one way.
    """

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"text/plain")
        request.setHeader(b"connection", b"close")
        request.notifyFinish().addBoth(lambda _: request.transport and request.transport.loseConnection())
        return HELLO


def target_site() -> Site:
    root = Resource()
    root.putChild(b"hello", Hello())
    root.putChild(b"watch", Watch())
    return Site(root)


# Processes.


class Program(ProcessProtocol):
    """A subprocess whose output is kept; C{ended} fires when it exits."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()
        self.running = False
        self.exit: str | None = None

    def connectionMade(self) -> None:
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        self.running = False
        if reason.check(ProcessDone, ProcessTerminated):
            value = reason.value
            self.exit = f"signal {value.signal}" if value.signal else f"exit {value.exitCode}"
        self.ended.callback(None)

    def count(self, pattern: bytes) -> int:
        return len(re.findall(pattern, self.output))

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM; SIGKILL if it is still there after C{grace} seconds."""
        if self.running:
            self.transport.signalProcess("TERM")
            deadline = time.monotonic() + grace
            while self.running and time.monotonic() < deadline:
                await wait(0.05)
            if self.running:
                self.transport.signalProcess("KILL")
        await self.ended


def program_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CATTLE_TUNNEL_DATA_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SOURCE_ROOT, env.get("PYTHONPATH")]))
    return env


class Result:
    """What a front-door GET got: status, the body's lines, when each arrived, how it ended."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.lines: list[bytes] = []
        self.times: list[float] = []
        self.error: str | None = None
        self.elapsed = 0.0
        self._partial = b""
        self._start = time.monotonic()

    def received(self, data: bytes) -> None:
        *complete, self._partial = (self._partial + data).split(b"\n")
        now = time.monotonic() - self._start
        self.lines.extend(complete)
        self.times.extend(now for _ in complete)

    def describe(self, expected: list[bytes]) -> str:
        """One line: how far the body matched C{expected} and what went wrong."""
        good = 0
        while good < min(len(self.lines), len(expected)) and self.lines[good] == expected[good]:
            good += 1
        text = (f"status {self.code}, {len(self.lines)} lines for {len(expected)} expected, "
                f"first {good} in order")
        if good:
            text += f" (the last of them {self.lines[good - 1].decode()!r} at {self.times[good - 1]:.1f} s)"
        if good < len(self.lines):
            text += f", then {self.lines[good][:60]!r}"
        if self._partial:
            text += f", unterminated {self._partial[:60]!r}"
        if self.error:
            text += f", ended by {self.error}"
        return text + f"; {self.elapsed:.1f} s in all"


class GoInteropCase(TestCase):
    """Starts the programs for one test and cleans them all up."""

    skip = SKIP
    timeout = SETUP_MARGIN

    def setUp(self) -> None:
        self.log_dir = os.path.abspath(self.mktemp())
        os.makedirs(self.log_dir)
        self.pool = HTTPConnectionPool(reactor, persistent=False)

    # Starting things.

    def spawn(self, name: str, argv: list[str]) -> Program:
        program = Program(name)
        reactor.spawnProcess(program, argv[0], argv, env=program_env(), path=self.log_dir)
        self.addCleanup(self._stop_and_save, program)
        return program

    async def _stop_and_save(self, program: Program) -> None:
        await program.stop()
        with open(os.path.join(self.log_dir, f"{program.name}.log"), "wb") as f:
            f.write(program.output)

    def twistd(self, name: str, *args: str) -> Program:
        return self.spawn(name, [*TWISTD, "-n", "--pidfile=", *args])

    async def go_server(self, name: str, *args: str) -> tuple[Program, int]:
        port = free_port()
        program = self.spawn(name, [os.path.join(GO_BIN, "server"), "-listen", f"127.0.0.1:{port}", *args])
        await self.listening(program, port)
        return program, port

    async def py_server(self, name: str, *args: str) -> tuple[Program, int]:
        port = free_port()
        program = self.twistd(
            name, "remotedialer-server", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--insecure-any-client", *args)  # Go's example client sends no credential
        await self.listening(program, port)
        return program, port

    def go_client(self, name: str, server_port: int, key: str) -> Program:
        return self.spawn(name, [os.path.join(GO_BIN, "client"),
                                 "-connect", f"ws://127.0.0.1:{server_port}/connect", "-id", key])

    def py_client(self, name: str, server_port: int, key: str, target_port: int) -> Program:
        return self.twistd(name, "remotedialer-client", "--connect", f"ws://127.0.0.1:{server_port}/connect",
                           "--id", key, "--allow", f"tcp/127.0.0.1:{target_port}")

    async def target(self) -> int:
        return (await listen_tcp(target_site(), self)).getHost().port

    # Waiting for things.

    async def listening(self, program: Program, port: int, timeout: float = 30.0) -> None:
        """Poll until C{port} accepts a connection (fail if C{program} exits first)."""
        deadline = time.monotonic() + timeout
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=1)
        while True:
            self.assert_running(program)
            try:
                protocol = await endpoint.connect(Factory.forProtocol(Protocol))
            except Exception:
                if time.monotonic() > deadline:
                    self.fail(f"{program.name} not listening on {port} after {timeout:g} s; {self.logs()}")
                await wait(0.1)
            else:
                protocol.transport.loseConnection()
                return

    async def routed(self, front_port: int, key: str, target_port: int, *programs: Program,
                     timeout: float = 30.0) -> None:
        """Poll ``/hello`` through the front door until the tunnel for C{key} serves it."""
        deadline = time.monotonic() + timeout
        while True:
            result = await self.get(self.url(front_port, key, target_port, "hello"))
            if result.code == 200:
                self.assertEqual(result.lines, [HELLO.rstrip(b"\n")])
                return
            for program in programs:
                self.assert_running(program)
            if time.monotonic() > deadline:
                self.fail(f"no route to {key} within {timeout:g} s: {result.describe([])}; {self.logs()}")
            await wait(0.2)

    # Requests.

    @staticmethod
    def url(front_port: int, key: str, target_port: int, path: str, timeout: float = 15) -> str:
        return f"http://127.0.0.1:{front_port}/client/{key}/http/127.0.0.1:{target_port}/{path}?timeout={timeout:g}"

    async def get(self, url: str) -> Result:
        result = Result()
        try:
            response = await treq.get(url, pool=self.pool)
            result.code = response.code
            await treq.collect(response, result.received)
        except Exception as e:
            result.error = f"{type(e).__name__}: {e}"
        result.elapsed = time.monotonic() - result._start
        return result

    async def watch(
        self, front_port: int, key: str, target_port: int, seconds: int, max_timeout=None
    ) -> Result:
        """The watch for C{seconds} lines.  Go's front door timeout covers the whole body: leave room."""
        timeout = seconds + 60 if max_timeout is None else min(seconds + 60, max_timeout)
        return await self.get(self.url(front_port, key, target_port, f"watch/{seconds}", timeout))

    # Checking.

    def assert_running(self, program: Program) -> None:
        if not program.running:
            self.fail(f"{program.name} exited ({program.exit}); {self.logs()}")

    def logs(self) -> str:
        return f"program logs in {self.log_dir}"

    def check(self, result: Result, expected: list[bytes], upgrades: dict[str, int],
              opens: dict[str, int], programs) -> None:
        """
        The body is exactly C{expected}, each accepting server saw one upgrade
        (C{upgrades}: label -> count), and every program is still running.
        """
        problems = []
        if result.code != 200 or result.lines != expected or result.error:
            problems.append(result.describe(expected))
        if any(n != 1 for n in upgrades.values()):
            problems.append("the tunnel was opened more than once (or never)")
        stopped = [f"{p.name} ({p.exit})" for p in programs if not p.running]
        if stopped:
            problems.append(f"exited: {', '.join(stopped)}")
        if problems:
            self.fail("; ".join(problems) + f"; upgrades accepted: {upgrades}, dialing side opened: {opens}"
                      f"; {self.logs()}")


# 1. Our client, a Go server.


class PythonClientGoServerTests(GoInteropCase):
    """remotedialer-client keeps its tunnel to a Go server; the Go server dials through it."""

    timeout = SOAK_SECONDS + SETUP_MARGIN

    async def start(self):
        target_port = await self.target()
        server, server_port = await self.go_server("go-server")
        client = self.py_client("py-client", server_port, "pyclient", target_port)
        await self.routed(server_port, "pyclient", target_port, server, client)
        return target_port, server, server_port, client

    def counts(self, server: Program, client: Program):
        return ({"go-server: pyclient": server.count(rb"Handling backend connection request \[pyclient\]")},
                {"py-client": client.count(rb"tunnel to \S+ up")})

    @inline
    async def test_sanity(self):
        target_port, server, server_port, client = await self.start()
        result = await self.get(self.url(server_port, "pyclient", target_port, "hello"))
        self.check(result, [HELLO.rstrip(b"\n")], *self.counts(server, client), [server, client])

    @inline
    async def test_watch_soak(self):
        """The watch outlives Go's 60 s read deadline: our client must keep pinging."""
        target_port, server, server_port, client = await self.start()
        result = await self.watch(server_port, "pyclient", target_port, SOAK_SECONDS)
        self.check(result, expected_lines(SOAK_SECONDS), *self.counts(server, client), [server, client])


# 2. Our server's outgoing peer link, into a Go server.


class PythonPeerLinkGoServerTests(GoInteropCase):
    """
    Go server A and our server B peer both ways; the client is on B and the
    request enters at A.  A has no session of the client, so it dials through
    the peer session B opened into A (PROTOCOL.md section 5): that is our
    outgoing peer link, which only B's pings keep alive in A's eyes.  (The
    client is Go's, so no Python client link is involved.)
    """

    timeout = SOAK_SECONDS + SETUP_MARGIN

    async def start(self):
        target_port = await self.target()
        a_port, b_port = free_port(), free_port()
        a = self.spawn("go-server-a", [os.path.join(GO_BIN, "server"), "-listen", f"127.0.0.1:{a_port}",
                                       "-id", "a", "-token", "token-a",
                                       "-peers", f"b:token-b:ws://127.0.0.1:{b_port}/connect"])
        await self.listening(a, a_port)
        b = self.twistd("py-server-b", "remotedialer-server", "--insecure-any-client",
                        "--listen", f"tcp:{b_port}:interface=127.0.0.1",
                        "--id", "b", "--token", "token-b", "--peers", f"a:token-a:ws://127.0.0.1:{a_port}/connect")
        await self.listening(b, b_port)
        client = self.go_client("go-client", b_port, "goclient")
        # Through A, so also until B's link into A is up and has announced the client.
        await self.routed(a_port, "goclient", target_port, a, b, client)
        return target_port, a, a_port, b, client

    def counts(self, a: Program, b: Program):
        return ({"go-server-a: peer b": a.count(rb"Handling backend connection request \[b\]")},
                {"py-server-b: link to a": b.count(rb"peer a: link to \S+ up")})

    @inline
    async def test_sanity(self):
        target_port, a, a_port, b, client = await self.start()
        result = await self.get(self.url(a_port, "goclient", target_port, "hello"))
        self.check(result, [HELLO.rstrip(b"\n")], *self.counts(a, b), [a, b, client])

    @inline
    async def test_watch_soak(self):
        """The watch crosses B's outgoing link for longer than A's 60 s read deadline."""
        target_port, a, a_port, b, client = await self.start()
        result = await self.watch(a_port, "goclient", target_port, SOAK_SECONDS)
        self.check(result, expected_lines(SOAK_SECONDS), *self.counts(a, b), [a, b, client])


# 3. A Go client, our server.


class GoClientPythonServerTests(GoInteropCase):
    """The Go client keeps its tunnel to remotedialer-server; our server answers its pings."""

    timeout = SOAK_SECONDS + SETUP_MARGIN

    async def start(self):
        target_port = await self.target()
        server, server_port = await self.py_server("py-server")
        client = self.go_client("go-client", server_port, "goclient")
        await self.routed(server_port, "goclient", target_port, server, client)
        return target_port, server, server_port, client

    def counts(self, server: Program, client: Program):
        # The Go client does not reconnect: it exits when its tunnel ends.
        return ({"py-server: goclient": server.count(rb"client goclient session \d+ up")},
                {"go-client": client.count(rb"Connected to proxy")})

    @inline
    async def test_sanity(self):
        target_port, server, server_port, client = await self.start()
        result = await self.get(self.url(server_port, "goclient", target_port, "hello"))
        self.check(result, [HELLO.rstrip(b"\n")], *self.counts(server, client), [server, client])

    @inline
    async def test_watch_soak(self):
        target_port, server, server_port, client = await self.start()
        # Our front door's timeout is for the response to start, at most 3600 s.
        result = await self.watch(server_port, "goclient", target_port, SOAK_SECONDS, max_timeout=3600)
        self.check(result, expected_lines(SOAK_SECONDS), *self.counts(server, client), [server, client])
