"""
The hardening probe: raw attackers against the real server program, each
measured figure printed next to its limit.

    .venv/bin/python -m benchmarks.probe [--quick] [--json PATH] [--only 1,3] [--keep-logs]

Every row starts its own ``twistd remotedialer-server`` (the working tree
first on PYTHONPATH, 127.0.0.1 only), warms it up (one tunnel, one front-door
request), then attacks it with plain sockets and a minimal WebSocket client
written here (client frames masked by Python, messages encoded by our own
varint code, not the library's), while the server's RSS is sampled from
/proc (VmRSS every 20 ms and VmHWM, see L{benchmarks.harness.MemoryWatch}).

Rows (see benchmarks/README.md for what each limit means):
  1  a tunnel client answering a front-door request with endless response headers
  2  a peer that never reads while sending messages that provoke replies
  3  WebSocket messages left unfinished; a frame over --max-message-size
  4  streams whose far side ignores Pause while the front-door readers do not read
  5  slowloris on the upgrade, and a real tunnel upgrade while it is held
  6  log flooding with control characters; a client key with control characters
  7  an anonymous POST with a large body to the front door for an unknown client

Every probe is bounded in bytes and seconds; the whole run has a deadline
(full 300 s, --quick 60 s) and a watchdog.  Exit status 0 whatever the
verdicts (it is a probe); 1 when a probe could not run (the server did not
start, an attacker step failed, a row was skipped for lack of time).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import queue
import random
import select
import selectors
import shutil
import socket
import struct
import sys
import tempfile
import textwrap
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from benchmarks.harness import MemoryWatch, MiB, Rig, free_port, port_open, twistd_argv, wait_for

HOST = "127.0.0.1"
KiB = 1024

# ---------------------------------------------------------------------------
# The wire, written here on purpose (an attacker does not use our codec):
# PROTOCOL.md section 3.

DATA, CONNECT, ERROR, ADD_CLIENT, REMOVE_CLIENT, PAUSE, RESUME, SYNC = range(1, 9)
LEGACY_DEADLINE = 15000


def varint(n: int) -> bytes:
    u = ((n << 1) ^ (n >> 63)) & (2**64 - 1)
    out = bytearray()
    while u >= 0x80:
        out.append((u & 0x7F) | 0x80)
        u >>= 7
    out.append(u)
    return bytes(out)


def read_varint(data: bytes, off: int) -> tuple[int, int]:
    u = shift = 0
    for i in range(off, min(len(data), off + 10)):
        b = data[i]
        u |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return (u >> 1) ^ -(u & 1), i + 1
    raise ValueError("bad varint")


def message(mtype: int, conn_id: int, payload: bytes = b"", msg_id: int = 1) -> bytes:
    head = varint(msg_id) + varint(conn_id) + varint(mtype)
    if mtype in (DATA, CONNECT):
        head += varint(LEGACY_DEADLINE)
    return head + payload


def parse_message(data: bytes) -> tuple[int, int, bytes]:
    _, off = read_varint(data, 0)
    conn_id, off = read_varint(data, off)
    mtype, off = read_varint(data, off)
    if mtype in (DATA, CONNECT):
        _, off = read_varint(data, off)
    return mtype, conn_id, data[off:]


def _self_check() -> None:
    """Our encoder against the golden vectors of PROTOCOL.md."""
    vectors = [
        (message(CONNECT, 2, b"tcp/127.0.0.1:8125", 1), "020404b0ea017463702f3132372e302e302e313a38313235"),
        (message(DATA, 2, b"hello", 7), "0e0402b0ea0168656c6c6f"),
        (message(ERROR, 2, b"EOF", 8), "100406454f46"),
        (varint(-1) + varint(2**62) + varint(-(2**63)), "01" "80808080808080808001" "ffffffffffffffffff01"),
    ]
    for got, want in vectors:
        if got.hex() != want:
            raise AssertionError(f"probe's own encoder is wrong: {got.hex()} != {want}")
    if parse_message(bytes.fromhex("0e0402b0ea0168656c6c6f")) != (DATA, 2, b"hello"):
        raise AssertionError("probe's own decoder is wrong")


# ---------------------------------------------------------------------------
# A minimal WebSocket client (RFC 6455): masked client frames, unmasked
# server frames.


def mask(key: bytes, data: bytes) -> bytes:
    n = len(data)
    if not n:
        return b""
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def ws_frame(payload: bytes, opcode: int = 2, length: int | None = None) -> bytes:
    """One final frame; C{length} announces more than C{payload} (an unfinished frame)."""
    n = len(payload) if length is None else length
    b0 = 0x80 | opcode
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    key = os.urandom(4)
    return head + key + mask(key, payload)


class FrameParser:
    """Server frames out of a byte stream: (opcode, payload) of whole messages."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self._fragments: list[bytes] = []
        self._opcode = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while True:
            buf = self.buf
            if len(buf) < 2:
                return out
            b0, b1 = buf[0], buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return out
                n, off = struct.unpack(">H", buf[2:4])[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return out
                n, off = struct.unpack(">Q", buf[2:10])[0], 10
            key = None
            if b1 & 0x80:
                key, off = bytes(buf[off:off + 4]), off + 4
            if len(buf) < off + n:
                return out
            payload = bytes(buf[off:off + n])
            del buf[:off + n]
            if key:
                payload = mask(key, payload)
            opcode = b0 & 0x0F
            if opcode >= 8:
                out.append((opcode, payload))
                continue
            if opcode:
                self._opcode = opcode
            self._fragments.append(payload)
            if b0 & 0x80:
                out.append((self._opcode, b"".join(self._fragments)))
                self._fragments = []


def connect(port: int, rcvbuf: int | None = None, timeout: float = 10.0) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect((HOST, port))
    return s


def read_head(sock: socket.socket, timeout: float = 10.0) -> tuple[int | None, bytes, bytes]:
    """(status, head, bytes after it) of an HTTP response; status None if the socket closed first."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return None, data, b""
        except OSError:
            chunk = b""
        if not chunk:
            return None, data, b""
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b"\r\n", 1)[0].split()[1])
    except (IndexError, ValueError):
        status = None
    return status, head, rest


def upgrade_request(port: int, client_key: bytes) -> bytes:
    ws_key = base64.b64encode(os.urandom(16))
    return (b"GET /connect HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nX-Tunnel-ID: %s\r\n\r\n"
            % (port, ws_key, client_key))


class Tunnel:
    """
    A tunnel session as a raw client: the upgrade, then messages out, and
    (once L{start_reader} runs) a thread parsing what the server sends:
    Connects queued, Errors by stream, Pauses counted, the close code kept.
    """

    def __init__(self, port: int, key: str | bytes, rcvbuf: int | None = None, timeout: float = 10.0) -> None:
        key = key.encode() if isinstance(key, str) else key
        self.sock = connect(port, rcvbuf, timeout)
        self.sock.sendall(upgrade_request(port, key))
        self.status, self.head, rest = read_head(self.sock, timeout)
        self.body = rest if self.status != 101 else b""
        self.sock.settimeout(timeout)
        self.parser = FrameParser()
        self._pending = rest if self.status == 101 else b""
        self.connects: queue.Queue = queue.Queue()
        self.errors: dict[int, bytes] = {}
        self.messages = 0
        self.pauses = 0
        self.close_code: int | None = None
        self.close_frame_at: float | None = None
        self.closed = threading.Event()
        self.closed_at: float | None = None
        self._stop = False
        self._id = random.randrange(2**31)
        self._thread: threading.Thread | None = None

    @property
    def ok(self) -> bool:
        return self.status == 101

    def frame(self, mtype: int, conn_id: int, payload: bytes = b"") -> bytes:
        self._id += 1
        return ws_frame(message(mtype, conn_id, payload, self._id))

    def send(self, mtype: int, conn_id: int, payload: bytes = b"") -> None:
        self.sock.sendall(self.frame(mtype, conn_id, payload))

    def start_reader(self) -> Tunnel:
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return self

    def _handle(self, data: bytes) -> None:
        for opcode, payload in self.parser.feed(data):
            if opcode == 8:
                self.close_code = struct.unpack(">H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_frame_at = time.monotonic()
                continue
            if opcode != 2:
                continue
            try:
                mtype, conn_id, body = parse_message(payload)
            except ValueError:
                continue
            self.messages += 1
            if mtype == CONNECT:
                self.connects.put((conn_id, body))
            elif mtype == ERROR:
                self.errors.setdefault(conn_id, body)  # the first: later ones answer our late Data
            elif mtype == PAUSE:
                self.pauses += 1

    def _read(self) -> None:
        if self._pending:
            self._handle(self._pending)
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                data = self.sock.recv(262144)
            except TimeoutError:
                continue
            except OSError:
                data = b""
            if not data:
                break
            self._handle(data)
        self.closed_at = time.monotonic()
        self.closed.set()

    def wait_error(self, conn_id: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while conn_id not in self.errors and time.monotonic() < deadline and not self.closed.is_set():
            time.sleep(0.01)
        return conn_id in self.errors

    def close(self) -> None:
        self._stop = True
        try:
            self.sock.close()
        except OSError:
            pass


def socket_closed(sock: socket.socket, wait: float = 0.0) -> bool:
    """The peer closed (EOF or reset) -- reading and discarding what is pending."""
    deadline = time.monotonic() + wait
    while True:
        try:
            r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
        except (OSError, ValueError):
            return True
        if not r:
            return False
        try:
            if not sock.recv(262144):
                return True
        except (TimeoutError, BlockingIOError):
            pass
        except OSError:
            return True


def mib(n: float) -> str:
    return f"{n / MiB:.1f} MiB"


# ---------------------------------------------------------------------------
# Rows, the context, the server under test.


@dataclass
class Row:
    row: str
    probe: str
    measured: str
    limit: str
    holds: bool | None  # None: the probe could not run
    details: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def verdict(self) -> str:
        return {True: "holds", False: "does not hold", None: "PROBE FAILED"}[self.holds]


class ProbeFailed(RuntimeError):
    """The probe itself could not run (not a finding about the server)."""


class ServerUnderTest:
    def __init__(self, child, port: int, flags: list[str]) -> None:
        self.child = child
        self.port = port
        self.flags = flags

    @property
    def pid(self) -> int:
        return self.child.pid

    def alive(self) -> bool:
        return self.child.alive()

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.child.log_path)
        except OSError:
            return 0

    def log_bytes(self, start: int = 0) -> bytes:
        with open(self.child.log_path, "rb") as f:
            f.seek(start)
            return f.read()


class Context:
    def __init__(self, quick: bool, logdir: str, deadline: float) -> None:
        self.quick = quick
        self.logdir = logdir
        self.started = time.monotonic()
        self.deadline = self.started + deadline
        self.children: list = []
        self.problems: list[str] = []

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @contextmanager
    def server(self, name: str, *flags: str):
        port = free_port()
        # The probes claim client keys as attackers would: any client is let in.
        argv = twistd_argv("remotedialer-server", "--listen", f"tcp:{port}:interface={HOST}",
                           "--insecure-any-client", *flags)
        with Rig(self.logdir) as rig:
            child = rig.start(name, argv, control=False)
            self.children.append(child)
            wait_for(f"{name} listening", lambda: port_open(port), 20, rig)
            srv = ServerUnderTest(child, port, list(flags))
            warm_up(srv)
            yield srv
        for p in rig.problems:
            if "died early" in p:
                # The attack killed it: a finding the row reports, not a probe failure.
                continue
            self.problems.append(p)


def warm_up(srv: ServerUnderTest) -> None:
    """One tunnel with one round trip, one front-door request: imports and caches done before measuring."""
    t = Tunnel(srv.port, "warmup")
    if not t.ok:
        raise ProbeFailed(f"warm-up tunnel upgrade answered {t.status}: {t.head[:200]!r}")
    t.start_reader()
    t.send(DATA, 5, b"x")
    if not t.wait_error(5, 10):
        raise ProbeFailed("warm-up: no Error reply for an unknown stream")
    t.close()
    s = connect(srv.port)
    s.sendall(b"GET /client/nobody/http/127.0.0.1:1/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    read_head(s, 10)
    s.close()
    time.sleep(0.2)


def watch(srv: ServerUnderTest) -> MemoryWatch:
    return MemoryWatch([srv.child])


def memory(mem: MemoryWatch, srv: ServerUnderTest) -> dict:
    d = mem.describe()[srv.child.name]
    return {"start_mib": round(d["start"] / MiB, 1), "peak_sampled_mib": round(d["peak_sampled"] / MiB, 1),
            "hwm_mib": round(d["VmHWM"] / MiB, 1) if d["VmHWM"] else None,
            "growth_mib": round(d["growth"] / MiB, 1), "hwm_reset": mem.hwm_reset}


def died(srv: ServerUnderTest) -> str:
    return "" if srv.alive() else f"; SERVER DIED (exit {srv.child.proc.returncode})"


# ---------------------------------------------------------------------------
# 1. Endless response headers from a tunnel client.


def row1(ctx: Context) -> list[Row]:
    cap = (16 if ctx.quick else 48) * MiB
    fd_timeout = 5.0 if ctx.quick else 15.0  # the front door's ?timeout= (default 15 s)
    limit_mib = 16
    with ctx.server("r1-headers") as srv:
        t = Tunnel(srv.port, "evil").start_reader()
        if not t.ok:
            raise ProbeFailed(f"tunnel upgrade answered {t.status}")
        query = "?timeout=5" if ctx.quick else ""
        front = connect(srv.port, timeout=fd_timeout + 15)
        answer: dict = {}
        answered = threading.Event()

        def wait_answer():
            status, head, _ = read_head(front, fd_timeout + 15)
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            answer.update(status=status, at=time.monotonic(), line=line)
            answered.set()

        t0 = time.monotonic()
        front.sendall(f"GET /client/evil/http/127.0.0.1:1/x{query} HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{srv.port}\r\n\r\n".encode())
        threading.Thread(target=wait_answer, daemon=True).start()
        try:
            conn_id, target = t.connects.get(timeout=10)
        except queue.Empty:
            raise ProbeFailed("no Connect from the server for the front-door request") from None
        line = b"X-A: " + b"a" * 1000 + b"\r\n"
        chunk = line * 64
        sent, why = 0, "cap reached"
        end_by = t0 + fd_timeout + 10
        with watch(srv) as mem:
            t.send(DATA, conn_id, b"HTTP/1.1 200 OK\r\n")
            while sent < cap:
                if answered.is_set():
                    why = "front door answered"
                    break
                if conn_id in t.errors:
                    why = "server closed the stream"
                    break
                if t.closed.is_set() or time.monotonic() > end_by:
                    why = "tunnel closed" if t.closed.is_set() else "time cap"
                    break
                try:
                    t.send(DATA, conn_id, chunk)
                except TimeoutError:
                    why = "send stalled 10 s"
                    break
                except OSError:
                    why = "tunnel dropped"
                    break
                sent += len(chunk)
            sent_at = time.monotonic()
            answered.wait(max(0.0, end_by - time.monotonic()))
            time.sleep(0.3)
        m = memory(mem, srv)
        t.close()
        front.close()
        status = answer.get("status")
        took = answer["at"] - t0 if answer else None
        d = {"header_bytes_sent": sent, "stopped_sending": why, "sending_took_s": round(sent_at - t0, 2),
             "front_door_status": status, "front_door_line": answer.get("line"),
             "answer_after_s": round(took, 2) if took is not None else None,
             "front_door_timeout_s": fd_timeout,
             "stream_error": (t.errors.get(conn_id) or b"").decode("utf-8", "replace"),
             "connect_target": target.decode("latin-1"), "memory": m}
        ans = f"{status} after {took:.2f} s" if took is not None else "no answer"
        measured = (f"front door: {ans}; {mib(sent)} of header lines sent ({why}); "
                    f"RSS +{m['growth_mib']} MiB{died(srv)}")
        # Not a limit of today's server: what a response-head limit must give.
        holds = (srv.alive() and m["growth_mib"] < limit_mib and status is not None
                 and took is not None and took < fd_timeout - 0.5)
        return [Row("1", "tunnel client sends endless response headers",
                    measured, f"RSS < {limit_mib} MiB, answered (502) before the {fd_timeout:g} s timeout",
                    holds, d)]


# ---------------------------------------------------------------------------
# 2. A peer that never reads while provoking replies.


def row2(ctx: Context) -> list[Row]:
    cap = 64 * 10**6
    max_s = 15.0 if ctx.quick else 45.0
    limit_mib = 8
    with ctx.server("r2-noread") as srv:
        t = Tunnel(srv.port, "deaf", rcvbuf=4096)
        if not t.ok:
            raise ProbeFailed(f"tunnel upgrade answered {t.status}")
        sock = t.sock
        # Data for unknown streams: each ~14 bytes on the wire, each answered with an
        # Error of ~60 (connection not found <key>/<session>/<id>).
        chunk = b"".join(t.frame(DATA, 1000 + i, b"x") for i in range(4096))
        sock.setblocking(False)
        sent, why, dropped = 0, "byte cap", False
        t0 = time.monotonic()
        with watch(srv) as mem:
            view, off = memoryview(chunk), 0
            while sent < cap:
                if time.monotonic() - t0 > max_s:
                    why = "time cap"
                    break
                _, w, _ = select.select([], [sock], [], 2.0)
                if not w:
                    why = "send blocked 2 s (server stopped reading)"
                    break
                try:
                    n = sock.send(view[off:])
                except BlockingIOError:
                    continue
                except OSError as e:
                    why, dropped = f"send failed: {e}", True
                    break
                sent += n
                off = (off + n) % len(chunk)
            attack_s = time.monotonic() - t0
            time.sleep(0.5)
        m = memory(mem, srv)
        log = srv.log_bytes().decode("utf-8", "replace")
        stopped_reading = "not reading from it" in log
        # Now read: does the session recover (or did the server drop it)?
        sock.setblocking(True)
        t.start_reader()
        drain_by = time.monotonic() + 30
        while not t.closed.is_set() and time.monotonic() < drain_by:
            before = t.messages
            time.sleep(0.5)
            if t.messages == before:
                break
        alive_after = False
        if not t.closed.is_set():
            try:
                t.send(DATA, 424242, b"x")
                alive_after = t.wait_error(424242, 20)
            except OSError:
                pass
        dropped = dropped or (t.closed.is_set() and not alive_after)
        t.close()
        d = {"bytes_sent": sent, "attack_s": round(attack_s, 2), "stopped_because": why,
             "server_logged_stop_reading": stopped_reading, "replies_read_after": t.messages,
             "session_alive_after": alive_after, "dropped": dropped,
             "send_high_water": 8 * MiB, "memory": m}
        measured = (f"{sent / 1e6:.1f} MB sent in {attack_s:.1f} s, then {why}; "
                    f"server stopped reading: {'yes' if stopped_reading else 'no'}; "
                    f"dropped: {'yes' if dropped else 'no'} "
                    f"(session {'alive' if alive_after else 'gone'} after); "
                    f"RSS +{m['growth_mib']} MiB{died(srv)}")
        holds = srv.alive() and m["growth_mib"] < limit_mib
        return [Row("2", "peer never reads, provokes Error replies", measured,
                    f"RSS < {limit_mib} MiB (--send-high-water 8 MiB)", holds, d)]


# ---------------------------------------------------------------------------
# 3. Unfinished messages; a frame over the size limit.


def row3(ctx: Context) -> list[Row]:
    deadline = 5.0 if ctx.quick else 30.0
    max_size = 1 * MiB
    sessions, limit_mib = 12, 32
    flags = ["--message-deadline", f"{deadline:g}"] if ctx.quick else []
    rows = []
    with ctx.server("r3-unfinished", *flags) as srv:
        tunnels = [Tunnel(srv.port, f"hold{i}") for i in range(sessions)]
        if not all(t.ok for t in tunnels):
            raise ProbeFailed("a tunnel upgrade failed")
        payload = message(DATA, 7, b"")
        payload += os.urandom(max_size - len(payload))  # exactly --max-message-size, allowed
        partial = ws_frame(payload[:-1], length=len(payload))  # all but the last byte
        sent_at: dict[int, float] = {}
        closed_at: dict[int, float] = {}
        with watch(srv) as mem:
            for i, t in enumerate(tunnels):
                t.sock.sendall(partial)
                sent_at[i] = time.monotonic()
            sel = selectors.DefaultSelector()
            for i, t in enumerate(tunnels):
                t.sock.setblocking(False)
                sel.register(t.sock, selectors.EVENT_READ, i)
            end_by = time.monotonic() + deadline + 10
            while len(closed_at) < sessions and time.monotonic() < end_by:
                for key, _ in sel.select(0.05):
                    i = key.data
                    try:
                        data = key.fileobj.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        closed_at[i] = time.monotonic()
                        sel.unregister(key.fileobj)
            sel.close()
        m = memory(mem, srv)
        for t in tunnels:
            t.close()
        after = sorted(round(closed_at[i] - sent_at[i], 2) for i in closed_at)
        on_time = [a for a in after if deadline - 1 <= a <= deadline + 3]
        d = {"sessions": sessions, "announced_bytes": len(payload), "sent_bytes_each": len(payload) - 1,
             "message_deadline_s": deadline, "closed_after_s": after, "memory": m}
        span = f"{after[0]:.1f}-{after[-1]:.1f} s" if after else "-"
        rows.append(Row("3a", f"{sessions} sessions each hold a 1 MiB message unfinished",
                        f"RSS +{m['growth_mib']} MiB while held; {len(closed_at)}/{sessions} closed, "
                        f"after {span}{died(srv)}",
                        f"RSS < {limit_mib} MiB; closed at the {deadline:g} s deadline",
                        srv.alive() and m["growth_mib"] < limit_mib and len(on_time) == sessions, d))

        t = Tunnel(srv.port, "big").start_reader()
        t0 = time.monotonic()
        t.sock.sendall(ws_frame(b"\x00" * 16, length=max_size + 1))
        t.closed.wait(10)
        took = (t.closed_at or time.monotonic()) - t0
        code = t.close_code
        frame_s = t.close_frame_at - t0 if t.close_frame_at else None
        t.close()
        told = f"close frame {code} after {frame_s:.3f} s" if frame_s is not None else "no close frame"
        tcp = (f"TCP closed after {took:.2f} s (we never answer the close)" if t.closed.is_set()
               else f"TCP still open after {took:.1f} s")
        rows.append(Row("3b", "frame header announcing max-message-size + 1", f"{told}; {tcp}",
                        "close 1009 at once (< 1 s)",
                        code == 1009 and frame_s is not None and frame_s < 1.0 and t.closed.is_set(),
                        {"close_code": code, "close_frame_after_s": round(frame_s, 3) if frame_s else None,
                         "tcp_closed_after_s": round(took, 3)}))
    return rows


# ---------------------------------------------------------------------------
# 4. Streams whose far side ignores Pause.


def row4(ctx: Context) -> list[Row]:
    streams = 32
    budget = 64 * MiB
    max_s = 8.0 if ctx.quick else 30.0
    cap = 1024 * MiB
    with ctx.server("r4-nopause", "--session-buffer", str(budget)) as srv:
        t = Tunnel(srv.port, "evil").start_reader()
        if not t.ok:
            raise ProbeFailed(f"tunnel upgrade answered {t.status}")
        readers = []
        for i in range(streams):
            s = connect(srv.port, rcvbuf=4096)
            s.sendall(f"GET /client/evil/http/127.0.0.1:1/s{i}?timeout=60 HTTP/1.1\r\n"
                      "Host: x\r\n\r\n".encode())
            readers.append(s)
        conns = []
        try:
            for _ in range(streams):
                conns.append(t.connects.get(timeout=15)[0])
        except queue.Empty:
            raise ProbeFailed(f"only {len(conns)}/{streams} Connects from the server") from None
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
        body = os.urandom(64 * KiB)
        sent, why = 0, "byte cap"
        t.sock.settimeout(2.0)
        t0 = time.monotonic()
        with watch(srv) as mem:
            for c in conns:
                t.send(DATA, c, head)
            while sent < cap:
                live = [c for c in conns if c not in t.errors]
                if not live:
                    why = "server ended every stream"
                    break
                if time.monotonic() - t0 > max_s:
                    why = "time cap"
                    break
                try:
                    for c in live:
                        t.send(DATA, c, body)
                        sent += len(body)
                except TimeoutError:
                    why = "send blocked 2 s"
                    break
                except OSError:
                    why = "tunnel dropped"
                    break
            attack_s = time.monotonic() - t0
            time.sleep(1.0)
        m = memory(mem, srv)
        cut = {}
        for c in conns:
            text = t.errors.get(c)
            if text is not None:
                key = text.decode("utf-8", "replace").split(" bytes")[0]
                cut[key] = cut.get(key, 0) + 1
        seen = [read_reader(s) for s in readers]
        for s in readers:
            s.close()
        looked_complete = sum(1 for r in seen if r["ends_like_complete"])
        cut_short = sum(1 for r in seen if r["end"] in ("EOF", "reset") and not r["ends_like_complete"])
        t.close()
        d = {"streams": streams, "bytes_sent": sent, "attack_s": round(attack_s, 2), "stopped_because": why,
             "pauses_received": t.pauses, "streams_ended_by_server": sum(cut.values()),
             "end_reasons": cut, "readers_saw_complete_response": looked_complete,
             "readers_saw_cut_short": cut_short,
             "reader_body_bytes": sorted({r["bytes"] for r in seen}),
             "session_buffer": budget, "memory": m}
        measured = (f"{mib(sent)} sent in {attack_s:.1f} s ({why}); {t.pauses} Pauses ignored; "
                    f"{sum(cut.values())}/{streams} streams ended by server; "
                    f"RSS +{m['growth_mib']} MiB{died(srv)}; front-door readers: {looked_complete} "
                    f"got a complete-looking response, {cut_short} cut short")
        holds = srv.alive() and m["growth_mib"] * MiB <= budget
        return [Row("4", f"{streams} streams ignore Pause, front-door readers never read", measured,
                    f"RSS growth <= --session-buffer ({budget // MiB} MiB)", holds, d)]


def read_reader(sock: socket.socket, quiet: float = 0.15, cap: int = 32 * MiB) -> dict:
    """What a front-door reader that never read would see now: bytes, how the response ended."""
    sock.settimeout(quiet)
    got, tail, end = 0, b"", "still open"
    while got < cap:
        try:
            data = sock.recv(262144)
        except TimeoutError:
            break
        except OSError:
            end = "reset"
            break
        if not data:
            end = "EOF"
            break
        got += len(data)
        tail = (tail + data)[-16:]
    # A chunked response's last chunk: the front door finished it as if complete.
    return {"bytes": got, "end": end, "ends_like_complete": tail.endswith(b"\r\n0\r\n\r\n")}


# ---------------------------------------------------------------------------
# 5. Slowloris on the upgrade.


def row5(ctx: Context) -> list[Row]:
    count = 200
    timeout = 5.0 if ctx.quick else 10.0
    interval = 2.0 if ctx.quick else 3.0
    flags = ["--upgrade-timeout", f"{timeout:g}"] if ctx.quick else []
    request = upgrade_request(0, b"slow")
    with ctx.server("r5-slowloris", *flags) as srv:
        socks, opened = [], {}
        with watch(srv) as mem:
            for i in range(count):
                s = connect(srv.port)
                s.setblocking(False)
                socks.append(s)
                opened[i] = time.monotonic()
            sel = selectors.DefaultSelector()
            for i, s in enumerate(socks):
                sel.register(s, selectors.EVENT_READ, i)
            closed: dict[int, float] = {}
            sent_bytes = {i: 0 for i in range(count)}
            next_byte = time.monotonic()
            real: dict = {}
            t_start = time.monotonic()
            end_by = t_start + timeout + 6
            while len(closed) < count and time.monotonic() < end_by:
                now = time.monotonic()
                if now >= next_byte:
                    for i, s in enumerate(socks):
                        if i not in closed:
                            try:
                                s.send(request[sent_bytes[i]:sent_bytes[i] + 1])
                                sent_bytes[i] += 1
                            except OSError:
                                pass
                    next_byte = now + interval
                if not real and now - t_start > 1.0:
                    t1 = time.monotonic()
                    good = Tunnel(srv.port, "good", timeout=5)
                    real["status"] = good.status
                    real["upgrade_s"] = round(time.monotonic() - t1, 3)
                    real["open_slow_connections"] = count - len(closed)
                    if good.ok:
                        good.start_reader()
                        good.send(DATA, 9, b"x")
                        real["round_trip"] = good.wait_error(9, 5)
                    good.close()
                for key, _ in sel.select(0.05):
                    i = key.data
                    try:
                        data = key.fileobj.recv(4096)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        closed[i] = time.monotonic() - opened[i]
                        sel.unregister(key.fileobj)
            sel.close()
        m = memory(mem, srv)
        for s in socks:
            s.close()
        after = sorted(closed.values())
        on_time = [a for a in after if timeout - 0.5 <= a <= timeout + 3]
        d = {"connections": count, "byte_every_s": interval, "upgrade_timeout_s": timeout,
             "closed": len(closed), "closed_on_time": len(on_time),
             "closed_after_s": {"min": round(after[0], 2), "max": round(after[-1], 2)} if after else None,
             "bytes_sent_max": max(sent_bytes.values()), "real_tunnel": real, "memory": m}
        span = f" after {after[0]:.1f}-{after[-1]:.1f} s" if after else ""
        rows = [Row("5a", f"{count} slowloris upgrades, 1 byte every {interval:g} s",
                    f"{len(on_time)}/{count} closed by the upgrade timeout ({len(closed)} closed{span}); "
                    f"RSS +{m['growth_mib']} MiB{died(srv)}",
                    f"all closed at the {timeout:g} s upgrade timeout",
                    len(on_time) == count and srv.alive(), d)]
        ok = real.get("status") == 101 and real.get("round_trip") is True
        rows.append(Row("5b", "a real tunnel upgrade while they are held",
                        f"{real.get('status')} in {real.get('upgrade_s')} s with "
                        f"{real.get('open_slow_connections')} slow connections open; round trip "
                        f"{'ok' if real.get('round_trip') else 'failed'}",
                        "101 and a working session", ok, real))
        return rows


# ---------------------------------------------------------------------------
# 6. Log flooding.

CONTROL = b"\x1b[2J\x1b]0;pwned\x07\x1b[31mRED\x08\x00\r\n"
CSI_C1 = "\u009b31m".encode()


def raw_controls(data: bytes) -> dict:
    """Raw control characters in log bytes (newlines and tabs are the log's own)."""
    found: dict[str, int] = {}
    for b in set(data):
        if (b < 0x20 and b not in (0x09, 0x0A)) or b == 0x7F:
            found[f"0x{b:02x}"] = data.count(bytes([b]))
    c1 = sum(data.count(bytes([0xC2, x])) for x in range(0x80, 0xA0))
    if c1:
        found["C1 (U+0080-009F)"] = c1
    return found


def row6(ctx: Context) -> list[Row]:
    count = 10_000
    limit = 10**6
    with ctx.server("r6-logflood") as srv:
        t = Tunnel(srv.port, "flood").start_reader()
        if not t.ok:
            raise ProbeFailed(f"tunnel upgrade answered {t.status}")
        time.sleep(0.3)
        before = srv.log_size()
        variants = [
            lambda c: (CONNECT, c, b"tcp" + CONTROL + b"no-slash"),                 # no '/'
            lambda c: (CONNECT, c, b"/" + CONTROL),                                  # empty proto
            lambda c: (CONNECT, c, b"tcp/" + CONTROL + b"\xff\xfe"),                 # not ASCII
            lambda c: (CONNECT, c, b"tcp/" + CONTROL * 20),                          # over 266 bytes
            lambda c: (ADD_CLIENT, 0, CONTROL + CSI_C1 + b"/not-a-number"),          # bad session key
            lambda c: (SYNC, 0, CONTROL[:7]),                                        # not a multiple of 8
            lambda c: (ERROR, c, CONTROL + CSI_C1),                                  # Error for no stream
        ]
        frames = b"".join(t.frame(*variants[i % len(variants)](10 + i)) for i in range(count))
        t0 = time.monotonic()
        t.sock.sendall(frames)
        t.send(DATA, 77_777_777, b"sentinel")
        processed = t.wait_error(77_777_777, 60)
        took = time.monotonic() - t0
        alive = processed and not t.closed.is_set()
        time.sleep(0.5)
        after_burst = srv.log_size() - before
        # The throttle's summary line ("N more protocol errors") comes at the end of
        # its 10 s window, or when the session ends: end it, and count that line too.
        t.close()
        time.sleep(0.5)
        added = srv.log_bytes(before)
        d = {"messages": count, "variants": len(variants), "sent_bytes": len(frames),
             "took_s": round(took, 2),
             "replies": t.messages, "session_alive": alive, "log_bytes_after_burst": after_burst,
             "log_bytes_added": len(added), "raw_controls": raw_controls(added),
             "log_lines_added": added.count(b"\n"),
             "log_sample": added.decode("utf-8", "replace").splitlines()[:8]}
        ctl = d["raw_controls"]
        rows = [Row("6a", f"{count} malformed messages with control characters",
                    f"log +{len(added)} B ({d['log_lines_added']} lines); raw control chars: "
                    f"{ctl or 'none'}; session {'kept' if alive else 'LOST'} ({took:.1f} s){died(srv)}",
                    "log < 1 MB, no raw control characters",
                    len(added) < limit and not ctl and srv.alive(), d)]

        before = srv.log_size()
        bad = Tunnel(srv.port, b"evil\x1b[2J\x07key")
        body = bad.body[:300].decode("utf-8", "replace")
        if "\r\n" in body and all(c in "0123456789abcdefABCDEF" for c in body.split("\r\n")[0]):
            body = body.split("\r\n")[1]  # one chunk of a chunked body
        bad.close()
        time.sleep(0.3)
        added = srv.log_bytes(before)
        ctl = raw_controls(added)
        rows.append(Row("6b", "client key with control characters",
                        f"{bad.status} ({body.strip()[:60]!r}); raw control chars in log: {ctl or 'none'}",
                        "400, no raw control characters logged", bad.status == 400 and not ctl,
                        {"status": bad.status, "body": body, "raw_controls": ctl,
                         "log_added": added.decode("utf-8", "replace")[-600:]}))
        return rows


# ---------------------------------------------------------------------------
# 7. Anonymous POST with a large body.


def spooled_bytes(pid: int) -> int:
    """Largest deleted regular file the process holds open (twisted.web spools bodies to one)."""
    largest = 0
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}").endswith("(deleted)"):
                st = os.stat(f"{fd_dir}/{fd}")
                largest = max(largest, st.st_size)
        except OSError:
            pass
    return largest


def row7(ctx: Context) -> list[Row]:
    size = (16 if ctx.quick else 64) * MiB
    limit_mib = 8
    with ctx.server("r7-post") as srv:
        s = connect(srv.port, timeout=30)
        s.sendall(b"POST /client/nobody/http/127.0.0.1:1/upload HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = os.urandom(256 * KiB)
        sent, spooled, why = 0, 0, "whole body sent"
        status = line = None
        answered_at_sent = None
        t0 = time.monotonic()
        s.setblocking(False)
        with watch(srv) as mem:
            while sent < size:
                r, w, _ = select.select([s], [s], [], 5.0)
                if r:
                    answered_at_sent = sent
                    why = "server answered"
                    break
                if not w:
                    why = "send blocked 5 s"
                    break
                try:
                    sent += s.send(chunk[: min(len(chunk), size - sent)])
                except BlockingIOError:
                    continue
                except OSError as e:
                    why = f"send failed: {e}"
                    break
                if sent % (4 * MiB) < len(chunk):
                    spooled = max(spooled, spooled_bytes(srv.pid))
            spooled = max(spooled, spooled_bytes(srv.pid))
            s.setblocking(True)
            status, head, _ = read_head(s, 15)
            took = time.monotonic() - t0
            if answered_at_sent is None and status is not None:
                answered_at_sent = sent
            time.sleep(0.3)
        m = memory(mem, srv)
        s.close()
        line = head.split(b"\r\n", 1)[0].decode("latin-1") if head else None
        early = status is not None and answered_at_sent is not None and answered_at_sent < size
        d = {"content_length": size, "body_bytes_sent": sent, "stopped_because": why,
             "status": status, "status_line": line, "answer_after_s": round(took, 2),
             "answered_after_body_bytes": answered_at_sent, "spooled_to_temp_file_bytes": spooled,
             "memory": m}
        when = (f"after {mib(answered_at_sent)} of {mib(size)} body" if answered_at_sent is not None
                else "never")
        measured = (f"{status} {when} ({took:.1f} s); body spooled to a temp file: {mib(spooled)}; "
                    f"RSS +{m['growth_mib']} MiB{died(srv)}")
        holds = early and m["growth_mib"] < limit_mib and srv.alive()
        return [Row("7", f"anonymous POST of {size // MiB} MiB to an unknown client", measured,
                    f"answered before the body is read; RSS < {limit_mib} MiB", holds, d)]


# ---------------------------------------------------------------------------
# The run.

ROWS = {"1": row1, "2": row2, "3": row3, "4": row4, "5": row5, "6": row6, "7": row7}
TITLES = {"1": "endless response headers", "2": "peer never reads", "3": "unfinished messages",
          "4": "streams ignore Pause", "5": "slowloris upgrades", "6": "log flooding",
          "7": "large anonymous POST"}
#: Time a row needs at most (s), full / quick, so a run out of time skips rather than overruns.
NEEDS = {"1": (35, 20), "2": (80, 30), "3": (50, 20), "4": (45, 20), "5": (25, 18), "6": (30, 12),
         "7": (25, 10)}


def table(rows: list[Row]) -> str:
    widths = (4, 34, 64, 40, 13)
    head = ("row", "probe", "measured (today)", "limit", "verdict")
    out = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for r in rows:
        cells = [textwrap.wrap(text, w) or [""] for text, w in
                 zip((r.row, r.probe, r.measured, r.limit, r.verdict), widths, strict=True)]
        for i in range(max(len(c) for c in cells)):
            parts = ((c[i] if i < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True))
            line = "  ".join(parts)
            out.append(line.rstrip())
    return "\n".join(out)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="short deadlines and sizes (under 60 s)")
    p.add_argument("--json", metavar="PATH", help="write the rows as JSON to PATH ('-': stdout)")
    p.add_argument("--only", metavar="N[,N]", help="rows to run, of 1-7 (default: all)")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the servers' logs (their directory is printed)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    only = args.only.split(",") if args.only else list(ROWS)
    if any(n not in ROWS for n in only):
        print(f"--only: rows are {', '.join(ROWS)}", file=sys.stderr)
        return 2
    _self_check()
    deadline = 60.0 if args.quick else 300.0
    logdir = tempfile.mkdtemp(prefix="remotedialer-probe-")
    ctx = Context(args.quick, logdir, deadline)

    def watchdog():  # a probe that hangs must not outlive its deadline by much
        for c in ctx.children:
            if c.alive():
                c.proc.kill()
        print(f"probe: watchdog: still running {deadline + 60:.0f} s in; killed the servers", file=sys.stderr)
        os._exit(3)

    dog = threading.Timer(deadline + 60, watchdog)
    dog.daemon = True
    dog.start()
    rows: list[Row] = []
    mode = "quick" if args.quick else "full"
    for n in only:
        started = time.monotonic()
        if ctx.left() < NEEDS[n][1 if args.quick else 0]:
            rows.append(Row(n, TITLES[n], f"skipped: {ctx.left():.0f} s left of the deadline", "-", None))
            continue
        print(f"probe: row {n} ({TITLES[n]})...", file=sys.stderr, flush=True)
        try:
            got = ROWS[n](ctx)
        except Exception as e:  # the probe itself failed: say where, go on with the next row
            got = [Row(n, TITLES[n], f"{type(e).__name__}: {e}", "-", None,
                       {"traceback": traceback.format_exc()})]
        took = time.monotonic() - started
        for r in got:
            r.seconds = round(took, 1)
        rows.extend(got)
    dog.cancel()
    total = time.monotonic() - ctx.started
    print()
    print(f"remotedialer hardening probe ({mode}), {HOST}, Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs; RSS growth = max(VmRSS sampled, VmHWM) - VmRSS at start, server process")
    print()
    print(table(rows))
    print()
    for r in rows:
        if r.holds is None and "traceback" in r.details:
            print(f"row {r.row}: {r.details['traceback'].strip().splitlines()[-1]}")
    for p in ctx.problems:
        print("PROBLEM: " + p[:600])
    times = {r.row[0]: r.seconds for r in rows}
    print("row times: " + ", ".join(f"{n} {s:.0f} s" for n, s in times.items()) + f"; total {total:.0f} s")
    failed = [r for r in rows if r.holds is None] or ctx.problems
    held = sum(1 for r in rows if r.holds)
    print(f"{held}/{len(rows)} rows hold" + ("; THE PROBE FAILED TO RUN SOME ROWS" if failed else ""))
    if args.json:
        doc = {"mode": mode, "python": platform.python_version(), "cpus": os.cpu_count(),
               "total_seconds": round(total, 1), "problems": ctx.problems,
               "logdir": logdir if args.keep_logs else None,
               "rows": [dict(asdict(r), verdict=r.verdict) for r in rows]}
        text = json.dumps(doc, indent=2, default=str)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    if args.keep_logs:
        print(f"server logs: {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
