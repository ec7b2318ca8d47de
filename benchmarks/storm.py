"""
The storm: a fleet of N library TunnelClients (one process,
L{benchmarks.fleet}) connected to the real server program
(C{--clients-file}, one token per client), the server killed with SIGKILL
and started again at once on the same port: how long until every client
has its tunnel back, and what it cost.

    one address     every client dials from 127.0.0.1 (agents behind one
                    load balancer, Ingress or NAT: the documented
                    Kubernetes deployment)
    many addresses  client i dials from 127.0.x.y, its own address

Figures, per way (and for Go's example server with REMOTEDIALER_GO_BIN, in
the same rig with the same fleet: its clients send their token, which it
ignores): the time from the kill until 50 %, 90 % and all of the clients
are back, the 429 answers they got meanwhile, the restarted server's peak
RSS (VmHWM), and how long the new server took to listen.  The kernel's
listen-queue overflows over the storm (TcpExt ListenOverflows, the whole
machine's) are in the details.

    python -m benchmarks --only storm                  within the suite (N: --storm-clients)
    python -m benchmarks.storm --clients 2000          alone, printing the table below
    REMOTEDIALER_GO_BIN=/tmp/goref/bin python -m benchmarks.storm
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from benchmarks.harness import (
    Child,
    ChildError,
    Rig,
    free_port,
    module_argv,
    port_open,
    raise_fd_limit,
    twistd_argv,
    wait_for,
)
from benchmarks.scenarios import GO_BIN_ENV, Context, go_bin

#: How long the clients get to come back before the run counts as failed.
BACK_WITHIN = 60.0
WAYS = {"one address": False, "many addresses": True}


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped from full listen queues (TcpExt ListenOverflows)."""
    try:
        with open("/proc/net/netstat") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return None


def _kill9(rig: Rig, child: Child) -> None:
    """SIGKILL, as a crash; the rig forgets the child (its exit status is no problem of the run)."""
    child.proc.kill()
    child.proc.wait()
    child.stop()
    rig.children.remove(child)


class StormRig(Rig):
    """The server (ours or Go's) on a fixed port and the fleet."""

    def setup(self, impl: str, clients: int, spread: bool, server_args: tuple[str, ...] = ()) -> None:
        self.impl = impl
        self.server_args = server_args
        self.port = free_port()
        credentials = [(f"storm-{i}", os.urandom(16).hex()) for i in range(clients)]
        self.tokens = os.path.join(self.logdir, f"fleet-{impl}-{clients}.tokens")
        with open(self.tokens, "w") as f:
            f.writelines(f"{key} {token}\n" for key, token in credentials)
        self.clients_file = os.path.join(self.logdir, f"fleet-{impl}-{clients}.clients")
        import hashlib

        with open(self.clients_file, "w") as f:
            f.writelines(f"{key} sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"
                         for key, token in credentials)
        self.generation = 0
        self.server = self.start_server()
        self.fleet = self.start("fleet", module_argv(
            "benchmarks.fleet", "--url", f"ws://127.0.0.1:{self.port}/connect", "--tokens", self.tokens,
            *(["--spread"] if spread else [])))
        self.fleet.ready()

    def start_server(self) -> Child:
        self.generation += 1
        name = f"{self.impl}-server-{self.generation}"
        if self.impl == "go":
            argv = [os.path.join(go_bin() or "", "server"), "-listen", f"127.0.0.1:{self.port}"]
        else:
            argv = twistd_argv("remotedialer-server", "--listen", f"tcp:{self.port}:interface=127.0.0.1",
                               "--clients-file", self.clients_file, *self.server_args)
        child = self.start(name, argv, control=False)
        return child


def storm_once(ctx: Context | None, impl: str, clients: int, spread: bool, logdir: str,
               within: float = BACK_WITHIN, server_args: tuple[str, ...] = ()) -> dict:
    """One storm: connect the fleet, kill -9 the server, start it again; what the fleet saw."""
    left = (lambda: ctx.left()) if ctx is not None else (lambda: 3600.0)
    rig = StormRig(logdir)
    if ctx is not None:
        ctx.rigs.append(rig)
    with rig:
        rig.setup(impl, clients, spread, server_args)
        wait_for(f"{impl} server listening", lambda: port_open(rig.port), min(20, left()), rig)
        r = rig.fleet.request({"cmd": "connect", "count": clients, "batch": 100},
                              timeout=min(left(), 60 + clients / 3))
        if not r.get("ok"):
            raise ChildError(f"the fleet did not connect: {r}")
        time.sleep(1.0)
        rig.fleet.request({"cmd": "mark"}, timeout=10)
        overflows = listen_overflows()
        t0 = time.monotonic()
        _kill9(rig, rig.server)
        rig.server = rig.start_server()
        wait_for(f"{impl} server listening again", lambda: port_open(rig.port), min(20, left()), rig, 0.005)
        listening = time.monotonic() - t0
        back = rig.fleet.request({"cmd": "wait_back", "timeout": min(within, left())},
                                 timeout=min(within, left()) + 30)
        hwm = rig.server.status().get("VmHWM")
        after = listen_overflows()
        times = back.get("times") or []
        told = back.get("told") or {}
        return {
            "impl": impl, "clients": clients, "spread": spread, "ok": bool(back.get("ok")),
            "back": len(times), "listening": listening,
            "p50": _quantile(times, 0.5, clients), "p90": _quantile(times, 0.9, clients),
            "all": times[-1] if len(times) == clients else None,
            "429": told.get("429", 0), "told": told, "within": within,
            "server_hwm_mib": hwm / 1024 / 1024 if hwm else None,
            "listen_overflows": (after - overflows) if after is not None and overflows is not None else None,
        }


