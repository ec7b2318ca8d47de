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
                vs direct: req/s, p50, p99, p99.9
    forward     the same wrk runs through the tunnel itself: a port-forward
                over server.endpoint() (no front door) vs a plain relay
    peerhop     two peered servers, the client on one: downloads and wrk
                entering at the other (the peer hop) vs at the client's own

With REMOTEDIALER_GO_BIN naming Go's reference binaries, frontdoor,
requests and peerhop also run them in the same rig, on the same target,
interleaved with ours: each of our figures then has a "vs Go" ratio.
The scale scenarios (streams, sessions) are in L{benchmarks.scale}.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from benchmarks.harness import (
    Child,
    ChildError,
    MemoryWatch,
    MiB,
    Report,
    Rig,
    cpu_seconds,
    free_port,
    module_argv,
    port_open,
    twistd_argv,
    wait_for,
)
from benchmarks.loadgen import WRK_INSTALL_HINT, body_problems, http_get, run_wrk, wrk_path
from benchmarks.payload import payload_bytes, payload_sha256
from benchmarks.targets import big_path

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
    scale_streams: int  # streams open at once on one session
    scale_sessions: int  # sessions on one server
    storm_clients: int  # clients of the storm (benchmarks.storm)
    idle_seconds: float  # scale: quiet interval over which idle CPU is measured
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
    """A target (of L{benchmarks.targets}), a relay to it, the tunnel server role, its client."""

    def setup(self, target: str = "stream") -> None:
        self.target = self.start(f"{target}-target", module_argv("benchmarks.targets", target))
        self.target_port = self.target.ready()["port"]
        self.relay = self.start("relay", module_argv("benchmarks.targets", "relay",
                                                     "--to", str(self.target_port)))
        self.relay_port = self.relay.ready()["port"]
        self.server = self.start("server", module_argv("benchmarks.roles", "server"))
        hello = self.server.ready()
        self.nvx = hello["nvx"]
        self.client = self.start("client", module_argv("benchmarks.roles", "client",
                                                       "--url", f"ws://127.0.0.1:{hello['port']}/connect"))
        self.client.ready()
        if not self.server.request({"cmd": "wait_session", "timeout": 10}, timeout=20).get("ok"):
            raise ChildError("the server never saw the client's session")

    def url(self, via: str, size: int, impl: str = "python") -> str:
        """For wrk: "direct" to the target, "relay" through the plain relay, "tunnel" through L{forward}."""
        if via == "tunnel" and getattr(self, "forward_port", None) is None:
            self.forward_port = self.forward()
        port = {"direct": self.target_port, "relay": self.relay_port}.get(via) or self.forward_port
        return f"http://127.0.0.1:{port}{big_path(size)}"

    def forward(self) -> int:
        """A port on the server role whose connections go through server.endpoint() to the target."""
        r = self.server.request({"cmd": "forward", "target_port": self.target_port}, timeout=20)
        if not r.get("ok"):
            raise ChildError(f"the server role could not forward: {r}")
        return r["port"]

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
# The real programs: twistd remotedialer-server / remotedialer-client, and
# Go's reference programs (server, client) when REMOTEDIALER_GO_BIN names them.

GO_BIN_ENV = "REMOTEDIALER_GO_BIN"
PEER_TOKEN = "bench-peer-token"  # loopback only, programs of this run only


def go_bin() -> str | None:
    """The directory of Go's C{server} and C{client} binaries, or None (the Go figures are skipped)."""
    path = os.environ.get(GO_BIN_ENV)
    if path and all(os.access(os.path.join(path, name), os.X_OK) for name in ("server", "client")):
        return path
    return None


