"""
The scale scenarios: what one more stream or one more session costs.

    streams     N concurrent streams on one session (library endpoint, the
                tunnel server's own process) to the C{echo} target: time to
                open them all, server and client RSS per stream, idle CPU
                while they sit open; baseline: the same through a plain
                Twisted relay (RSS per relayed connection, time to open)
    sessions    N tunnel clients connected to one server: time to connect
                them, server and client RSS per session, idle CPU;
                baseline: N idle TCP connections to a plain Twisted server

RSS figures are growth of VmRSS over the measurement divided by N, with
the process warmed up first (a first batch opened and closed), so they
include what the allocator keeps, kernel socket buffers excluded.  Idle
CPU is user+system time over a quiet interval, in percent of one core,
against the same process's idle CPU before anything was opened.
"""

from __future__ import annotations

import socket
import time

from benchmarks.harness import ChildError, Rig, cpu_seconds, module_argv, raise_fd_limit
from benchmarks.scenarios import Context, LibraryRig

KiB = 1024


def _rss(child) -> int:
    rss = child.status()["VmRSS"]
    if rss is None:
        raise ChildError(f"{child.name}: cannot read its RSS")
    return rss


def _idle_cpu(children, seconds: float) -> dict[str, float]:
    """Percent of one core each child used over C{seconds} of doing nothing."""
    before = {c.name: cpu_seconds(c.pid) or 0.0 for c in children}
    t0 = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    return {c.name: 100 * ((cpu_seconds(c.pid) or 0.0) - before[c.name]) / elapsed for c in children}


class ScaleRig(LibraryRig):
    """The library rig with the C{echo} target in place of the stream target."""

    def setup(self) -> None:
        super().setup("echo")
        self.echo_port = self.target_port

    def open(self, ctx: Context, via: str, count: int) -> dict:
        cap = min(ctx.left(), 30.0 + count / 100)
        cmd = {"cmd": "open_streams", "via": via, "count": count, "window": 256, "cap": cap,
               "target_port": self.echo_port, "relay_port": self.relay_port}
        return self.server.request(cmd, timeout=cap + 30)

    def close(self, ctx: Context) -> dict:
        return self.server.request({"cmd": "close_streams"}, timeout=min(ctx.left(), 120.0))


