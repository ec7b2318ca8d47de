"""
The remotedialer benchmark suite.

    python -m benchmarks                 the full run (manual; a few minutes)
    python -m benchmarks --smoke         small sizes, one run each, seconds (CI)
    python -m benchmarks --only stream,frontdoor --runs 5 --json out.json
    REMOTEDIALER_GO_BIN=/path/to/go/bin python -m benchmarks    also Go's programs

Prints a table (median of the runs, their min-max, the ratio to a baseline
measured in the same run) and, with --json, writes every run's values, the
checks and details as JSON.  Exit status 1 when a check failed (a byte that
did not arrive intact, memory past its bound, a child that died) or a
scenario could not finish.  See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

from benchmarks import harness, scale, storm
from benchmarks.harness import ChildError, Report
from benchmarks.scenarios import SCENARIOS as PROGRAM_SCENARIOS
from benchmarks.scenarios import Abort, Context, Settings, go_bin

SCENARIOS = dict(PROGRAM_SCENARIOS, streams=scale.streams, sessions=scale.sessions, storm=storm.storm)

FULL = dict(runs=3, size_mib=256, streams=100, streams_size_mib=256, slow_mib=1024, slow_rate=32.0,
            pauses=3, pause=2.0, duration=5.0, connections="1,16,128", max_growth_mib=8.0,
            scale_streams=10000, scale_sessions=2000, storm_clients=2000, idle_seconds=6.0, deadline=1800.0)
SMOKE = dict(runs=1, size_mib=16, streams=100, streams_size_mib=16, slow_mib=32, slow_rate=100.0,
             pauses=1, pause=0.5, duration=1.0, connections="16", max_growth_mib=32.0,
             scale_streams=300, scale_sessions=30, storm_clients=50, idle_seconds=0.5, deadline=120.0)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0],
                                     epilog=f"Defaults: full {json.dumps(FULL)}; --smoke {json.dumps(SMOKE)}")
    parser.add_argument("--smoke", action="store_true",
                        help="small sizes, one run each (seconds; what CI runs)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="scenarios to run, of: " + ", ".join(SCENARIOS) + " (default: all)")
    parser.add_argument("--runs", type=int, help="runs per figure (default 3, smoke 1)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH ('-': stdout)")
    parser.add_argument("--reactor", metavar="NAME",
                        help="twistd's --reactor for the real programs, e.g. asyncio (default: epoll)")
    parser.add_argument("--profile", metavar="DIR",
                        help="attach py-spy (pip install py-spy) to every Python child; collapsed stacks "
                             "in DIR/<child>-<pid>.txt")
    sizes = parser.add_argument_group("sizes")
    sizes.add_argument("--size-mib", type=int, help="stream, frontdoor, peerhop: MiB per transfer")
    sizes.add_argument("--streams", type=int, help="streams100: concurrent streams")
    sizes.add_argument("--streams-size-mib", type=int, help="streams100: bytes over all streams")
    sizes.add_argument("--slow-mib", type=int, help="slowreader: body size")
    sizes.add_argument("--slow-rate", type=float, help="slowreader: MB/s while the reader reads")
    sizes.add_argument("--pauses", type=int, help="slowreader: times the reader stops")
    sizes.add_argument("--pause", type=float, help="slowreader: seconds per stop")
    sizes.add_argument("--max-growth-mib", type=float, help="slowreader: RSS growth that fails the check")
    sizes.add_argument("--duration", type=float, help="requests, forward, peerhop: seconds per wrk run")
    sizes.add_argument("--connections",
                       help="requests, forward, peerhop: wrk connection counts, comma-separated")
    sizes.add_argument("--scale-streams", type=int, help="streams: streams open at once on one session")
    sizes.add_argument("--scale-sessions", type=int, help="sessions: sessions connected to one server")
    sizes.add_argument("--storm-clients", type=int, help="storm: clients killed off and back at once")
    sizes.add_argument("--idle-seconds", type=float, help="streams, sessions: seconds of idle CPU measured")
    sizes.add_argument("--deadline", type=float, help="give up after this many seconds in all")
    args = parser.parse_args(argv)
    values = dict(SMOKE if args.smoke else FULL)
    for key in values:
        if getattr(args, key, None) is not None:
            values[key] = getattr(args, key)
    try:
        values["connections"] = [int(c) for c in str(values["connections"]).split(",") if c.strip()]
    except ValueError:
        parser.error("--connections takes comma-separated integers")
    if (values["runs"] < 1 or values["size_mib"] < 1 or values["streams"] < 1 or values["slow_mib"] < 1
            or values["slow_rate"] <= 0 or values["pauses"] < 0 or values["pause"] < 0
            or values["duration"] < 1 or not values["connections"] or min(values["connections"]) < 1
            or values["scale_streams"] < 1 or values["scale_sessions"] < 1 or values["storm_clients"] < 1
            or values["idle_seconds"] <= 0):
        parser.error("runs, sizes, rates, counts and durations must be positive (wrk runs at least 1 s)")
    names = list(SCENARIOS)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in SCENARIOS]
        if unknown or not names:
            parser.error(f"--only: unknown scenario(s) {', '.join(unknown) or '(none given)'}; "
                         f"known: {', '.join(SCENARIOS)}")
    if args.profile:
        from benchmarks.harness import py_spy

        if py_spy() is None:
            parser.error("--profile needs py-spy: pip install py-spy")
        os.makedirs(args.profile, exist_ok=True)
        harness.PROFILE_DIR = os.path.abspath(args.profile)
    harness.REACTOR = args.reactor
    settings = Settings(mode="smoke" if args.smoke else "full", **values)
    return args, settings, names


def machine() -> str:
    """The CPU model and memory, for the table's first line."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            names = (line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
            model = next(names, model)
        with open("/proc/meminfo") as f:
            mem_kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
        return f"{model}, {mem_kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, ValueError, StopIteration):
        return model


def main(argv=None) -> int:
    args, settings, names = parse_args(argv)
    import remotedialer

    started = time.monotonic()
    report = Report({
        "mode": settings.mode, "runs": settings.runs, "scenarios": names, "settings": vars(settings),
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "remotedialer": os.path.dirname(remotedialer.__file__),
        "nvx": {"load generator": remotedialer.nvx_active()},
        "go": go_bin(), "machine": machine(), "reactor": args.reactor or "default (epoll)",
    })
    logdir = tempfile.mkdtemp(prefix="rd-bench-")
    ctx = Context(settings, report, logdir)
    for name in names:
        t0 = time.monotonic()
        print(f"[{name}] ...", file=sys.stderr, flush=True)
        try:
            SCENARIOS[name](ctx)
        except (ChildError, Abort, OSError) as e:
            report.problems.append(f"{name}: {type(e).__name__}: {e}")
        for rig in ctx.rigs:
            report.problems.extend(f"{name}: {p}" for p in rig.problems)
        ctx.rigs.clear()
        report.wall_seconds[name] = time.monotonic() - t0
    report.wall_seconds["total"] = time.monotonic() - started
    if report.ok:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        report.config["logs"] = logdir
        report.problems.append(f"child logs kept in {logdir}")
    print(report.render())
    if args.json:
        text = json.dumps(report.to_json(), indent=2, default=repr)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text + "\n")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
