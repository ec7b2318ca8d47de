"""
Library-level tunnel roles, each in its own process:

    python -m benchmarks.roles server                a Server, /connect on a Site
    python -m benchmarks.roles client --url WS_URL   a TunnelClient (allow_all)
    python -m benchmarks.roles clients --url WS_URL  many TunnelClients, on command

The server is driven by JSON lines on stdin.  C{{"cmd": "wait_session"}}
waits for the client's session; C{{"cmd": "transfer", "via": "tunnel" |
"relay", "streams": [[direction, size, seed], ...], ...}} runs every stream
at once against the C{stream} target (L{benchmarks.targets}), through the
tunnel (C{server.endpoint(key, "tcp", target)}) or through the plain relay,
checks every byte (uploads: the target's sha256; downloads: ours), and
answers with the timing.  Running the transfers inside the server process
measures the library endpoint itself, not an extra front hop.

For the scale scenarios the server also takes C{{"cmd": "open_streams",
"via": ..., "count": N, ...}}: N streams to the C{echo} target, at most
C{window} being opened at once (as a client would: the far side refuses
more than its pending-dial limit), each open once its first byte came
back; they stay open, idle, until C{{"cmd": "close_streams"}}.  The
C{clients} role connects C{count} sessions (keys C{<prefix><i>}) on
C{{"cmd": "connect", "count": N}}, in batches, and answers once all are up.
"""

from __future__ import annotations

import argparse
import hashlib
import time

from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

from benchmarks.harness import serve_child
from benchmarks.payload import payload_sha256
from benchmarks.targets import DIGEST_SIZE, HEADER, PushSender

CLIENT_KEY = "bench"


