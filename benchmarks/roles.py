"""
Library-level tunnel roles, each in its own process:

    python -m benchmarks.roles server                a Server, /connect on a Site
    python -m benchmarks.roles client --url WS_URL   a TunnelClient (allow_all)

The server is driven by JSON lines on stdin.  C{{"cmd": "wait_session"}}
waits for the client's session; C{{"cmd": "transfer", "via": "tunnel" |
"relay", "streams": [[direction, size, seed], ...], ...}} runs every stream
at once against the C{stream} target (L{benchmarks.targets}), through the
tunnel (C{server.endpoint(key, "tcp", target)}) or through the plain relay,
checks every byte (uploads: the target's sha256; downloads: ours), and
answers with the timing.  Running the transfers inside the server process
measures the library endpoint itself, not an extra front hop.
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

    def on_line(channel, cmd) -> None:
        what = cmd.get("cmd")
        if what == "wait_session":
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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.roles",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("role", choices=["server", "client"])
    parser.add_argument("--url", help="client: the server's tunnel URL")
    args = parser.parse_args(argv)
    if args.role == "client" and not args.url:
        parser.error("client needs --url")
    (server_role if args.role == "server" else client_role)(args)


if __name__ == "__main__":
    main()
