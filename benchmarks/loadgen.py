"""
The readers that run in the load generator itself (no Twisted):

  - L{http_get}: one HTTP/1.1 GET over a plain socket, the body read as fast
    as possible (C{recv_into} 1 MiB) or paced to a rate in small bursts with
    stops; status, Content-Length, byte count, sha256 and a clean EOF are
    reported for the caller to check.
  - L{run_wrk}: C{wrk --latency} for a fixed time at a number of
    connections, every response's status and body checked by
    C{wrk_check.lua}; req/s, p50, p99 and p99.9 parsed from its output.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import time

MiB = 1024 * 1024
WRK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_check.lua")
WRK_INSTALL_HINT = "wrk is not installed: apt-get install -y wrk (Debian/Ubuntu), brew install wrk (macOS)"


class ReadFailed(RuntimeError):
    pass


def http_get(port: int, path: str, *, deadline: float, rate: float | None = None,
             pauses: tuple = (), pause_s: float = 0.0, stall: float = 10.0) -> dict:
    """
    GET C{path} from 127.0.0.1:C{port}.  The body is read as fast as
    possible, or paced to C{rate} bytes/s in bursts of at most 10 ms worth,
    stopping C{pause_s} seconds once the body passes each offset in
    C{pauses}.  Never raises for a failed exchange: C{error} says what
    went wrong.
    """

    def timeout() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadFailed("over the run's deadline")
        return min(stall, left)

    result = {"status": None, "length": None, "received": 0, "sha256": None, "eof": False,
              "extra": 0, "elapsed": None, "paused_s": 0.0, "error": None}
    h = hashlib.sha256()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout())
    except (OSError, ReadFailed) as e:
        result["error"] = f"{type(e).__name__}: {e}"
        return result
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            sock.settimeout(timeout())
            data = sock.recv(65536)
            if not data:
                raise ReadFailed(f"connection closed before the response head ({head[:200]!r})")
            head += data
            if len(head) > MiB:
                raise ReadFailed("response head over 1 MiB")
        head, _, rest = head.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        result["status"] = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if result["status"] != 200:
            result["error"] = f"HTTP {result['status']}: {rest[:300].decode('utf-8', 'replace').strip()}"
            return result
        if "content-length" not in headers:
            raise ReadFailed(f"no Content-Length (headers {headers})")
        length = result["length"] = int(headers["content-length"])
        t0 = time.monotonic()
        pending = sorted(pauses)
        paused = 0.0
        buf = bytearray(MiB if rate is None else 64 * 1024)
        view = memoryview(buf)
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
        result["elapsed"] = time.monotonic() - t0
        result["paused_s"] = paused
        result["received"] = received
        result["sha256"] = h.digest()
        if received == length:  # Connection: close -- EOF must follow, nothing else
            end = time.monotonic() + min(5.0, max(0.1, deadline - time.monotonic()))
            while time.monotonic() < end:
                sock.settimeout(max(0.01, end - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    result["eof"] = True
                    break
                result["extra"] += len(data)
    except (OSError, ReadFailed, ValueError, IndexError) as e:
        result["error"] = f"{type(e).__name__}: {e}"
    finally:
        sock.close()
    return result


def body_problems(r: dict, size: int, expected_sha256: bytes) -> list[str]:
    """What is wrong with the result of L{http_get} for a /big body (empty: intact)."""
    problems = []
    if r.get("error"):
        problems.append(r["error"])
    if r.get("status") != 200:
        problems.append(f"status {r.get('status')}")
    if r.get("length") != size:
        problems.append(f"Content-Length {r.get('length')}")
    if r.get("received") != size:
        problems.append(f"received {r.get('received')} of {size} bytes")
    if r.get("sha256") != expected_sha256:
        problems.append("sha256 mismatch")
    if not r.get("eof") or r.get("extra"):
        problems.append(f"no clean EOF after the body (eof={r.get('eof')}, {r.get('extra')} extra bytes)")
    return problems


# ---------------------------------------------------------------------------
# wrk.


def wrk_path() -> str | None:
    return shutil.which("wrk")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict:
    """req/s, p50/p99 (ms), requests, socket errors and checked responses."""
    def find(pattern):
        m = re.search(pattern, out, re.MULTILINE)
        return m.groups() if m else None

    rps = find(r"^Requests/sec:\s+([\d.]+)")
    p50 = find(r"^\s+50%\s+(\S+)")
    p99 = find(r"^\s+99%\s+(\S+)")
    total = find(r"^\s+(\d+) requests in")
    errors = find(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")
    checked = find(r"^checked good=(\d+) bad=(\d+)")
    tail = find(r"^percentiles p50=(\d+) p99=(\d+) p999=(\d+)")
    if not (rps and p50 and p99 and total):
        raise ValueError(f"cannot parse wrk's output: {out[-800:]!r}")
    p50_ms, p99_ms = _ms(p50[0]), _ms(p99[0])
    p999_ms = None
    if tail:  # the script's own, to the microsecond
        p50_ms, p99_ms, p999_ms = (int(x) / 1000 for x in tail)
    return {
        "rps": float(rps[0]), "p50_ms": p50_ms, "p99_ms": p99_ms, "p999_ms": p999_ms,
        "requests": int(total[0]),
        "socket_errors": sum(int(x) for x in errors) if errors else 0,
        "good": int(checked[0]) if checked else None, "bad": int(checked[1]) if checked else None,
    }


def run_wrk(url: str, connections: int, seconds: float, expected_body: bytes) -> dict:
    """C{wrk} at C{connections} connections for C{seconds}; raises ValueError
    when its output cannot be read."""
    argv = [wrk_path() or "wrk", "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
            "--timeout", "10s", "--latency", "-s", WRK_SCRIPT, url]
    env = dict(os.environ, BENCH_EXPECT_HEX=expected_body.hex())
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=seconds + 30)
    if proc.returncode != 0:
        raise ValueError(f"wrk exited with {proc.returncode}: {proc.stderr[-500:]!r}")
    return dict(parse_wrk(proc.stdout), connections=connections, url=url)
