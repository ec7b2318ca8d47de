"""
The scenarios.  Each starts its own processes (a L{Rig}), runs its
measurement C{runs} times with its baseline interleaved (so background load
hits both alike; the order alternates between runs), records figures and
checks in the L{Report}, and stops everything.

    stream      one stream through the library endpoint, upload and download,
                vs the same through a plain Twisted relay
    streams100  100 concurrent streams (half up, half down), aggregate, vs relay
    frontdoor   a download through the real programs' front door vs the same
                download direct from the target
    slowreader  a large download through the front door read slowly, with
                stops: peak RSS growth of server and client vs a plain relay's
    requests    100-byte GETs with wrk at 1, 16, 128 connections, front door
                vs direct: req/s, p50, p99
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from benchmarks.harness import (
    ChildError,
    MemoryWatch,
    MiB,
    Report,
    Rig,
    free_port,
    module_argv,
    port_open,
    twistd_argv,
    wait_for,
)
from benchmarks.loadgen import WRK_INSTALL_HINT, body_problems, http_get, run_wrk, wrk_path
from benchmarks.payload import payload_bytes, payload_sha256

PROGRAM_CLIENT_KEY = "foo"


@dataclass
class Settings:
    mode: str
    runs: int
    size_mib: int
    streams: int
    streams_size_mib: int
    slow_mib: int
    slow_rate: float  # MB/s while the slow reader reads
    pauses: int
    pause: float
    duration: float  # seconds per wrk run
    connections: list[int]
    max_growth_mib: float
    deadline: float  # seconds for the whole suite


class Abort(RuntimeError):
    """The suite ran past its deadline."""


class Context:
    def __init__(self, settings: Settings, report: Report, logdir: str) -> None:
        self.settings = settings
        self.report = report
        self.logdir = logdir
        self.deadline = time.monotonic() + settings.deadline
        self.rigs: list[Rig] = []

    def rig(self, kind: type[Rig]) -> Rig:
        """A new rig of C{kind}; its problems are collected however the scenario ends."""
        rig = kind(self.logdir)
        self.rigs.append(rig)
        return rig

    def left(self) -> float:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Abort(f"over the suite's deadline ({self.settings.deadline:.0f} s)")
        return left


def _orders(run: int, pair: tuple[str, str]) -> tuple[str, str]:
    return pair if run % 2 == 0 else pair[::-1]


# ---------------------------------------------------------------------------
# Library-level: the tunnel endpoint inside a server process.


class LibraryRig(Rig):
    """The stream target, a relay to it, the tunnel server role, its client."""

    def setup(self) -> None:
        target = self.start("stream-target", module_argv("benchmarks.targets", "stream"))
        self.target_port = target.ready()["port"]
        relay = self.start("relay", module_argv("benchmarks.targets", "relay", "--to", str(self.target_port)))
        self.relay_port = relay.ready()["port"]
        self.server = self.start("server", module_argv("benchmarks.roles", "server"))
        hello = self.server.ready()
        self.nvx = hello["nvx"]
        client = self.start("client", module_argv("benchmarks.roles", "client",
                                                  "--url", f"ws://127.0.0.1:{hello['port']}/connect"))
        client.ready()
        if not self.server.request({"cmd": "wait_session", "timeout": 10}, timeout=20).get("ok"):
            raise ChildError("the server never saw the client's session")

    def transfer(self, ctx: Context, via: str, streams: list) -> dict:
        total = sum(size for _, size, _ in streams)
        cap = min(ctx.left(), max(30.0, total / 20e6))  # 20 MB/s would be very slow
        cmd = {"cmd": "transfer", "via": via, "streams": streams, "stall": 10.0, "cap": cap,
               "target_port": self.target_port, "relay_port": self.relay_port}
        return self.server.request(cmd, timeout=cap + 30)


def _transfers(ctx: Context, scenario: str, shapes: list) -> None:
    """C{shapes}: (label, streams(run) -> [(direction, size, seed)])."""
    report = ctx.report
    figs = {}
    for label, _ in shapes:
        base = report.figure(scenario, f"{label}, plain relay", "MB/s")
        tunnel = report.figure(scenario, f"{label}, tunnel", "MB/s", baseline=base.key)
        figs[label] = {"relay": base, "tunnel": tunnel}
    with ctx.rig(LibraryRig) as rig:
        rig.setup()
        report.config.setdefault("nvx", {})["library server"] = rig.nvx
        for run in range(ctx.settings.runs):
            for label, streams in shapes:
                for via in _orders(run, ("relay", "tunnel")):
                    r = rig.transfer(ctx, via, streams(run))
                    ok = report.check(scenario, f"{label} via {via}, run {run + 1}: every byte (sha256)",
                                      r.get("ok"), "; ".join(r.get("errors") or [r.get("error") or ""]))
                    if ok:
                        figs[label][via].values.append(r["mbps"])
                    report.detail(scenario, dict(r, label=label, via=via, run=run + 1))


def stream(ctx: Context) -> None:
    size = ctx.settings.size_mib * MiB
    ctx.report.note("stream", f"{ctx.settings.size_mib} MiB per transfer, run inside the server process "
                              "(server.endpoint() vs TCP through twisted.protocols.portforward)")
    _transfers(ctx, "stream", [
        ("upload server->target", lambda run: [("up", size, 10 + run)]),
        ("download target->server", lambda run: [("down", size, 20 + run)]),
    ])


def streams100(ctx: Context) -> None:
    n = ctx.settings.streams
    per = max(64 * 1024, ctx.settings.streams_size_mib * MiB // n)
    ctx.report.note("streams100", f"{n} concurrent streams, half up, half down, {per / MiB:.2f} MiB each "
                                  f"({n * per / MiB:.0f} MiB in all); aggregate MB/s")
    _transfers(ctx, "streams100", [
        (f"{n} streams aggregate",
         lambda run: [("up" if i % 2 == 0 else "down", per, 1000 * (run + 1) + i) for i in range(n)]),
    ])


# ---------------------------------------------------------------------------
# The real programs: twistd remotedialer-server / remotedialer-client.


class ProgramRig(Rig):
    """The HTTP target, the two programs (the client may dial only the
    target), and optionally a plain relay to the target."""

    def setup(self, ctx: Context, relay: bool = False) -> None:
        target = self.start("http-target", module_argv("benchmarks.targets", "http"))
        self.target_port = target.ready()["port"]
        self.relay = None
        if relay:
            self.relay = self.start("relay", module_argv("benchmarks.targets", "relay",
                                                         "--to", str(self.target_port)))
            self.relay_port = self.relay.ready()["port"]
        self.server_port = free_port()
        self.server = self.start("server", twistd_argv(
            "remotedialer-server", "--listen", f"tcp:{self.server_port}:interface=127.0.0.1",
            "--insecure-any-client"), control=False)
        # The client starts once the server listens (else it waits out a reconnect backoff).
        wait_for("the server listening", lambda: port_open(self.server_port), 20, self)
        self.client = self.start("client", twistd_argv(
            "remotedialer-client", "--connect", f"ws://127.0.0.1:{self.server_port}/connect",
            "--id", PROGRAM_CLIENT_KEY, "--allow", f"tcp/127.0.0.1:{self.target_port}"), control=False)
        self.front_path = f"/client/{PROGRAM_CLIENT_KEY}/http/127.0.0.1:{self.target_port}/big"

        def answered():  # 500 until the client's session is up
            r = http_get(self.server_port, f"{self.front_path}?size=0",
                         deadline=time.monotonic() + 5, stall=2)
            return r.get("status") == 200 and not r.get("error")

        wait_for("the front door answering through the tunnel", answered, min(30, ctx.left()), self, 0.1)
        # Warm-up: first-use imports and buffers, before anything is measured.
        warm = http_get(self.server_port, f"{self.front_path}?size={MiB}", deadline=time.monotonic() + 20)
        problems = body_problems(warm, MiB, payload_sha256(MiB))
        if problems:
            raise ChildError(f"warm-up download through the front door failed: {'; '.join(problems)}")
        time.sleep(0.3)

    def get(self, ctx: Context, via: str, size: int, seed: int, **how) -> dict:
        query = f"?size={size}&seed={seed}"
        if via == "front door":
            port, path = self.server_port, self.front_path + query
        else:
            port, path = (self.target_port if via == "direct" else self.relay_port), "/big" + query
        return http_get(port, path, deadline=time.monotonic() + ctx.left(), **how)


def _body_check(ctx: Context, scenario: str, what: str, r: dict, size: int, seed: int) -> bool:
    problems = body_problems(r, size, payload_sha256(size, seed))
    return ctx.report.check(scenario, f"{what}: status, length, every byte (sha256), EOF",
                            not problems, "; ".join(problems))


def frontdoor(ctx: Context) -> None:
    report = ctx.report
    size = ctx.settings.size_mib * MiB
    base = report.figure("frontdoor", "download, direct from the target", "MB/s")
    front = report.figure("frontdoor", "download through the front door", "MB/s", baseline=base.key)
    figs = {"direct": base, "front door": front}
    report.note("frontdoor", f"GET /big of {ctx.settings.size_mib} MiB read by the load generator "
                             f"(recv_into 1 MiB + sha256); front door = server + tunnel + client programs")
    with ctx.rig(ProgramRig) as rig:
        rig.setup(ctx)
        for run in range(ctx.settings.runs):
            for via in _orders(run, ("direct", "front door")):
                seed = 30 + run
                payload_sha256(size, seed)  # before the clock starts
                r = rig.get(ctx, via, size, seed)
                if _body_check(ctx, "frontdoor", f"{via}, run {run + 1}", r, size, seed):
                    figs[via].values.append(size / r["elapsed"] / 1e6)
                report.detail("frontdoor", dict(r, sha256=None, via=via, run=run + 1))


def slowreader(ctx: Context) -> None:
    report = ctx.report
    s = ctx.settings
    size = s.slow_mib * MiB
    how = {"rate": s.slow_rate * 1e6, "pause_s": s.pause, "stall": 15.0,
           "pauses": tuple(size * (i + 1) // (s.pauses + 1) for i in range(s.pauses))}
    base = report.figure("slowreader", "peak RSS growth, plain relay", "MiB", higher_is_better=False)
    figs = {name: report.figure("slowreader", f"peak RSS growth, {name}", "MiB", baseline=base.key,
                                higher_is_better=False, compare="difference")
            for name in ("server", "client")}
    limit = s.max_growth_mib * MiB
    report.note("slowreader", f"{s.slow_mib} MiB through the front door (or the relay) read at "
                              f"{s.slow_rate:g} MB/s with {s.pauses} stop(s) of {s.pause:g} s; growth = "
                              f"max(sampled VmRSS, VmHWM after reset) - RSS at the start; "
                              f"checked < {s.max_growth_mib:g} MiB")
    with ctx.rig(ProgramRig) as rig:
        rig.setup(ctx, relay=True)
        payload_sha256(size, 40)
        for run in range(s.runs):
            for via in _orders(run, ("relay", "front door")):
                watched = [rig.relay] if via == "relay" else [rig.server, rig.client]
                with MemoryWatch(watched) as watch:
                    r = rig.get(ctx, via, size, 40, **how)
                intact = _body_check(ctx, "slowreader", f"{via}, run {run + 1}", r, size, 40)
                if intact:
                    if via == "relay":
                        base.values.append(watch.growth("relay") / MiB)
                    else:
                        for name, fig in figs.items():
                            g = watch.growth(name)
                            fig.values.append(g / MiB)
                            report.check("slowreader",
                                         f"{name} RSS growth < {s.max_growth_mib:g} MiB, run {run + 1}",
                                         g < limit, f"{g / MiB:.1f} MiB")
                report.detail("slowreader",
                              dict(r, sha256=None, via=via, run=run + 1, memory=watch.describe()))
                if not watch.hwm_reset:
                    report.note("slowreader", "VmHWM could not be reset: peaks are 20 ms samples only")


def requests(ctx: Context) -> None:
    report = ctx.report
    s = ctx.settings
    if wrk_path() is None:
        report.skipped["requests"] = WRK_INSTALL_HINT
        return
    body = payload_bytes(100, 0)
    figs = {}
    for c in s.connections:
        for metric, unit, higher in (("req/s", "req/s", True), ("p50", "ms", False), ("p99", "ms", False)):
            base = report.figure("requests", f"{metric} at {c} conn, direct", unit,
                                 higher_is_better=higher, decimals=0 if higher else 2)
            front = report.figure("requests", f"{metric} at {c} conn, front door", unit, baseline=base.key,
                                  higher_is_better=higher, decimals=0 if higher else 2)
            figs[c, metric] = {"direct": base, "front door": front}
    report.note("requests", f"wrk -t1 --latency, {s.duration:g} s per run, GET /big?size=100 "
                            f"(keep-alive; every status and body checked by wrk_check.lua)")
    with ctx.rig(ProgramRig) as rig:
        rig.setup(ctx)
        for via in ("direct", "front door"):
            _body_check(ctx, "requests", f"one GET {via}", rig.get(ctx, via, 100, 0), 100, 0)
        urls = {"direct": f"http://127.0.0.1:{rig.target_port}/big?size=100",
                "front door": f"http://127.0.0.1:{rig.server_port}{rig.front_path}?size=100"}
        for run in range(s.runs):
            for c in s.connections:
                for via in _orders(run, ("direct", "front door")):
                    if ctx.left() < s.duration + 5:
                        raise Abort("not enough time left for wrk")
                    rig.check_alive()
                    try:
                        r = run_wrk(urls[via], c, s.duration, body)
                    except ValueError as e:
                        report.check("requests", f"wrk {via} at {c} conn, run {run + 1}", False, str(e))
                        continue
                    ok = report.check("requests", f"{via} at {c} conn, run {run + 1}: every response 200 "
                                                  f"with the exact body, no socket errors",
                                      r["bad"] == 0 and r["good"] and r["socket_errors"] == 0,
                                      f"good={r['good']} bad={r['bad']} socket errors={r['socket_errors']}")
                    if ok:
                        figs[c, "req/s"][via].values.append(r["rps"])
                        figs[c, "p50"][via].values.append(r["p50_ms"])
                        figs[c, "p99"][via].values.append(r["p99_ms"])
                    report.detail("requests", dict(r, via=via, run=run + 1))


SCENARIOS = {
    "stream": stream,
    "streams100": streams100,
    "frontdoor": frontdoor,
    "slowreader": slowreader,
    "requests": requests,
}