class Deployment:
    """
    One implementation's programs on the rig's target: a server the client
    connects to (C{home}) and, with C{hop}, a second server peered with it
    where requests enter and cross to the first (the peer hop).
    """

    def __init__(self, rig: ProgramRig, impl: str, hop: bool) -> None:
        self.rig = rig
        self.impl = impl
        self.label = "Go" if impl == "go" else "Python"
        self.home_port = free_port()
        self.hop_port = free_port() if hop else None
        ports = {"home": self.home_port} | ({"hop": self.hop_port} if hop else {})
        for name, port in ports.items():
            peers = {other: p for other, p in ports.items() if other != name}
            self._server(f"{impl}-server-{name}", name, port, peers)
        for port in ports.values():
            wait_for(f"{self.label} server on {port} listening", lambda port=port: port_open(port), 20, rig)
        url = f"ws://127.0.0.1:{self.home_port}/connect"
        if impl == "go":
            argv = [os.path.join(go_bin() or "", "client"), "-connect", url, "-id", PROGRAM_CLIENT_KEY,
                    "-debug=false"]
        else:
            argv = twistd_argv("remotedialer-client", "--connect", url, "--id", PROGRAM_CLIENT_KEY,
                               "--allow", f"tcp/127.0.0.1:{rig.target_port}")
        self.client = rig.start(f"{impl}-client", argv, control=False)

    def _server(self, name: str, peer_id: str, port: int, peers: dict[str, int]) -> None:
        rig = self.rig
        if self.impl == "go":
            argv = [os.path.join(go_bin() or "", "server"), "-listen", f"127.0.0.1:{port}"]
            if peers:
                argv += ["-id", peer_id, "-token", PEER_TOKEN, "-peers", ",".join(
                    f"{other}:{PEER_TOKEN}:ws://127.0.0.1:{p}/connect" for other, p in peers.items())]
        else:
            argv = twistd_argv("remotedialer-server", "--listen", f"tcp:{port}:interface=127.0.0.1",
                               "--insecure-any-client")
            if peers:
                token_file = os.path.join(rig.logdir, "peer.token")
                peers_file = os.path.join(rig.logdir, f"{name}.peers")
                with open(token_file, "w") as f:
                    f.write(PEER_TOKEN + "\n")
                with open(peers_file, "w") as f:
                    f.writelines(f"{other}:{PEER_TOKEN}:ws://127.0.0.1:{p}/connect\n"
                                 for other, p in peers.items())
                argv += ["--id", peer_id, "--token-file", token_file, "--peers-file", peers_file]
        child = rig.start(name, argv, control=False)
        setattr(self, f"{peer_id}_server", child)

    @property
    def server(self) -> Child:
        return self.home_server

    def port(self, via: str) -> int:
        return self.hop_port if via == "hop" and self.hop_port else self.home_port

    def path(self, size: int, seed: int = 0, timeout: float | None = None) -> str:
        # The size in the path: Go's front door drops the query string.  Its
        # ?timeout= (default 15 s) bounds the whole exchange, body included
        # (ours: the wait for the response head), so slow readers give one.
        query = f"?timeout={timeout:g}" if timeout else ""
        target = f"127.0.0.1:{self.rig.target_port}"
        return f"/client/{PROGRAM_CLIENT_KEY}/http/{target}{big_path(size, seed)}{query}"

    def url(self, via: str, size: int) -> str:
        return f"http://127.0.0.1:{self.port(via)}{self.path(size)}"

    def wait_routed(self, ctx: Context) -> None:
        """Until a GET answers 200 through every entry (the hop only once the peers have told each other)."""
        for via in ("home", "hop") if self.hop_port else ("home",):
            def answered(via=via):
                r = http_get(self.port(via), self.path(0), deadline=time.monotonic() + 5, stall=2)
                return r.get("status") == 200 and not r.get("error")

            wait_for(f"{self.label} front door answering through the tunnel ({via})", answered,
                     min(30, ctx.left()), self.rig, 0.1)
            warm = http_get(self.port(via), self.path(MiB), deadline=time.monotonic() + 20)
            problems = body_problems(warm, MiB, payload_sha256(MiB))
            if problems:
                raise ChildError(f"{self.label} warm-up download ({via}) failed: {'; '.join(problems)}")


class ProgramRig(Rig):
    """
    The HTTP target, the Python programs (the client may dial only the
    target), optionally a plain relay to the target, and the same
    deployment of Go's programs when C{go} and REMOTEDIALER_GO_BIN is set.
    """

    def setup(self, ctx: Context, relay: bool = False, hop: bool = False, go: bool = False) -> None:
        target = self.start("http-target", module_argv("benchmarks.targets", "http"))
        self.target_port = target.ready()["port"]
        self.relay = None
        if relay:
            self.relay = self.start("relay", module_argv("benchmarks.targets", "relay",
                                                         "--to", str(self.target_port)))
            self.relay_port = self.relay.ready()["port"]
        self.deployments = {"python": Deployment(self, "python", hop)}
        if go and go_bin():
            self.deployments["go"] = Deployment(self, "go", hop)
        for deployment in self.deployments.values():
            deployment.wait_routed(ctx)
        python = self.deployments["python"]
        self.server, self.client = python.server, python.client
        time.sleep(0.3)

    def get(self, ctx: Context, via: str, size: int, seed: int, impl: str = "python",
            timeout: float | None = None, **how) -> dict:
        """C{via}: "direct", "relay", "front door" (the client's server) or "hop" (the other server)."""
        if via in ("front door", "hop"):
            deployment = self.deployments[impl]
            port = deployment.port("hop" if via == "hop" else "home")
            path = deployment.path(size, seed, timeout)
        else:
            port, path = (self.target_port if via == "direct" else self.relay_port), big_path(size, seed)
        return http_get(port, path, deadline=time.monotonic() + ctx.left(), **how)

    def url(self, via: str, size: int, impl: str = "python") -> str:
        if via == "direct":
            return f"http://127.0.0.1:{self.target_port}{big_path(size)}"
        return self.deployments[impl].url("hop" if via == "hop" else "home", size)


