#!/usr/bin/env python
"""
Throughput and memory benchmark of the remotedialer tunnel, against a plain
Twisted TCP relay measured in the same run.

    python benchmarks/throughput.py [--size-mib N] [--streams N] [--json]

Everything runs on 127.0.0.1, each part in its own process (this same script
with a C{--role} switch):

    target   a TCP sink/source: C{U} + size + seed -> reads that many bytes
             and answers their sha256; C{D} + size + seed -> sends the payload
             (a push producer honouring pause) and closes.
    relay    twisted.protocols.portforward to the target: the baseline, one
             hop of Python relaying.
    server   a twisted.web Site with Server.resource at /connect, driven by
             JSON lines on stdin: it runs each transfer itself, through the
             tunnel (server.endpoint("bench", "tcp", target)) or through the
             relay, checks every byte (sha256), and answers with its timing.
    client   a TunnelClient (allow_all) connected to the server.

This process (the load generator) only orchestrates: it tells the server
process what to transfer, and samples VmRSS / VmHWM of the others from /proc.

Figures: (a) relay baselines; (b) tunnel upload server->target; (c) tunnel
download target->server; (d) N concurrent streams (half up, half down)
aggregate; (e) peak RSS of the server and client processes while the reader
on the server side stops for a few seconds and the target keeps sending.
MB/s is 10**6 bytes per second of payload.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import queue
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

MiB = 1024 * 1024
CLIENT_KEY = "bench"

# ---------------------------------------------------------------------------
# The payload and the target's tiny protocol (shared by every role).

CHUNK = 256 * 1024
_BASE = random.Random(0x5EED).randbytes(CHUNK)
HEADER = struct.Struct(">cQI")  # op, size, seed
DIGEST_SIZE = 32


def payload_chunks(size: int, seed: int):
    """Deterministic chunks; each starts with (seed, index) so a lost,
    repeated, reordered or cross-wired chunk changes the sha256."""
    sent = 0
    index = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        head = struct.pack(">IQ", seed, index)
        yield (head + _BASE[len(head):n]) if n > len(head) else head[:n]
        sent += n
        index += 1


@functools.lru_cache(maxsize=None)
def payload_sha256(size: int, seed: int) -> bytes:
    h = hashlib.sha256()
    for chunk in payload_chunks(size, seed):
        h.update(chunk)
    return h.digest()


# ---------------------------------------------------------------------------
# Twisted side (child processes).  Imports are deferred so that the
# orchestrator does not install a reactor.


def _twisted_common():
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )

    predicate = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr), [predicate])],
        redirectStandardIO=False,
    )


def _control(on_line=None, on_ready=None):
    """A JSON-lines channel on stdin/stdout; stdin EOF stops the reactor."""
    from twisted.internet import reactor, stdio
    from twisted.protocols.basic import LineReceiver

    class Control(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 10 * MiB

        def connectionMade(self):
            if on_ready is not None:
                on_ready(self)

        def send(self, obj):
            self.transport.write(json.dumps(obj).encode() + b"\n")

        def lineReceived(self, line):
            if on_line is not None and line.strip():
                on_line(self, json.loads(line))

        def connectionLost(self, reason=None):
            if reactor.running:
                reactor.stop()

    control = Control()
    stdio.StandardIO(control)
    return control


def _push_sender_class():
    from twisted.internet import reactor
    from twisted.internet.interfaces import IPushProducer
    from zope.interface import implementer

    @implementer(IPushProducer)
    class PushSender:
        """Writes a payload as a push producer (honouring pause), at most
        PER_TURN bytes per reactor turn."""

        PER_TURN = 1 * MiB

        def __init__(self, transport, size, seed, on_done=None):
            self.transport = transport
            self.size = size
            self.chunks = payload_chunks(size, seed)
            self.on_done = on_done
            self.sent = 0
            self.paused = False
            self.stopped = False
            self.finished = False
            self.pauses = 0
            self._scheduled = None

        def start(self):
            self.transport.registerProducer(self, True)
            if not self.paused:
                self._schedule()

        def pauseProducing(self):
            if not self.paused:
                self.pauses += 1
            self.paused = True

        def resumeProducing(self):
            self.paused = False
            self._schedule()

        def stopProducing(self):
            self.stopped = True

        def _schedule(self):
            if self._scheduled is None and not self.finished and not self.stopped:
                self._scheduled = reactor.callLater(0, self._produce)

        def _produce(self):
            self._scheduled = None
            budget = self.PER_TURN
            while not self.paused and not self.stopped and budget > 0:
                chunk = next(self.chunks, None)
                if chunk is None:
                    self.finished = True
                    self.transport.unregisterProducer()
                    if self.on_done is not None:
                        self.on_done()
                    return
                self.transport.write(chunk)
                self.sent += len(chunk)
                budget -= len(chunk)
            if not self.paused:
                self._schedule()

    return PushSender


def role_target(args):
    _twisted_common()
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol

    PushSender = _push_sender_class()

    class Target(Protocol):
        def connectionMade(self):
            self.head = b""
            self.mode = None

        def dataReceived(self, data):
            if self.mode is None:
                self.head += data
                if len(self.head) < HEADER.size:
                    return
                op, self.size, self.seed = HEADER.unpack(self.head[:HEADER.size])
                data, self.head = self.head[HEADER.size:], b""
                if op == b"U":
                    self.mode = "U"
                    self.need = self.size
                    self.hash = hashlib.sha256()
                elif op == b"D":
                    self.mode = "D"
                    PushSender(self.transport, self.size, self.seed, self.transport.loseConnection).start()
                    return
                else:
                    self.transport.abortConnection()
                    return
            if self.mode == "U":
                if len(data) > self.need:
                    self.transport.abortConnection()  # more than announced: the sender sees no digest
                    self.mode = "X"
                    return
                self.hash.update(data)
                self.need -= len(data)
                if self.need == 0:
                    self.mode = "X"
                    self.transport.write(self.hash.digest())
                    self.transport.loseConnection()

    def listening(port):
        control.send({"ready": True, "port": port.getHost().port})

    control = _control()
    factory = Factory.forProtocol(Target)
    factory.noisy = False
    TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory).addCallback(listening)
    reactor.run()


def role_relay(args):
    _twisted_common()
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.protocols import portforward

    portforward.ProxyClientFactory.noisy = False
    factory = portforward.ProxyFactory("127.0.0.1", args.target_port)
    factory.noisy = False

    def listening(port):
        control.send({"ready": True, "port": port.getHost().port})

    control = _control()
    TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(factory).addCallback(listening)
    reactor.run()


def role_client(args):
    _twisted_common()
    from twisted.internet import reactor

    import remotedialer
    from remotedialer import TunnelClient, allow_all

    client = TunnelClient(
        args.url,
        connect_authorizer=allow_all,
        headers={"X-Tunnel-ID": CLIENT_KEY},
        reactor=reactor,
        client_key=CLIENT_KEY,
    )

    def ready(control):
        client.startService()
        d = client.when_connected()  # the load generator times out the wait
        d.addCallbacks(
            lambda _: control.send({"ready": True, "nvx": remotedialer.nvx_active()}),
            lambda f: control.send({"ready": False, "error": f.getErrorMessage()}),
        )

    _control(on_ready=ready)
    reactor.run()


def role_server(args):
    _twisted_common()
    from twisted.internet import defer, reactor
    from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    import remotedialer
    from remotedialer import Server

    PushSender = _push_sender_class()
    server = Server(reactor=reactor)
    root = Resource()
    root.putChild(b"connect", server.resource)
    site = Site(root)
    site.noisy = False

    class Job:
        """One stream of a transfer."""

        def __init__(self, transfer, index, direction, size, seed):
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
        def progress(self):
            p = self.protocol
            if p is None:
                return 0
            return p.progress()

        def finish(self, ok, error=None):
            if self.done:
                return
            self.done = True
            self.ok = ok
            self.error = error
            self.end = time.perf_counter()
            self.transfer.job_done(self)

        def describe(self):
            p = self.protocol
            return {
                "stream": self.index, "dir": self.direction, "size": self.size,
                "progress": self.progress, "done": self.done, "error": self.error,
                "state": p.state() if p is not None else "not connected",
            }

    class Upload(Protocol):
        def __init__(self, job):
            self.job = job
            self.reply = b""
            self.sender = None

        def progress(self):
            return self.sender.sent if self.sender is not None else 0

        def state(self):
            s = self.sender
            return f"sent={s.sent} paused={s.paused} pauses={s.pauses} reply={len(self.reply)}B" if s else "no sender"

        def connectionMade(self):
            self.transport.write(HEADER.pack(b"U", self.job.size, self.job.seed))
            self.sender = PushSender(self.transport, self.job.size, self.job.seed)
            self.sender.start()

        def dataReceived(self, data):
            self.reply += data
            if len(self.reply) >= DIGEST_SIZE and not self.job.done:
                if self.reply[:DIGEST_SIZE] == self.job.expected and self.sender.sent == self.job.size:
                    self.job.finish(True)
                else:
                    self.job.finish(False, "sha256 mismatch at the target")
                self.transport.loseConnection()

        def connectionLost(self, reason=None):
            if not self.job.done:
                self.job.finish(False, f"lost after sending {self.progress()} bytes, "
                                       f"reply {len(self.reply)} B: {reason.getErrorMessage()}")

    class Download(Protocol):
        def __init__(self, job, pause):
            self.job = job
            self.pause = pause
            self.received = 0
            self.hash = hashlib.sha256()
            self.paused = False

        def progress(self):
            return self.received

        def state(self):
            buffered = getattr(self.transport, "buffered_inbound", None)
            return f"received={self.received} reader_paused={self.paused} buffered_inbound={buffered}"

        def connectionMade(self):
            self.transport.write(HEADER.pack(b"D", self.job.size, self.job.seed))

        def dataReceived(self, data):
            self.received += len(data)
            if self.received > self.job.size:
                self.job.finish(False, f"received {self.received} > {self.job.size} bytes")
                self.transport.abortConnection()
                return
            self.hash.update(data)
            if self.received == self.job.size:
                self.job.finish(self.hash.digest() == self.job.expected,
                                None if self.hash.digest() == self.job.expected else "sha256 mismatch")
                self.transport.loseConnection()
            elif self.pause:
                pause, self.pause = self.pause, 0
                self.paused = True
                self.transport.pauseProducing()
                self.job.transfer.reader_paused(self, pause)

        def resume(self):
            self.paused = False
            self.transport.resumeProducing()

        def connectionLost(self, reason=None):
            if not self.job.done:
                self.job.finish(False, f"lost after receiving {self.received} of {self.job.size} "
                                       f"bytes: {reason.getErrorMessage()}")

    class Transfer:
        def __init__(self, cmd):
            self.cmd = cmd
            self.result = defer.Deferred()
            self.jobs = [Job(self, i, d, size, seed) for i, (d, size, seed) in enumerate(cmd["streams"])]
            self.pending = len(self.jobs)
            self.stall = cmd.get("stall", 5.0)
            self.cap = cmd.get("cap", 60.0)
            self.pausing_until = 0.0
            self.peak_buffered = 0
            self.watch = None
            self.sampling = None
            session = server.sessions.local_session(CLIENT_KEY)
            self.session = session
            self.wire0 = (session.bytes_sent, session.bytes_received) if session is not None else (0, 0)

        def endpoint(self):
            if self.cmd["via"] == "tunnel":
                return server.endpoint(CLIENT_KEY, "tcp", f"127.0.0.1:{self.cmd['target_port']}")
            return TCP4ClientEndpoint(reactor, "127.0.0.1", self.cmd["relay_port"], timeout=30)

        def start(self):
            self.t0 = time.perf_counter()
            self.last_progress = (self.t0, -1)
            for job in self.jobs:
                if job.direction == "up":
                    protocol = Upload(job)
                else:
                    protocol = Download(job, self.cmd.get("pause", 0))
                d = self.endpoint().connect(Factory.forProtocol(lambda p=protocol: p))
                d.addCallback(lambda p, job=job: setattr(job, "protocol", p))
                d.addErrback(lambda f, job=job: job.finish(False, f"connect failed: {f.getErrorMessage()}"))
            self.watch = reactor.callLater(0.25, self.check)
            return self.result

        def reader_paused(self, download, seconds):
            self.pausing_until = time.perf_counter() + seconds
            self.paused_at = download.received
            reactor.callLater(seconds, download.resume)
            self.sample(download)

        def sample(self, download):
            self.sampling = None
            buffered = getattr(download.transport, "buffered_inbound", None)
            if buffered is not None:
                self.peak_buffered = max(self.peak_buffered, buffered)
            if download.paused and not download.job.done:
                self.sampling = reactor.callLater(0.02, self.sample, download)

        def check(self):
            self.watch = None
            now = time.perf_counter()
            total = sum(job.progress for job in self.jobs)
            if total != self.last_progress[1]:
                self.last_progress = (now, total)
            stalled_for = now - max(self.last_progress[0], self.pausing_until)
            if stalled_for > self.stall:
                return self.abort(f"stalled: no progress for {stalled_for:.1f} s")
            if now - self.t0 > self.cap:
                return self.abort(f"over the {self.cap:.0f} s cap")
            self.watch = reactor.callLater(0.25, self.check)

        def abort(self, why):
            self.stalled = why
            for job in self.jobs:
                if not job.done:
                    detail = job.describe()
                    job.finish(False, why)
                    job.detail = detail
                    p = job.protocol
                    if p is not None and p.transport is not None:
                        p.transport.abortConnection()

        def job_done(self, job):
            self.pending -= 1
            if self.pending == 0:
                reactor.callLater(0, self.report)

        def report(self):
            if self.watch is not None and self.watch.active():
                self.watch.cancel()
            if self.sampling is not None and self.sampling.active():
                self.sampling.cancel()
            end = max(job.end for job in self.jobs)
            elapsed = end - self.t0
            total = sum(job.size for job in self.jobs)
            failed = [job for job in self.jobs if not job.ok]
            result = {
                "ok": not failed,
                "elapsed": elapsed,
                "bytes": total,
                "mbps": total / elapsed / 1e6 if elapsed > 0 else None,
                "failed": len(failed),
                "errors": [dict(getattr(j, "detail", {}) or j.describe(), error=j.error) for j in failed[:5]],
                "stream_seconds": [min(j.end - self.t0 for j in self.jobs),
                                   max(j.end - self.t0 for j in self.jobs)],
            }
            if self.cmd.get("pause"):
                result["peak_buffered_inbound"] = self.peak_buffered
                result["received_when_paused"] = getattr(self, "paused_at", None)
            if self.session is not None and self.cmd["via"] == "tunnel":
                result["wire_bytes"] = [self.session.bytes_sent - self.wire0[0],
                                        self.session.bytes_received - self.wire0[1]]
                result["streams_left"] = len(self.session.streams)
            self.result.callback(result)

    async def wait_session(timeout):
        from twisted.internet.task import deferLater

        deadline = time.perf_counter() + timeout
        while not server.has_session(CLIENT_KEY):
            if time.perf_counter() > deadline:
                return {"ok": False, "error": "no session"}
            await deferLater(reactor, 0.02, lambda: None)
        return {"ok": True}

    def on_line(control, cmd):
        what = cmd["cmd"]
        if what == "wait_session":
            d = defer.Deferred.fromCoroutine(wait_session(cmd.get("timeout", 10)))
        elif what == "transfer":
            if cmd["via"] == "tunnel" and not server.has_session(CLIENT_KEY):
                d = defer.succeed({"ok": False, "error": "no tunnel session"})
            else:
                for _, size, seed in cmd["streams"]:
                    payload_sha256(size, seed)  # before the clock starts
                d = defer.maybeDeferred(lambda: Transfer(cmd).start())
        else:
            d = defer.succeed({"ok": False, "error": f"unknown command {what!r}"})
        d.addErrback(lambda f: {"ok": False, "error": f"{f.type.__name__}: {f.getErrorMessage()}"})
        d.addCallback(lambda result: control.send(dict(result, id=cmd.get("id"))))

    def ready(control):
        def listening(port):
            control.send({"ready": True, "port": port.getHost().port, "nvx": remotedialer.nvx_active()})

        TCP4ServerEndpoint(reactor, 0, backlog=1024, interface="127.0.0.1").listen(site).addCallback(listening)

    _control(on_line=on_line, on_ready=ready)
    reactor.run()


# ---------------------------------------------------------------------------
# The orchestrator (load generator).


class ChildError(RuntimeError):
    pass


class Child:
    """A role of this script in its own process, spoken to in JSON lines."""

    def __init__(self, name, role_args, logdir):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--role", *role_args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, cwd=ROOT, env=env,
        )
        self.pid = self.proc.pid
        self._lines: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._next_id = 0

    def _read(self):
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                pass
        self._lines.put(None)

    def recv(self, timeout):
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.name}: no answer within {timeout:.0f} s (log: {self.log_path})") from None
        if msg is None:
            raise ChildError(f"{self.name}: exited with {self.proc.wait()} (log tail: {self.log_tail()!r})")
        return msg

    def request(self, cmd, timeout):
        self._next_id += 1
        cmd = dict(cmd, id=self._next_id)
        self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.proc.stdin.flush()
        while True:
            msg = self.recv(timeout)
            if msg.get("id") == self._next_id:
                return msg

    def ready(self, timeout=20):
        msg = self.recv(timeout)
        if not msg.get("ready"):
            raise ChildError(f"{self.name}: not ready: {msg}")
        return msg

    def status(self):
        """VmRSS and VmHWM in bytes, from /proc (psutil as a fallback)."""
        try:
            with open(f"/proc/{self.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
            return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
        except (OSError, KeyError, ValueError):
            try:
                import psutil

                rss = psutil.Process(self.pid).memory_info().rss
                return {"VmRSS": rss, "VmHWM": None}
            except Exception:
                return {"VmRSS": None, "VmHWM": None}

    def log_tail(self, n=800):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self):
        """Close stdin (the child stops its reactor); terminate it if it lingers."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class RssSampler:
    """Samples VmRSS of some children every 20 ms in a thread."""

    def __init__(self, children):
        self.children = children
        self.peak = {c.name: 0 for c in children}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            for c in self.children:
                rss = c.status()["VmRSS"]
                if rss:
                    self.peak[c.name] = max(self.peak[c.name], rss)
            self._stop.wait(0.02)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def mb(n):
    return f"{n / MiB:.1f} MiB"