def streams(ctx: Context) -> None:
    report = ctx.report
    s = ctx.settings
    n = s.scale_streams
    # The relay holds two sockets per connection: keep it under the fd limit.
    n_relay = max(1, min(n, (raise_fd_limit() - 200) // 2))
    report.note("streams", f"{n} streams open at once on one session (at most 256 being opened at a time), "
                           f"each open once a byte came back through it; baseline: {n_relay} connections "
                           f"through twisted.protocols.portforward; idle CPU over {s.idle_seconds:g} s")
    per = {}
    for side in ("server", "client"):
        base = report.figure("streams", f"RSS per connection, plain relay ({side} side)", "KiB",
                             higher_is_better=False, decimals=2)
        per[side] = (base, report.figure("streams", f"{side} RSS per stream", "KiB",
                                         baseline=base.key, higher_is_better=False, decimals=2))
    t_base = report.figure("streams", f"time to open {n_relay}, plain relay", "s",
                           higher_is_better=False, decimals=3)
    t_open = report.figure("streams", f"time to open {n} streams", "s", baseline=t_base.key,
                           higher_is_better=False, decimals=3)
    t_close = report.figure("streams", f"time to close {n} streams", "s", higher_is_better=False, decimals=3)
    cpu = {}
    for side in ("server", "client"):
        base = report.figure("streams", f"{side} idle CPU, no streams", "%", higher_is_better=False,
                             decimals=2)
        cpu[side] = (base, report.figure("streams", f"{side} idle CPU, {n} streams open", "%",
                                         baseline=base.key, higher_is_better=False, decimals=2,
                                         compare="difference"))
    # Each run in fresh processes: memory freed by the previous run would
    # be reused by the next, and its growth would read as nothing.
    for run in range(s.runs):
        with ctx.rig(ScaleRig) as rig:
            rig.setup()
            # Warm-up: first-use allocations and imports on both paths.
            for via in ("tunnel", "relay"):
                r = rig.open(ctx, via, min(n, 200))
                rig.close(ctx)
                if not r.get("ok"):
                    raise ChildError(f"warm-up: {via}: {r}")
            time.sleep(0.3)
            idle = _idle_cpu([rig.server, rig.client], s.idle_seconds)
            for side in ("server", "client"):
                cpu[side][0].values.append(idle[side])
            # Two processes measure the relay's connections (the server role
            # and the relay) and two the tunnel's: the server role's memory
            # after the relay run is reused by the tunnel run, so the tunnel
            # is measured first there.
            before = {c.name: _rss(c) for c in (rig.server, rig.client)}
            r = rig.open(ctx, "tunnel", n)
            ok = report.check("streams", f"{n} streams open, run {run + 1}", r.get("ok"),
                              str(r.get("error") or "") + " " + "; ".join(r.get("errors") or []))
            if ok:
                t_open.values.append(r["elapsed"])
                time.sleep(0.2)
                for side, child in (("server", rig.server), ("client", rig.client)):
                    per[side][1].values.append((_rss(child) - before[side]) / n / KiB)
                idle = _idle_cpu([rig.server, rig.client], s.idle_seconds)
                for side in ("server", "client"):
                    cpu[side][1].values.append(idle[side])
            report.detail("streams", dict(r, via="tunnel", run=run + 1))
            c = rig.close(ctx)
            if report.check("streams", f"{n} streams closed, run {run + 1}", c.get("ok"), str(c)):
                t_close.values.append(c["elapsed"])
            rig.check_alive()
        with ctx.rig(ScaleRig) as rig:
            rig.setup()
            r = rig.open(ctx, "relay", min(n_relay, 200))
            rig.close(ctx)
            time.sleep(0.3)
            before = {c.name: _rss(c) for c in (rig.server, rig.relay)}
            r = rig.open(ctx, "relay", n_relay)
            if report.check("streams", f"{n_relay} relayed connections open, run {run + 1}", r.get("ok"),
                            str(r.get("error") or "") + " " + "; ".join(r.get("errors") or [])):
                t_base.values.append(r["elapsed"])
                time.sleep(0.2)
                per["server"][0].values.append((_rss(rig.server) - before["server"]) / n_relay / KiB)
                per["client"][0].values.append((_rss(rig.relay) - before["relay"]) / n_relay / KiB)
            report.detail("streams", dict(r, via="relay", run=run + 1))
            rig.close(ctx)


class SessionsRig(Rig):
    """A tunnel server role, the echo target (baseline), and a process of many clients."""

    def setup(self) -> None:
        target = self.start("echo-target", module_argv("benchmarks.targets", "echo"))
        self.echo_port = target.ready()["port"]
        self.echo = target
        self.server = self.start("server", module_argv("benchmarks.roles", "server"))
        self.url = f"ws://127.0.0.1:{self.server.ready()['port']}/connect"

    def clients(self, prefix: str):
        child = self.start(f"clients-{prefix}", module_argv("benchmarks.roles", "clients", "--url", self.url,
                                                            "--prefix", prefix))
        child.ready()
        return child


def _hold_tcp(port: int, n: int, deadline: float) -> list[socket.socket]:
    """N idle TCP connections from the load generator, each known accepted by an echo."""
    socks = []
    try:
        for _ in range(n):
            left = max(1.0, deadline - time.monotonic())
            sock = socket.create_connection(("127.0.0.1", port), timeout=left)
            socks.append(sock)
        for sock in socks:
            sock.sendall(b"x")
        for sock in socks:
            if sock.recv(1) != b"x":
                raise ChildError("the echo target did not answer")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def sessions(ctx: Context) -> None:
    report = ctx.report
    s = ctx.settings
    n = s.scale_sessions
    raise_fd_limit()
    report.note("sessions", f"{n} tunnel clients (one process, connected 100 at a time) on one server; "
                            f"baseline: {n} idle TCP connections to a plain Twisted server; idle CPU over "
                            f"{s.idle_seconds:g} s (each client pings every 5 s)")
    base = report.figure("sessions", "RSS per idle TCP connection, plain Twisted server", "KiB",
                         higher_is_better=False, decimals=2)
    per_server = report.figure("sessions", "server RSS per session", "KiB", baseline=base.key,
                               higher_is_better=False, decimals=2)
    per_client = report.figure("sessions", "client RSS per session", "KiB", higher_is_better=False,
                               decimals=2)
    t_connect = report.figure("sessions", f"time to connect {n} sessions", "s",
                              higher_is_better=False, decimals=3)
    cpu_base = report.figure("sessions", "server idle CPU, no sessions", "%", higher_is_better=False,
                             decimals=2)
    cpu = report.figure("sessions", f"server idle CPU, {n} sessions", "%", baseline=cpu_base.key,
                        higher_is_better=False, decimals=2, compare="difference")
    for run in range(s.runs):
        with ctx.rig(SessionsRig) as rig:  # fresh processes per run, as for streams
            rig.setup()
            warm = rig.clients("warm-")
            r = warm.request({"cmd": "connect", "count": min(n, 100)}, timeout=min(ctx.left(), 60))
            if not r.get("ok"):
                raise ChildError(f"warm-up sessions: {r}")
            warm.stop()
            time.sleep(0.5)
            before = _rss(rig.echo)
            socks = _hold_tcp(rig.echo_port, n, time.monotonic() + min(ctx.left(), 60))
            time.sleep(0.2)
            base.values.append((_rss(rig.echo) - before) / n / KiB)
            for sock in socks:
                sock.close()
            cpu_base.values.append(_idle_cpu([rig.server], s.idle_seconds)["server"])
            clients = rig.clients(f"r{run}-")
            before = {"server": _rss(rig.server), "client": _rss(clients)}
            r = clients.request({"cmd": "connect", "count": n}, timeout=min(ctx.left(), 60 + n / 20))
            if report.check("sessions", f"{n} sessions connected, run {run + 1}", r.get("ok"), str(r)):
                t_connect.values.append(r["elapsed"])
                time.sleep(0.5)
                per_server.values.append((_rss(rig.server) - before["server"]) / n / KiB)
                per_client.values.append((_rss(clients) - before["client"]) / n / KiB)
                cpu.values.append(_idle_cpu([rig.server], s.idle_seconds)["server"])
            report.detail("sessions", dict(r, run=run + 1))
            clients.stop(grace=30)