def _quantile(times: list[float], q: float, n: int) -> float | None:
    """Seconds until a fraction C{q} of the C{n} clients were back (None: they never were)."""
    k = max(1, round(q * n))
    return times[k - 1] if len(times) >= k else None


def _cell(value, unit: str = "s", decimals: int = 1) -> str:
    return "-" if value is None else f"{value:.{decimals}f} {unit}".strip()


def table(results: list[dict]) -> str:
    rows = [("server", "addresses", "clients", "all back", "50 %", "90 %", "429s", "server peak RSS",
             "listening after", "listen overflows")]
    for r in results:
        rows.append((
            "Go" if r["impl"] == "go" else "Python", "many" if r["spread"] else "one", str(r["clients"]),
            _cell(r["all"]) if r["ok"] else f"{r['back']}/{r['clients']} in {r['within']:g} s",
            _cell(r["p50"]), _cell(r["p90"]), str(r["429"]), _cell(r["server_hwm_mib"], "MiB", 0),
            _cell(r["listening"], "s", 2),
            "-" if r["listen_overflows"] is None else str(r["listen_overflows"]),
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def storm(ctx: Context) -> None:
    """The suite's scenario: both ways, ours and (with REMOTEDIALER_GO_BIN) Go's."""
    report = ctx.report
    n = ctx.settings.storm_clients
    raise_fd_limit()
    impls = ["python"] + (["go"] if go_bin() else [])
    report.note("storm", f"{n} library TunnelClients (one process) on the server program (--clients-file, "
                         "a token each), server SIGKILLed and started again on the same port; times from "
                         "the kill")
    if not go_bin():
        report.note("storm", f"no Go figures: set {GO_BIN_ENV} to a directory with Go's server and client")
    figures = {}
    for impl in reversed(impls):  # (Go's first: ours then names it as its reference)
        for way in WAYS:
            label = f"{'Go' if impl == 'go' else 'Python'}, {way}"
            ref = figures.get(("go", way))
            figs = {}
            for key, name, unit, decimals in (("all", "all back", "s", 2), ("p50", "50 % back", "s", 2),
                                               ("p90", "90 % back", "s", 2), ("429", "429 answers", "", 0),
                                               ("server_hwm_mib", "server peak RSS", "MiB", 0)):
                figs[key] = report.figure("storm", f"{label}: {name}", unit, higher_is_better=False,
                                          decimals=decimals, reference=ref[key].key if ref else None)
            figures[(impl, way)] = figs
    results = []
    for run in range(ctx.settings.runs):
        for impl in impls:
            for way, spread in WAYS.items():
                r = storm_once(ctx, impl, n, spread, ctx.logdir)
                results.append(r)
                report.detail("storm", dict(r, run=run + 1))
                label = f"{impl}, {way}, run {run + 1}"
                if report.check("storm", f"{label}: all {n} back within {BACK_WITHIN:g} s", r["ok"],
                                f"{r['back']}/{n} back; told {r['told']}"):
                    for key, fig in figures[(impl, way)].items():
                        if r[key] is not None:
                            fig.values.append(r[key])
    for line in table(results).splitlines():
        report.note("storm", line)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--ways", default="one,many", help="one, many or both (one,many)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--no-go", action="store_true",
                        help="skip Go's server even if REMOTEDIALER_GO_BIN is set")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="another argument of our server program (repeatable): --server-arg=--backlog=50")
    parser.add_argument("--within", type=float, default=BACK_WITHIN,
                        help=f"seconds the clients get to come back (default {BACK_WITHIN:g})")
    args = parser.parse_args(argv)
    raise_fd_limit()
    ways = [w.strip() for w in args.ways.split(",") if w.strip()]
    impls = ["python"] + (["go"] if go_bin() and not args.no_go else [])
    logdir = tempfile.mkdtemp(prefix="rd-storm-")
    results = []
    for _ in range(args.runs):
        for impl in impls:
            for way in ways:
                r = storm_once(None, impl, args.clients, way == "many", logdir, args.within,
                               tuple(args.server_arg))
                results.append(r)
                print(table([r]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(results))
    if args.runs > 1:
        for impl in impls:
            for way in ways:
                alls = [r["all"] for r in results if r["impl"] == impl and r["spread"] == (way == "many")
                        and r["all"] is not None]
                if alls:
                    print(f"{impl}, {way} address(es): all back, median of {len(alls)}: "
                          f"{statistics.median(alls):.2f} s")
    print(f"logs: {logdir}")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
