#!/usr/bin/env python
"""
Memory benchmark of the HTTP front door: a large download through
``GET /client/<key>/http/<target>/...`` with a fast and a slow reader, while
the RSS of the tunnel server and client is watched.

    python benchmarks/frontdoor_memory.py [--size-mib N] [--json]

Run it with the Python of an environment where the package is installed
(C{pip install .}): the programs are the real C{twistd} plugins, found next
to C{sys.executable}.  Everything runs on 127.0.0.1, each part in its own
process:

    target   a tiny twisted.web script (C{sys.executable -c}): GET
             /big?size=N answers N deterministic bytes with Content-Length,
             written by a push producer that honours pause.
    server   C{twistd -n remotedialer-server --listen tcp:PORT:interface=127.0.0.1}
    client   C{twistd -n remotedialer-client --connect ws://.../connect --id foo
             --allow tcp/127.0.0.1:TARGET} (only the target may be dialled)

This process only orchestrates and reads (plain sockets, no Twisted): it
downloads the body through the server's front door with (a) a fast reader
(as fast as it can, C{recv_into} 1 MiB) and (b) a slow reader (small bursts
paced to C{--slow-rate} MB/s, stopping C{--pause} seconds C{--pauses}
times), checks the status, Content-Length, byte count and sha256 of each
body, and samples VmRSS of the server and client every 100 ms from /proc.
Before each download it resets the kernel's peak-RSS counter
(C{/proc/PID/clear_refs} 5, where allowed), so VmHWM afterwards is that
download's own peak, spikes between samples included.

Memory is "flat" when no peak (sampled or VmHWM) exceeds the idle RSS,
measured after a 1 MiB warm-up download, by C{--max-growth-mib} (32 MiB by
default, for a 1 GiB body).  Exit status 1 if any check fails.
MB/s is 10**6 bytes per second of body.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

MiB = 1024 * 1024
CLIENT_KEY = "foo"
SAMPLE_INTERVAL = 0.1

# ---------------------------------------------------------------------------
# The payload: the same code runs here (expected sha256) and in the target.

PAYLOAD_CODE = r'''
import random as _random
import struct as _struct

CHUNK = 256 * 1024
_BASE = _random.Random(0x5EED).randbytes(CHUNK)


def payload_chunks(size):
    """Deterministic chunks; each starts with its index, so a lost, repeated
    or reordered chunk changes the sha256."""
    sent = 0
    index = 0
    while sent < size:
        n = min(CHUNK, size - sent)
        head = _struct.pack(">Q", index)
        yield (head + _BASE[len(head):n]) if n > len(head) else head[:n]
        sent += n
        index += 1
'''

_payload: dict = {}
exec(PAYLOAD_CODE, _payload)
payload_chunks = _payload["payload_chunks"]


def payload_sha256(size: int) -> str:
    h = hashlib.sha256()
    for chunk in payload_chunks(size):
        h.update(chunk)
    return h.hexdigest()


# The target: GET /big?size=N, streamed by a push producer honouring pause.
# Prints its port on stdout once listening; SIGTERM stops it.
TARGET_CODE = PAYLOAD_CODE + r'''
import sys

from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IPushProducer
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site
from zope.interface import implementer


@implementer(IPushProducer)
class BodyProducer:
    PER_TURN = 1024 * 1024  # bytes written per reactor turn at most

    def __init__(self, request, size):
        self.request = request
        self.chunks = payload_chunks(size)
        self.paused = False
        self.stopped = False
        self.call = None
        request.notifyFinish().addErrback(lambda _: self.stopProducing())

    def start(self):
        self.request.registerProducer(self, True)
        self._schedule()

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        self._schedule()

    def stopProducing(self):
        self.stopped = True
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None

    def _schedule(self):
        if self.call is None and not self.paused and not self.stopped:
            self.call = reactor.callLater(0, self._produce)

    def _produce(self):
        self.call = None
        budget = self.PER_TURN
        while not self.paused and not self.stopped and budget > 0:
            chunk = next(self.chunks, None)
            if chunk is None:
                self.stopped = True
                self.request.unregisterProducer()
                self.request.finish()
                return
            self.request.write(chunk)
            budget -= len(chunk)
        self._schedule()


class Big(Resource):
    isLeaf = True

    def render_GET(self, request):
        try:
            size = int(request.args.get(b"size", [b"0"])[0])
        except ValueError:
            size = -1
        if size < 0:
            request.setResponseCode(400)
            return b"size must be a non-negative integer\n"
        request.setHeader(b"Content-Type", b"application/octet-stream")
        request.setHeader(b"Content-Length", b"%d" % size)
        BodyProducer(request, size).start()
        return NOT_DONE_YET


root = Resource()
root.putChild(b"big", Big())
site = Site(root)
site.noisy = False


def listening(port):
    print(port.getHost().port, flush=True)


d = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
d.addCallbacks(listening, lambda f: (print("listen failed:", f.getErrorMessage(), file=sys.stderr),
                                     reactor.stop()))
reactor.run()
'''


# ---------------------------------------------------------------------------
# Child processes.


class CheckFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM in bytes (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    except (OSError, KeyError, ValueError):
        return {"VmRSS": None, "VmHWM": None}


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, own processes)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Child:
    """A subprocess with its output in a log file."""

    def __init__(self, name, argv, logdir, stdout=None):
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout or self._log,
                                     stderr=self._log, cwd=logdir, env=env)
        self.pid = self.proc.pid
        self.killed = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n=1500) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""


def stop_children(children, grace=4.0):
    """SIGTERM every child, then SIGKILL whatever is left after C{grace}."""
    for c in children:
        if c.alive():
            try:
                c.proc.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + grace
    for c in children:
        try:
            c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            c.killed = True
            c.proc.kill()
            c.proc.wait()
    for c in children:
        c._log.close()


class RssSampler:
    """Samples VmRSS of some children every 100 ms in a thread."""

    def __init__(self, children):
        self.children = children
        self.peak = {c.name: 0 for c in children}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def _run(self):
        while True:
            for c in self.children:
                rss = proc_status(c.pid)["VmRSS"]
                if rss:
                    self.peak[c.name] = max(self.peak[c.name], rss)
            self.samples += 1
            if self._stop.wait(SAMPLE_INTERVAL):
                return

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ---------------------------------------------------------------------------
# The readers: one HTTP/1.1 GET over a plain socket.


def http_get(port, path, *, deadline, rate=None, pauses=(), pause_s=0.0, stall=10.0):
    """GET C{path} from 127.0.0.1:C{port}; read the body as fast as possible,
    or paced to C{rate} bytes/s in small bursts, stopping C{pause_s} seconds
    once the body passes each offset in C{pauses}.  Returns a dict."""

    def timeout():
        left = deadline - time.monotonic()
        if left <= 0:
            raise CheckFailed("over the run's deadline")
        return min(stall, left)

    result = {"status": None, "length": None, "received": 0, "sha256": None, "eof": False,
              "extra": 0, "elapsed": None, "paused_s": 0.0, "error": None}
    h = hashlib.sha256()
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout())
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            sock.settimeout(timeout())
            data = sock.recv(65536)
            if not data:
                raise CheckFailed(f"connection closed before the response head ({head[:200]!r})")
            head += data
            if len(head) > 1 * MiB:
                raise CheckFailed("response head over 1 MiB")
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        result["status"] = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        result["headers"] = headers
        if result["status"] != 200:
            sock.settimeout(timeout())
            try:
                rest += sock.recv(4096)
            except OSError:
                pass
            result["error"] = f"HTTP {result['status']}: {rest[:300].decode('utf-8', 'replace').strip()}"
            return result
        if "content-length" in headers:
            result["length"] = int(headers["content-length"])
        length = result["length"]
        if length is None:
            raise CheckFailed(f"no Content-Length (headers {headers})")
        t0 = time.monotonic()
        received = 0
        pending = sorted(pauses)
        paused = 0.0
        buf = bytearray(1 * MiB if rate is None else 64 * 1024)
        view = memoryview(buf)
        if rest:
            body, extra = rest[:length], rest[length:]
            h.update(body)
            received = len(body)
            result["extra"] += len(extra)
        while received < length:
            if pending and received >= pending[0]:
                pending.pop(0)
                time.sleep(pause_s)
                paused += pause_s
            want = min(len(buf), length - received)
            if pending:
                want = min(want, max(1, pending[0] - received))
            if rate is not None:
                # Small bursts: at most 10 ms worth of bytes per burst, then
                # sleep until the pace allows more.
                ahead = (t0 + paused + received / rate) - time.monotonic()
                if ahead > 0:
                    time.sleep(min(ahead, 0.05))
                    continue
                want = min(want, max(4096, int(rate * 0.01)))
            sock.settimeout(timeout())
            n = sock.recv_into(view[:want], want)
            if n == 0:
                break
            h.update(view[:n])
            received += n
            result["received"] = received
        result["elapsed"] = time.monotonic() - t0
        result["paused_s"] = paused
        result["received"] = received
        result["sha256"] = h.hexdigest()
        # Connection: close -- the body must be followed by EOF, nothing else.
        if received == length:
            end = time.monotonic() + min(5.0, max(0.1, deadline - time.monotonic()))
            while time.monotonic() < end:
                sock.settimeout(max(0.01, end - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    result["eof"] = True
                    break
                result["extra"] += len(data)
    except (OSError, CheckFailed, ValueError, IndexError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    return result


# ---------------------------------------------------------------------------
# The run.


def run(args):
    started = time.monotonic()
    deadline = started + args.deadline
    logdir = tempfile.mkdtemp(prefix="rd-frontdoor-")
    bindir = os.path.dirname(sys.executable)
    twistd = os.path.join(bindir, "twistd")
    size = args.size_mib * MiB
    results = {
        "config": {"size_mib": args.size_mib, "slow_rate_mbps": args.slow_rate, "pauses": args.pauses,
                   "pause_s": args.pause, "max_growth_mib": args.max_growth_mib,
                   "python": sys.version.split()[0], "cpus": os.cpu_count()},
        "idle": {}, "downloads": {}, "end": {}, "checks": [], "problems": [],
    }
    children = []

    def check(name, ok, detail=""):
        results["checks"].append({"check": name, "ok": bool(ok), "detail": detail})
        return ok

    def child_alive(*cs):
        for c in cs:
            if not c.alive():
                raise CheckFailed(f"{c.name} exited with {c.proc.returncode}; log tail:\n{c.log_tail()}")

    # The expected digest, computed while the children start.
    expected = {}
    digest_thread = threading.Thread(target=lambda: expected.update(sha=payload_sha256(size)), daemon=True)
    digest_thread.start()

    try:
        if not os.access(twistd, os.X_OK):
            raise CheckFailed(f"no twistd next to {sys.executable}: run this with the Python of an "
                              f"environment where remotedialer is installed")
        # target
        target = Child("target", [sys.executable, "-c", TARGET_CODE], logdir, stdout=subprocess.PIPE)
        children.append(target)
        ready, _, _ = select.select([target.proc.stdout], [], [], 20)
        line = target.proc.stdout.readline() if ready else b""
        if not line.strip().isdigit():
            child_alive(target)
            raise CheckFailed(f"target did not report its port (got {line!r})")
        target_port = int(line)
        # server and client
        server_port = free_port()
        server = Child("server", [twistd, "-n", "--pidfile", "", "remotedialer-server",
                                  "--listen", f"tcp:{server_port}:interface=127.0.0.1"], logdir)
        children.append(server)
        # Start the client once the server listens (else its first attempt
        # fails and it waits out a reconnect backoff).
        listen_by = min(deadline, time.monotonic() + 20)
        while True:
            child_alive(server)
            try:
                socket.create_connection(("127.0.0.1", server_port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > listen_by:
                    raise CheckFailed("server not listening within 20 s") from None
                time.sleep(0.05)
        client = Child("client", [twistd, "-n", "--pidfile", "", "remotedialer-client",
                                  "--connect", f"ws://127.0.0.1:{server_port}/connect",
                                  "--id", CLIENT_KEY, "--allow", f"tcp/127.0.0.1:{target_port}"], logdir)
        children.append(client)
        watched = [server, client]
        base = f"/client/{CLIENT_KEY}/http/127.0.0.1:{target_port}/big"
        results["url"] = f"http://127.0.0.1:{server_port}{base}?size={size}"
        results["expected_sha256"] = None

        # Wait until the front door answers through the tunnel (500 until the
        # client's session is up, connection refused until the server listens).
        ready_by = min(deadline, time.monotonic() + 30)
        last = None
        while True:
            child_alive(target, server, client)
            try:
                last = http_get(server_port, f"{base}?size=0", deadline=ready_by, stall=2)
            except (OSError, CheckFailed) as e:
                last = {"error": f"{type(e).__name__}: {e}"}
            if last.get("status") == 200 and not last.get("error"):
                break
            if time.monotonic() > ready_by:
                raise CheckFailed(f"front door not ready within 30 s: {last}")
            time.sleep(0.1)
        results["startup_s"] = time.monotonic() - started

        # Warm-up (first-use imports and buffers), then the idle baseline.
        warm = http_get(server_port, f"{base}?size={MiB}", deadline=deadline)
        if not check("warm-up 1 MiB download intact", warm.get("received") == MiB
                     and warm.get("sha256") == payload_sha256(MiB), warm.get("error") or ""):
            raise CheckFailed(f"warm-up download failed: {warm}")
        time.sleep(0.5)
        for c in watched:
            results["idle"][c.name] = proc_status(c.pid)
        digest_thread.join(timeout=max(0.0, deadline - time.monotonic()))
        if "sha" not in expected:
            raise CheckFailed("expected sha256 not computed in time")
        results["expected_sha256"] = expected["sha"]

        readers = [
            ("fast", {}),
            ("slow", {"rate": args.slow_rate * 1e6,
                      "pauses": [size * (i + 1) // (args.pauses + 1) for i in range(args.pauses)],
                      "pause_s": args.pause}),
        ]
        limit = args.max_growth_mib * MiB
        for name, how in readers:
            child_alive(*children)
            hwm_reset = all(reset_hwm(c.pid) for c in watched)
            with RssSampler(watched) as sampler:
                r = http_get(server_port, f"{base}?size={size}", deadline=deadline, stall=args.stall, **how)
            time.sleep(0.2)
            rss = {}
            for c in watched:
                st = proc_status(c.pid)
                idle = results["idle"][c.name]["VmRSS"]
                peak = sampler.peak[c.name]
                hwm = st["VmHWM"] if hwm_reset else None
                rss[c.name] = {"peak_sampled": peak, "VmHWM": hwm, "after": st["VmRSS"],
                               "growth": max(peak, hwm or 0) - idle}
            mbps = size / r["elapsed"] / 1e6 if r.get("elapsed") else None
            results["downloads"][name] = dict(r, mbps=mbps, rss=rss, samples=sampler.samples,
                                              hwm_reset=hwm_reset)
            label = f"{name} reader"
            check(f"{label}: HTTP 200", r.get("status") == 200, r.get("error") or "")
            check(f"{label}: Content-Length = {size}", r.get("length") == size, f"got {r.get('length')}")
            check(f"{label}: {size} bytes received", r.get("received") == size, f"got {r.get('received')}")
            check(f"{label}: sha256 matches", r.get("sha256") == expected["sha"], f"got {r.get('sha256')}")
            check(f"{label}: clean EOF after the body", r.get("eof") and not r.get("extra"),
                  f"eof={r.get('eof')} extra={r.get('extra')}")
            for c in watched:
                g = rss[c.name]["growth"]
                check(f"{label}: {c.name} RSS growth < {args.max_growth_mib} MiB", g < limit, mb(g))
            if r.get("error"):
                results["problems"].append({"download": name, "error": r["error"]})
            time.sleep(0.3)
        child_alive(*children)
        for c in watched:
            results["end"][c.name] = proc_status(c.pid)
    except CheckFailed as e:
        check("run completed", False, str(e))
        results["problems"].append({"error": str(e)})
    finally:
        alive = {c.name: c.alive() for c in children}
        stop_children(list(reversed(children)))
        for c in children:
            if not alive[c.name]:
                results["problems"].append({"child": c.name, "exit": c.proc.returncode,
                                            "log_tail": c.log_tail()})
            if c.killed:
                results["problems"].append({"child": c.name, "note": "ignored SIGTERM, killed"})
        results["wall_seconds"] = time.monotonic() - started
        check(f"finished within --deadline {args.deadline:.0f} s", results["wall_seconds"] < args.deadline + 10,
              f"{results['wall_seconds']:.1f} s")
        results["ok"] = all(c["ok"] for c in results["checks"]) and not results["problems"]
        if results["ok"]:
            shutil.rmtree(logdir, ignore_errors=True)
        else:
            results["logs"] = logdir
    return results


def mb(n):
    return "n/a" if n is None else f"{n / MiB:.1f} MiB"


def table(rows):
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for i, row in enumerate(rows):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def render(results):
    c = results["config"]
    out = [f"remotedialer front door memory, 127.0.0.1, Python {c['python']}, {c['cpus']} CPUs; "
           f"{c['size_mib']} MiB per download; MB/s = 10^6 B/s of body"]
    if results.get("url"):
        out.append(f"GET {results['url']}")
    out.append("")
    dl = results["downloads"]
    rows = [("reader", "how", "bytes", "sha256", "time", "MB/s")]
    for name in ("fast", "slow"):
        r = dl.get(name)
        if r is None:
            continue
        if name == "fast":
            how = "recv_into 1 MiB, no sleeps"
        else:
            how = f"bursts paced to {c['slow_rate_mbps']:g} MB/s"
            if c["pauses"]:
                how += f", {c['pauses']} stops of {c['pause_s']:g} s"
        rows.append((f"({'a' if name == 'fast' else 'b'}) {name}", how,
                     f"{r.get('received')}/{r.get('length')}" + ("" if r.get("received") == r.get("length") else " !"),
                     "ok" if r.get("sha256") and r["sha256"] == results.get("expected_sha256") else "BAD",
                     f"{r['elapsed']:.1f} s" if r.get("elapsed") else "-",
                     f"{r['mbps']:.1f}" if r.get("mbps") else "-"))
    out += table(rows)
    out.append("")
    idle = results["idle"]
    rows = [("process", "idle RSS", "(a) fast: peak RSS", "(b) slow: peak RSS", "VmHWM at end", "flat")]
    limit = c["max_growth_mib"] * MiB
    for proc in ("server", "client"):
        if proc not in idle:
            continue
        base = idle[proc]["VmRSS"]
        cells = [proc, mb(base)]
        growths = []
        for name in ("fast", "slow"):
            r = dl.get(name)
            if r is None:
                cells.append("-")
                continue
            x = r["rss"][proc]
            peak = max(x["peak_sampled"], x["VmHWM"] or 0)
            growths.append(x["growth"])
            cells.append(f"{mb(peak)} (+{mb(x['growth'])})")
        end = results["end"].get(proc, {})
        hwm = end.get("VmHWM")
        cells.append(f"{mb(hwm)} (+{mb(hwm - base)})" if hwm else "-")
        flat = bool(growths) and len(growths) == 2 and max(growths) < limit
        cells.append("yes" if flat else "NO")
        rows.append(tuple(cells))
    out += table(rows)
    out.append("")
    if dl:
        fast = dl.get("fast", {})
        slow = dl.get("slow", {})
        growth = max((x["growth"] for r in dl.values() for x in r["rss"].values()), default=None)
        flat = growth is not None and growth < limit and len(dl) == 2
        out.append(f"fast download: {fast['mbps']:.1f} MB/s" if fast.get("mbps") else "fast download: FAILED")
        if slow.get("elapsed"):
            reading = slow["elapsed"] - slow["paused_s"]
            out.append(f"slow download: {slow['mbps']:.1f} MB/s overall, "
                       f"{slow['received'] / 1e6 / reading:.1f} MB/s while reading, {slow['paused_s']:g} s stopped")
        out.append(f"memory: {'FLAT' if flat else 'NOT FLAT'} (largest growth {mb(growth)} over idle, "
                   f"limit {c['max_growth_mib']} MiB, for {c['size_mib']} MiB per download); peaks are the "
                   f"larger of 100 ms samples and VmHWM"
                   + ("" if all(r.get("hwm_reset") for r in dl.values()) else " (VmHWM not resettable: sampled only)"))
        out.append("RSS after each download: " + "; ".join(
            f"{n}: " + ", ".join(f"{p} {mb(x['after'])}" for p, x in r["rss"].items()) for n, r in dl.items()))
    failed = [ch for ch in results["checks"] if not ch["ok"]]
    out.append(f"checks: {len(results['checks']) - len(failed)}/{len(results['checks'])} passed"
               + ("" if not failed else "; FAILED: " + "; ".join(
                   f"{ch['check']} ({ch['detail'][:300]})" for ch in failed)))
    for p in results["problems"]:
        out.append("PROBLEM: " + json.dumps(p)[:1500])
    out.append(f"wall time {results['wall_seconds']:.1f} s" + (f" (start-up {results['startup_s']:.1f} s)"
                                                             if "startup_s" in results else ""))
    if results.get("logs"):
        out.append(f"child logs kept in {results['logs']}")
    out.append("PASS" if results["ok"] else "FAIL")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="body size per download (default 1024 MiB)")
    parser.add_argument("--slow-rate", type=float, default=50.0,
                        help="pace of the slow reader in MB/s while it reads (default 50)")
    parser.add_argument("--pauses", type=int, default=3, help="times the slow reader stops (default 3)")
    parser.add_argument("--pause", type=float, default=3.0, help="seconds per stop (default 3)")
    parser.add_argument("--max-growth-mib", type=float, default=32.0,
                        help="largest RSS growth over idle that counts as flat (default 32 MiB)")
    parser.add_argument("--stall", type=float, default=10.0, help="fail a download after this long without data")
    parser.add_argument("--deadline", type=float, default=80.0,
                        help="give up after this many seconds in all (default 80)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.size_mib < 1 or args.slow_rate <= 0 or args.pauses < 0 or args.pause < 0:
        parser.error("sizes, rates and pauses must be positive")

    def terminated(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through run()'s finally: children stopped

    signal.signal(signal.SIGTERM, terminated)
    results = run(args)
    if args.json:
        print(json.dumps(results, indent=2, default=str))
    else:
        print(render(results))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