def _body_check(ctx: Context, scenario: str, what: str, r: dict, size: int, seed: int) -> bool:
    problems = body_problems(r, size, payload_sha256(size, seed))
    return ctx.report.check(scenario, f"{what}: status, length, every byte (sha256), EOF",
                            not problems, "; ".join(problems))


def _go_note(ctx: Context, scenario: str, rig: ProgramRig) -> None:
    if "go" in rig.deployments:
        ctx.report.note(scenario, f"Go: server and client of {go_bin()} (client -debug=false), the same "
                                  "target, measured in turn with ours; 'vs Go' = ours / Go's")
    elif not go_bin():
        ctx.report.note(scenario, f"no Go figures: set {GO_BIN_ENV} to a directory with Go's server and "
                                  "client (rancher/remotedialer) for them")


def _downloads(ctx: Context, scenario: str, rig: ProgramRig, ways: dict, size: int, seed0: int) -> None:
    """C{ways}: label -> (via, impl, figure); each run downloads once by each way, in alternating order."""
    labels = list(ways)
    for run in range(ctx.settings.runs):
        for label in labels if run % 2 == 0 else labels[::-1]:
            via, impl, fig = ways[label]
            seed = seed0 + run
            payload_sha256(size, seed)  # before the clock starts
            r = rig.get(ctx, via, size, seed, impl=impl)
            problems = body_problems(r, size, payload_sha256(size, seed))
            if impl == "go" and problems:  # Go's programs' failure, not ours: noted, not counted
                ctx.report.note(scenario, f"Go's {label}, run {run + 1}: {'; '.join(problems)}; not counted")
            elif _body_check(ctx, scenario, f"{label}, run {run + 1}", r, size, seed):
                fig.values.append(size / r["elapsed"] / 1e6)
            ctx.report.detail(scenario, dict(r, sha256=None, way=label, run=run + 1))


def frontdoor(ctx: Context) -> None:
    report = ctx.report
    size = ctx.settings.size_mib * MiB
    base = report.figure("frontdoor", "download, direct from the target", "MB/s")
    front = report.figure("frontdoor", "download through the front door", "MB/s", baseline=base.key)
    ways = {"direct": ("direct", "python", base), "front door": ("front door", "python", front)}
    report.note("frontdoor", f"GET /big of {ctx.settings.size_mib} MiB read by the load generator "
                             f"(recv_into 1 MiB + sha256); front door = server + tunnel + client programs")
    with ctx.rig(ProgramRig) as rig:
        rig.setup(ctx, go=True)
        if "go" in rig.deployments:
            go = report.figure("frontdoor", "download through the front door, Go", "MB/s", baseline=base.key)
            front.reference = go.key
            ways["Go front door"] = ("front door", "go", go)
        _go_note(ctx, "frontdoor", rig)
        _downloads(ctx, "frontdoor", rig, ways, size, 30)