class Job:
    """One stream of a transfer."""

    def __init__(self, transfer, index: int, direction: str, size: int, seed: int) -> None:
        self.transfer = transfer
        self.index = index
        self.direction = direction
        self.size = size
        self.seed = seed
        self.expected = payload_sha256(size, seed)
        self.done = False
        self.ok = False
        self.error = None
        self.end = None
        self.protocol = None

    @property
    def progress(self) -> int:
        return self.protocol.progress() if self.protocol is not None else 0

    def finish(self, ok: bool, error: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.ok = ok
        self.error = error
        self.end = time.perf_counter()
        self.transfer.job_done(self)


class Upload(Protocol):
    def __init__(self, job: Job) -> None:
        self.job = job
        self.reply = b""
        self.sender = None

    def progress(self) -> int:
        return self.sender.sent if self.sender is not None else 0

    def connectionMade(self) -> None:
        self.transport.write(HEADER.pack(b"U", self.job.size, self.job.seed))
        self.sender = PushSender(self.transport, self.job.size, self.job.seed)
        self.sender.start()

    def dataReceived(self, data: bytes) -> None:
        self.reply += data
        if len(self.reply) >= DIGEST_SIZE and not self.job.done:
            if self.reply[:DIGEST_SIZE] == self.job.expected and self.sender.sent == self.job.size:
                self.job.finish(True)
            else:
                self.job.finish(False, "sha256 mismatch at the target")
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.job.done:
            self.job.finish(False, f"lost after sending {self.progress()} bytes: {reason.getErrorMessage()}")


class Download(Protocol):
    def __init__(self, job: Job) -> None:
        self.job = job
        self.received = 0
        self.hash = hashlib.sha256()

    def progress(self) -> int:
        return self.received

    def connectionMade(self) -> None:
        self.transport.write(HEADER.pack(b"D", self.job.size, self.job.seed))

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.job.size:
            self.job.finish(False, f"received {self.received} > {self.job.size} bytes")
            self.transport.abortConnection()
            return
        self.hash.update(data)
        if self.received == self.job.size:
            ok = self.hash.digest() == self.job.expected
            self.job.finish(ok, None if ok else "sha256 mismatch")
            self.transport.loseConnection()

    def connectionLost(self, reason=None) -> None:
        if not self.job.done:
            self.job.finish(False, f"lost after receiving {self.received} of {self.job.size} bytes: "
                                   f"{reason.getErrorMessage()}")


class Transfer:
    """Every stream of one command at once; fails on a stall or past a cap."""

    def __init__(self, server, cmd: dict) -> None:
        self.server = server
        self.cmd = cmd
        self.result = defer.Deferred()
        self.jobs = [Job(self, i, d, size, seed) for i, (d, size, seed) in enumerate(cmd["streams"])]
        self.pending = len(self.jobs)
        self.stall = cmd.get("stall", 10.0)
        self.cap = cmd.get("cap", 120.0)
        self.watch = None

    def endpoint(self):
        if self.cmd["via"] == "tunnel":
            return self.server.endpoint(CLIENT_KEY, "tcp", f"127.0.0.1:{self.cmd['target_port']}")
        return TCP4ClientEndpoint(reactor, "127.0.0.1", self.cmd["relay_port"], timeout=30)

    def start(self) -> defer.Deferred:
        self.t0 = time.perf_counter()
        self.last_progress = (self.t0, -1)
        for job in self.jobs:
            protocol = Upload(job) if job.direction == "up" else Download(job)
            d = self.endpoint().connect(Factory.forProtocol(lambda p=protocol: p))
            d.addCallback(lambda p, job=job: setattr(job, "protocol", p))
            d.addErrback(lambda f, job=job: job.finish(False, f"connect failed: {f.getErrorMessage()}"))
        self.watch = reactor.callLater(0.25, self.check)
        return self.result

    def check(self) -> None:
        self.watch = None
        now = time.perf_counter()
        total = sum(job.progress for job in self.jobs)
        if total != self.last_progress[1]:
            self.last_progress = (now, total)
        if now - self.last_progress[0] > self.stall:
            return self.abort(f"stalled: no progress for {now - self.last_progress[0]:.1f} s")
        if now - self.t0 > self.cap:
            return self.abort(f"over the {self.cap:.0f} s cap")
        self.watch = reactor.callLater(0.25, self.check)

    def abort(self, why: str) -> None:
        for job in self.jobs:
            if not job.done:
                job.finish(False, f"{why} (at {job.progress} of {job.size} bytes)")
                p = job.protocol
                if p is not None and p.transport is not None:
                    p.transport.abortConnection()

    def job_done(self, job: Job) -> None:
        self.pending -= 1
        if self.pending == 0:
            reactor.callLater(0, self.report)

    def report(self) -> None:
        if self.watch is not None and self.watch.active():
            self.watch.cancel()
        elapsed = max(job.end for job in self.jobs) - self.t0
        total = sum(job.size for job in self.jobs)
        failed = [job for job in self.jobs if not job.ok]
        self.result.callback({
            "ok": not failed,
            "elapsed": elapsed,
            "bytes": total,
            "mbps": total / elapsed / 1e6 if elapsed > 0 else None,
            "failed": len(failed),
            "errors": [f"stream {j.index} ({j.direction}): {j.error}" for j in failed[:5]],
        })


class Holder(Protocol):
    """One stream of an L{OpenGroup}: sends a byte, open once it is echoed."""

    def __init__(self, group) -> None:
        self.group = group
        self.echoed = False

    def connectionMade(self) -> None:
        self.transport.write(b"x")

    def dataReceived(self, data: bytes) -> None:
        if not self.echoed:
            self.echoed = True
            self.group.opened(self)

    def connectionLost(self, reason=None) -> None:
        self.group.lost(self, reason)


class OpenGroup:
    """
    C{count} streams opened through C{endpoint()}, at most C{window} in
    progress at once; L{opening} fires with the timing once all are open
    (or one failed, or past C{cap} seconds), L{closing} once all are gone.
    """

    def __init__(self, endpoint, count: int, window: int, cap: float) -> None:
        self.endpoint = endpoint
        self.count = count
        self.window = window
        self.cap = cap
        self.started = 0
        self.open: set = set()
        self.live: set = set()
        self.errors: list[str] = []
        self.opening = defer.Deferred()
        self.closing = None
        self.done = False

    def start(self) -> defer.Deferred:
        self.t0 = time.perf_counter()
        self.timer = reactor.callLater(self.cap, self.finish, f"over the {self.cap:.0f} s cap")
        for _ in range(min(self.window, self.count)):
            self.next()
        return self.opening

    def next(self) -> None:
        if self.done or self.started >= self.count:
            return
        self.started += 1
        protocol = Holder(self)
        self.live.add(protocol)
        d = self.endpoint().connect(Factory.forProtocol(lambda: protocol))
        d.addErrback(lambda f: self.lost(protocol, f))

    def opened(self, protocol) -> None:
        self.open.add(protocol)
        if len(self.open) == self.count:
            self.finish(None)
        else:
            self.next()

    def lost(self, protocol, reason) -> None:
        if protocol not in self.live:
            return
        self.live.discard(protocol)
        self.open.discard(protocol)
        if not self.done:
            self.errors.append(f"a stream failed: {reason.getErrorMessage() if reason else '?'}")
            self.finish("a stream failed while opening")
        elif self.closing is not None and not self.live:
            d, self.closing = self.closing, None
            d.callback({"ok": True, "elapsed": time.perf_counter() - self.t_close})

    def finish(self, error: str | None) -> None:
        if self.done:
            return
        self.done = True
        if self.timer.active():
            self.timer.cancel()
        self.opening.callback({"ok": error is None, "error": error, "errors": self.errors[:5],
                               "opened": len(self.open), "elapsed": time.perf_counter() - self.t0})

    def close(self) -> defer.Deferred:
        self.t_close = time.perf_counter()
        self.closing = defer.Deferred()
        d = self.closing
        if not self.live:
            self.closing = None
            d.callback({"ok": True, "elapsed": 0.0})
        for protocol in list(self.live):
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        return d


def server_role(args) -> None:
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    import remotedialer
    from remotedialer import Server

    server = Server(reactor=reactor)
    root = Resource()
    root.putChild(b"connect", server.resource)
    site = Site(root)
    site.noisy = False

    async def wait_session(timeout: float) -> dict:
        deadline = time.perf_counter() + timeout
        while not server.has_session(CLIENT_KEY):
            if time.perf_counter() > deadline:
                return {"ok": False, "error": "no session"}
            await deferLater(reactor, 0.02, lambda: None)
        return {"ok": True}

    groups = []

    def endpoint_for(cmd):
        if cmd["via"] == "tunnel":
            return lambda: server.endpoint(CLIENT_KEY, "tcp", f"127.0.0.1:{cmd['target_port']}")
        return lambda: TCP4ClientEndpoint(reactor, "127.0.0.1", cmd["relay_port"], timeout=30)

    def forward(target_port: int) -> defer.Deferred:
        """Listen; relay each connection through server.endpoint() to the target (a port-forward)."""
        from remotedialer.tunnel._relay import Relay

        class Forward(Relay):
            def connectionMade(self) -> None:
                super().connectionMade()  # paused until the tunnel stream is up
                d = self.connect_peer(server.endpoint(CLIENT_KEY, "tcp", f"127.0.0.1:{target_port}"))
                d.addErrback(lambda _: self.transport.abortConnection())

        factory = Factory.forProtocol(Forward)
        factory.noisy = False
        d = TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory)
        return d.addCallback(lambda port: {"ok": True, "port": port.getHost().port})

    def on_line(channel, cmd) -> None:
        what = cmd.get("cmd")
        if what == "forward":
            d = forward(cmd["target_port"])
        elif what == "open_streams":
            group = OpenGroup(endpoint_for(cmd), cmd["count"], cmd.get("window", 256), cmd.get("cap", 60.0))
            groups.append(group)
            d = group.start()
        elif what == "close_streams":
            d = defer.gatherResults([g.close() for g in groups])
            d.addCallback(lambda results: {"ok": all(r["ok"] for r in results),
                                           "elapsed": max((r["elapsed"] for r in results), default=0.0)})
            groups.clear()
        elif what == "wait_session":
            d = defer.Deferred.fromCoroutine(wait_session(cmd.get("timeout", 10)))
        elif what == "transfer":
            if cmd["via"] == "tunnel" and not server.has_session(CLIENT_KEY):
                d = defer.succeed({"ok": False, "error": "no tunnel session"})
            else:
                for _, size, seed in cmd["streams"]:
                    payload_sha256(size, seed)  # before the clock starts
                d = defer.maybeDeferred(lambda: Transfer(server, cmd).start())
        else:
            d = defer.succeed({"ok": False, "error": f"unknown command {what!r}"})
        d.addErrback(lambda f: {"ok": False, "error": f"{f.type.__name__}: {f.getErrorMessage()}"})
        d.addCallback(lambda result: channel.send(dict(result, id=cmd.get("id"))))

    def ready(channel) -> None:
        d = TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(site)
        d.addCallback(lambda port: channel.send(
            {"ready": True, "port": port.getHost().port, "nvx": remotedialer.nvx_active()}))

    serve_child(ready, on_line)