def run(args):
    import remotedialer

    started = time.perf_counter()
    logdir = tempfile.mkdtemp(prefix="rd-bench-")
    children = []
    results = {
        "config": {
            "size_mib": args.size_mib, "streams": args.streams, "slow_mib": args.slow_mib,
            "pause_s": args.pause, "python": sys.version.split()[0], "cpus": os.cpu_count(),
        },
        "nvx": {"loadgen": remotedialer.nvx_active()},
        "figures": {},
        "problems": [],
    }
    failed = False

    def spawn(name, *role_args):
        child = Child(name, role_args, logdir)
        children.append(child)
        return child

    def transfer(via, streams, pause=0.0, label=""):
        cmd = {"cmd": "transfer", "via": via, "streams": streams, "pause": pause,
               "stall": args.stall, "cap": args.cap,
               "target_port": target_port, "relay_port": relay_port}
        result = server.request(cmd, timeout=args.cap + pause + 30)
        if not result.get("ok"):
            results["problems"].append({"figure": label, "via": via, "result": result})
        return result

    try:
        target = spawn("target", "target")
        target_port = target.ready()["port"]
        relay = spawn("relay", "relay", "--target-port", str(target_port))
        relay_port = relay.ready()["port"]
        server = spawn("server", "server")
        hello = server.ready()
        results["nvx"]["server"] = hello["nvx"]
        client = spawn("client", "client", "--url", f"ws://127.0.0.1:{hello['port']}/connect")
        results["nvx"]["client"] = client.ready()["nvx"]
        if not server.request({"cmd": "wait_session", "timeout": 10}, timeout=20)["ok"]:
            raise ChildError("the server never saw the client's session")
        time.sleep(0.5)
        idle = {c.name: c.status()["VmRSS"] for c in (server, client, relay)}

        # (e) first, so VmHWM covers only start-up and this scenario.
        slow = args.slow_mib * MiB
        fig = results["figures"]
        for via, watched in (("tunnel", [server, client]), ("relay", [relay])):
            with RssSampler(watched) as sampler:
                r = transfer(via, [("down", slow, 7)], pause=args.pause, label=f"slow reader via {via}")
            time.sleep(0.3)
            fig[f"slow_reader_{via}"] = {
                "ok": r.get("ok"), "mbps": r.get("mbps"), "elapsed": r.get("elapsed"),
                "peak_buffered_inbound": r.get("peak_buffered_inbound"),
                "wire_bytes": r.get("wire_bytes"), "problem": None if r.get("ok") else r,
                "received_when_paused": r.get("received_when_paused"),
                "rss": {c.name: {"idle": idle[c.name], "peak_sampled": sampler.peak[c.name],
                                 "VmHWM": c.status()["VmHWM"], "after": c.status()["VmRSS"]}
                        for c in watched},
            }

        def best(runs):
            good = [r for r in runs if r.get("ok")]
            if not good:
                return dict(runs[-1], ok=False)
            return dict(max(good, key=lambda r: r["mbps"]), runs_mbps=[r.get("mbps") for r in runs])

        size = args.size_mib * MiB
        per = max(64 * 1024, size // args.streams)
        many = [("up" if i % 2 == 0 else "down", per, 100 + i) for i in range(args.streams)]
        shapes = [
            ("upload", [("up", size, 1)], "upload server->target"),
            ("download", [("down", size, 2)], "download target->server"),
            ("concurrent", many, f"{args.streams} streams"),
        ]
        for key, streams, label in shapes:
            runs = {"relay": [], "tunnel": []}
            for _ in range(args.repeat):  # interleaved, so background load hits both alike
                for via in runs:
                    runs[via].append(transfer(via, streams, label=f"{label} via {via}"))
            for via, done in runs.items():
                fig[f"{key}_{via}"] = best(done)
    except ChildError as e:
        failed = True
        results["problems"].append({"error": str(e)})
    finally:
        for child in reversed(children):
            child.stop()
        for child in children:
            if child.proc.returncode not in (0, None):
                results["problems"].append({"child": child.name, "exit": child.proc.returncode,
                                            "log_tail": child.log_tail()})
        results["wall_seconds"] = time.perf_counter() - started
        if results["problems"] or failed:
            results["logs"] = logdir
        else:
            shutil.rmtree(logdir, ignore_errors=True)
    return results


def render(results, args):
    fig = results["figures"]
    out = []
    c = results["config"]
    out.append(f"remotedialer throughput, 127.0.0.1, Python {c['python']}, {c['cpus']} CPUs; "
               f"size {c['size_mib']} MiB, {c['streams']} streams; MB/s = 10^6 B/s of payload")
    nvx = results["nvx"]
    out.append("autobahn NVX active: " + ", ".join(f"{k}={'yes' if v else 'NO'}" for k, v in nvx.items()))
    out.append("")
    rows = [("figure", "value", "baseline (relay)", "ratio")]

    def speed(r):
        if not r:
            return "n/a"
        if not r.get("ok"):
            return "FAILED"
        return f"{r['mbps']:.1f} MB/s"

    def ratio(r, b):
        if r and b and r.get("ok") and b.get("ok"):
            return f"{r['mbps'] / b['mbps']:.2f}x"
        return "-"

    labels = {
        "upload": f"(b) upload server->target, {c['size_mib']} MiB",
        "download": f"(c) download target->server, {c['size_mib']} MiB",
        "concurrent": f"(d) {c['streams']} streams aggregate, {c['size_mib']} MiB",
    }
    for key in ("upload", "download", "concurrent"):
        b = fig.get(f"{key}_relay")
        rows.append((f"(a) relay baseline: {key}", speed(b), "", "1.00x" if b and b.get("ok") else "-"))
    for key in ("upload", "download", "concurrent"):
        t, b = fig.get(f"{key}_tunnel"), fig.get(f"{key}_relay")
        rows.append((labels[key], speed(t), speed(b), ratio(t, b)))
    slow_t, slow_r = fig.get("slow_reader_tunnel"), fig.get("slow_reader_relay")
    relay_rss = (slow_r or {}).get("rss", {}).get("relay")
    for name in ("server", "client"):
        rss = (slow_t or {}).get("rss", {}).get(name)
        if not rss:
            continue
        peak = max(rss["VmHWM"] or 0, rss["peak_sampled"])
        if relay_rss:
            relay_peak = max(relay_rss["VmHWM"] or 0, relay_rss["peak_sampled"])
            base = f"relay {mb(relay_peak)} (+{mb(relay_peak - relay_rss['idle'])})"
        else:
            base = ""
        rows.append((f"(e) {name} peak RSS, slow reader {c['slow_mib']} MiB",
                     f"{mb(peak)} (idle {mb(rss['idle'])}, +{mb(peak - rss['idle'])})",
                     base, f"{peak / rss['idle']:.2f}x idle"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for i, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    out.append("")
    if slow_t:
        growth = max(max(r["VmHWM"] or 0, r["peak_sampled"]) - r["idle"] for r in slow_t["rss"].values())
        bounded = slow_t.get("ok") and growth < args.slow_mib * MiB / 4
        out.append(
            f"(e) slow reader: reader paused {c['pause_s']:.1f} s after "
            f"{(slow_t.get('received_when_paused') or 0) / MiB:.2f} MiB; peak buffered in the server's "
            f"stream {mb(slow_t.get('peak_buffered_inbound') or 0)}; transfer "
            f"{'intact' if slow_t.get('ok') else 'FAILED'}; RSS "
            f"{'BOUNDED' if bounded else 'NOT BOUNDED'} (largest growth {mb(growth)} "
            f"for {c['slow_mib']} MiB sent); RSS after: "
            + ", ".join(f"{n} {mb(r['after'])}" for n, r in slow_t["rss"].items())
        )
    out.append("integrity: every stream checked by sha256 (uploads at the target, downloads at the server)"
               + ("" if not results["problems"] else " -- SOME FAILED, see below"))
    out.append(f"wall time {results['wall_seconds']:.1f} s")
    for p in results["problems"]:
        out.append("PROBLEM: " + json.dumps(p)[:1500])
    if results.get("logs"):
        out.append(f"child logs kept in {results['logs']}")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=64, help="bytes per transfer (default 64 MiB)")
    parser.add_argument("--streams", type=int, default=100, help="concurrent streams in (d) (default 100)")
    parser.add_argument("--slow-mib", type=int, default=256, help="bytes the target sends in (e) (default 256 MiB)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds the slow reader stops (default 3)")
    parser.add_argument("--repeat", type=int, default=2, help="runs per throughput figure, best kept (default 2)")
    parser.add_argument("--stall", type=float, default=5.0, help="fail a transfer after this long without progress")
    parser.add_argument("--cap", type=float, default=60.0, help="fail a transfer after this long in all")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--role", choices=["target", "relay", "server", "client"], help=argparse.SUPPRESS)
    parser.add_argument("--target-port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        {"target": role_target, "relay": role_relay, "server": role_server, "client": role_client}[args.role](args)
        return 0
    if args.streams < 1 or args.size_mib < 1 or args.slow_mib < 1:
        parser.error("sizes and stream counts must be positive")
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(render(results, args))
    return 1 if results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