def peerhop(ctx: Context) -> None:
    """Downloads and small requests entering at one server, the client on its peer, vs at its own."""
    report = ctx.report
    s = ctx.settings
    size = s.size_mib * MiB
    report.note("peerhop", "two peered servers; the client is connected to one; 'peer hop' = the request "
                           "enters at the other, which dials through its peer link; baseline: the same "
                           "request at the client's own server")
    with ctx.rig(ProgramRig) as rig:
        rig.setup(ctx, hop=True, go=True)
        _go_note(ctx, "peerhop", rig)
        ways = {}
        refs = {}
        for impl, deployment in rig.deployments.items():
            suffix = ", Go" if impl == "go" else ""
            single = report.figure("peerhop", f"download, single server{suffix}", "MB/s")
            hop = report.figure("peerhop", f"download, peer hop{suffix}", "MB/s", baseline=single.key)
            ways[f"{deployment.label} single server"] = ("front door", impl, single)
            ways[f"{deployment.label} peer hop"] = ("hop", impl, hop)
            refs[impl] = (single, hop)
        if "go" in refs:
            for ours, go in zip(refs["python"], refs["go"], strict=True):
                ours.reference = go.key
        _downloads(ctx, "peerhop", rig, ways, size, 50)
        if wrk_path() is None:
            report.skipped["peerhop requests"] = WRK_INSTALL_HINT
            return
        _wrk_runs(ctx, "peerhop", rig, [("single server", "front door"), ("peer hop", "hop")])


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
        rig.setup(ctx, relay=True, go=True)
        _go_note(ctx, "slowreader", rig)
        ways = ["relay", "front door"]
        if "go" in rig.deployments:
            ways.append("Go front door")
            for name in ("server", "client"):
                go = report.figure("slowreader", f"peak RSS growth, Go {name}", "MiB", baseline=base.key,
                                   higher_is_better=False, compare="difference")
                figs[name].reference = go.key
                figs[f"Go {name}"] = go
        payload_sha256(size, 40)
        for run in range(s.runs):
            for way in ways if run % 2 == 0 else ways[::-1]:
                impl = "go" if way.startswith("Go") else "python"
                via = "front door" if impl == "go" else way
                deployment = rig.deployments[impl]
                sides = {f"{'Go ' if impl == 'go' else ''}{name}": child
                         for name, child in (("server", deployment.server), ("client", deployment.client))}
                watched = [rig.relay] if via == "relay" else list(sides.values())
                with MemoryWatch(watched) as watch:
                    r = rig.get(ctx, via, size, 40, impl=impl, timeout=ctx.left(), **how)
                problems = body_problems(r, size, payload_sha256(size, 40))
                if impl == "go" and problems:  # Go's programs' failure, not ours: noted, not counted
                    report.note("slowreader", f"Go's front door, run {run + 1}: {'; '.join(problems)}; "
                                              "not counted")
                    intact = False
                else:
                    intact = _body_check(ctx, "slowreader", f"{way}, run {run + 1}", r, size, 40)
                if intact:
                    if via == "relay":
                        base.values.append(watch.growth(rig.relay.name) / MiB)
                    else:
                        for name, child in sides.items():
                            g = watch.growth(child.name)
                            figs[name].values.append(g / MiB)
                            if impl == "python":
                                report.check("slowreader",
                                             f"{name} RSS growth < {s.max_growth_mib:g} MiB, run {run + 1}",
                                             g < limit, f"{g / MiB:.1f} MiB")
                report.detail("slowreader",
                              dict(r, sha256=None, via=way, run=run + 1, memory=watch.describe()))
                if not watch.hwm_reset:
                    report.note("slowreader", "VmHWM could not be reset: peaks are 20 ms samples only")


_METRICS = (("req/s", "rps", "req/s", True), ("p50", "p50_ms", "ms", False), ("p99", "p99_ms", "ms", False),
            ("p99.9", "p999_ms", "ms", False))