def client_role(args) -> None:
    import remotedialer
    from remotedialer import TunnelClient, allow_all

    client = TunnelClient(
        args.url,
        connect_authorizer=allow_all,
        headers={"X-Tunnel-ID": CLIENT_KEY},
        reactor=reactor,
        client_key=CLIENT_KEY,
    )

    def ready(channel) -> None:
        client.startService()
        client.when_connected().addCallbacks(  # the load generator times out the wait
            lambda _: channel.send({"ready": True, "nvx": remotedialer.nvx_active()}),
            lambda f: channel.send({"ready": False, "error": f.getErrorMessage()}),
        )

    serve_child(ready)


def clients_role(args) -> None:
    """Many TunnelClients in one process, connected on command, in batches."""
    from remotedialer import TunnelClient, allow_all

    clients = []

    async def connect(count: int, batch: int) -> dict:
        t0 = time.perf_counter()
        while len(clients) < count:
            waits = []
            for _ in range(min(batch, count - len(clients))):
                key = f"{args.prefix}{len(clients)}"
                client = TunnelClient(args.url, connect_authorizer=allow_all, headers={"X-Tunnel-ID": key},
                                      reactor=reactor, client_key=key)
                clients.append(client)
                client.startService()
                waits.append(client.when_connected())
            await defer.gatherResults(waits)
        return {"ok": True, "connected": len(clients), "elapsed": time.perf_counter() - t0}

    def on_line(channel, cmd) -> None:
        if cmd.get("cmd") == "connect":
            d = defer.Deferred.fromCoroutine(connect(cmd["count"], cmd.get("batch", 100)))
        else:
            d = defer.succeed({"ok": False, "error": f"unknown command {cmd.get('cmd')!r}"})
        d.addErrback(lambda f: {"ok": False, "error": f"{f.type.__name__}: {f.getErrorMessage()}"})
        d.addCallback(lambda result: channel.send(dict(result, id=cmd.get("id"))))

    serve_child(lambda channel: channel.send({"ready": True}), on_line)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roles",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["server", "client", "clients"])
    parser.add_argument("--url", help="client, clients: the server's tunnel URL")
    parser.add_argument("--prefix", default="scale-", help="clients: client keys are PREFIX0, PREFIX1, ...")
    args = parser.parse_args(argv)
    if args.role != "server" and not args.url:
        parser.error(f"{args.role} needs --url")
    {"server": server_role, "client": client_role, "clients": clients_role}[args.role](args)


if __name__ == "__main__":
    main()