def _wrk_runs(ctx: Context, scenario: str, rig, pair: list[tuple[str, str]]) -> None:
    """
    wrk at each connection count, C{pair} = [(baseline label, via), (label,
    via), ...] (every way against the first), through C{rig.url(via, size,
    impl)}; with Go's deployment in the rig, Go's figures too (referenced
    by ours).  Each run measures all of them, in alternating order.
    """
    report = ctx.report
    s = ctx.settings
    body = payload_bytes(100, 0)
    (base_label, base_via), *others = pair
    ways = [(base_label, base_via, "python")] + [(label, via, "python") for label, via in others]
    if "go" in getattr(rig, "deployments", {}):
        if base_via != "direct":
            ways.append((f"{base_label}, Go", base_via, "go"))
        ways += [(f"{label}, Go", via, "go") for label, via in others]
    figs = {}
    for c in s.connections:
        for metric, _, unit, higher in _METRICS:
            kw = dict(higher_is_better=higher, decimals=0 if higher else 2)
            base = report.figure(scenario, f"{metric} at {c} conn, {base_label}", unit, **kw)
            figs[c, metric, base_label] = base
            for way_label, way_via, impl in ways[1:]:
                baseline = base.key
                if impl == "go" and base_via != "direct":  # Go's against Go's own baseline
                    baseline = None if way_via == base_via else figs[c, metric, f"{base_label}, Go"].key
                figs[c, metric, way_label] = report.figure(
                    scenario, f"{metric} at {c} conn, {way_label}", unit, baseline=baseline, **kw)
            for way_label, _, impl in ways:
                if impl == "go" and way_label != base_label:
                    ours = figs[c, metric, way_label[:-len(", Go")]]
                    ours.reference = figs[c, metric, way_label].key
    report.note(scenario, f"wrk -t1, {s.duration:g} s per run, GET /big/100 (keep-alive; every "
                          f"status and body checked by wrk_check.lua; p99.9 from wrk's latency histogram)")
    for run in range(s.runs):
        for c in s.connections:
            for way_label, way_via, impl in (ways if (run + c) % 2 == 0 else ways[::-1]):
                if ctx.left() < s.duration + 5:
                    raise Abort("not enough time left for wrk")
                rig.check_alive()
                url = rig.url(way_via, 100, impl)
                busy = _busy_processes(rig, way_via, impl)
                cpu_before = {role: cpu_seconds(pid) for role, pid in busy.items()}
                try:
                    r = run_wrk(url, c, s.duration, body)
                except ValueError as e:
                    report.check(scenario, f"wrk {way_label} at {c} conn, run {run + 1}", False, str(e))
                    continue
                good = bool(r["bad"] == 0 and r["good"] and r["socket_errors"] == 0)
                counts = f"good={r['good']} bad={r['bad']} socket errors={r['socket_errors']}"
                if impl == "go" and not good:  # Go's programs' failure, not ours: noted, not counted
                    report.note(scenario, f"Go's {way_label} at {c} conn, run {run + 1}: {counts}; "
                                          "that run not counted")
                    report.detail(scenario, dict(r, way=way_label, run=run + 1))
                    continue
                ok = report.check(scenario, f"{way_label} at {c} conn, run {run + 1}: every response 200 "
                                            f"with the exact body, no socket errors", good, counts)
                if ok:
                    for metric, key, _, _ in _METRICS:
                        if r.get(key) is not None:
                            figs[c, metric, way_label].values.append(r[key])
                    # CPU per request: what each of our processes spent, whatever else ran beside.
                    for role, pid in busy.items():
                        before, after = cpu_before[role], cpu_seconds(pid)
                        if before is not None and after is not None and r.get("requests"):
                            fig = report.figure(scenario, f"{role} CPU per request at {c} conn, {way_label}",
                                                "us", higher_is_better=False, decimals=0)
                            fig.values.append((after - before) / r["requests"] * 1e6)
                report.detail(scenario, dict(r, way=way_label, run=run + 1))
    for key, fig in report.figures.items():  # our CPU per request next to Go's
        go_key = key + ", Go"
        if fig.scenario == scenario and " CPU per request " in fig.name and go_key in report.figures:
            fig.reference = go_key


def _busy_processes(rig, via: str, impl: str) -> dict[str, int]:
    """The processes of ours (or Go's) that a wrk run through C{via} keeps busy: role -> pid."""
    if via == "direct":
        return {}
    if via == "relay":
        return {"relay": rig.relay.pid}
    if via == "tunnel":  # the library rig: a port forward on the server role
        return {"server": rig.server.pid, "client": rig.client.pid}
    deployment = rig.deployments[impl]
    servers = {"server": deployment.server.pid}
    if via == "hop":
        servers = {"entry server": deployment.hop_server.pid, "home server": deployment.server.pid}
    return servers | {"client": deployment.client.pid}


def forward(ctx: Context) -> None:
    """Small requests through the tunnel itself (a port-forward over server.endpoint()), no front door."""
    if wrk_path() is None:
        ctx.report.skipped["forward"] = WRK_INSTALL_HINT
        return
    ctx.report.note("forward", "wrk's keep-alive connections forwarded by the server role, each through "
                               "its own stream (server.endpoint()) to the HTTP target: the tunnel's own "
                               "per-message cost, no HTTP parsing in between; baseline: the same through "
                               "twisted.protocols.portforward (one Python hop, as the tunnel client is)")
    with ctx.rig(LibraryRig) as rig:
        rig.setup("http")
        _wrk_runs(ctx, "forward", rig, [("plain relay", "relay"), ("tunnel", "tunnel"), ("direct", "direct")])


def requests(ctx: Context) -> None:
    report = ctx.report
    if wrk_path() is None:
        report.skipped["requests"] = WRK_INSTALL_HINT
        return
    with ctx.rig(ProgramRig) as rig:
        rig.setup(ctx, go=True)
        _go_note(ctx, "requests", rig)
        for impl in rig.deployments:
            for via in ("direct", "front door"):
                _body_check(ctx, "requests", f"one GET {via} ({impl})", rig.get(ctx, via, 100, 0, impl=impl),
                            100, 0)
        _wrk_runs(ctx, "requests", rig, [("direct", "direct"), ("front door", "front door")])


SCENARIOS = {
    "stream": stream,
    "streams100": streams100,
    "frontdoor": frontdoor,
    "requests": requests,
    "forward": forward,
    "peerhop": peerhop,
    "slowreader": slowreader,
}
