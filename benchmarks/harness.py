"""
The harness: everything the scenarios share.

Load generator side (no Twisted, no reactor):
  - L{Child}: one process, its stderr (and stdout, unless it is a control
    channel) in a log file.  Our own children (L{module_argv}) speak JSON
    lines on stdout: the first is the readiness line C{{"ready": true, ...}};
    closing their stdin, or SIGTERM, stops them cleanly.  The real programs
    (L{twistd_argv}) run from the working tree (it is first on PYTHONPATH)
    and are ready when L{wait_for} says so.
  - L{Rig}: the children of one scenario, stopped in reverse order however
    the scenario ends; a child that died early or ignored SIGTERM is a
    problem of the run.
  - L{free_port}, L{proc_status}, L{MemoryWatch} (peak VmRSS sampled in a
    thread, and VmHWM after resetting it through /proc/PID/clear_refs).
  - L{Figure} and L{Report}: every figure is the median of its runs with
    their range, and a ratio to a baseline figure measured in the same run;
    checks (sha256 of every transfer, ...) decide the exit status; the
    report renders as a table and as JSON.

Child side (Twisted imported lazily): L{serve_child} starts logging to
stderr, the JSON-lines channel on stdin/stdout, and the reactor.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

MiB = 1024 * 1024
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------------------
# Processes.


def child_env() -> dict:
    """The environment of every child: the working tree first on PYTHONPATH."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def module_argv(module: str, *args: str) -> list[str]:
    """One of our own child modules (C{benchmarks.targets}, C{benchmarks.roles})."""
    return [sys.executable, "-m", module, *args]


#: twistd's C{--reactor} for the real programs (C{--reactor NAME}; None: twistd's default, epoll).
REACTOR: str | None = None


def twistd_argv(plugin: str, *args: str) -> list[str]:
    """A real program, as its users run it (C{python -m twisted} is C{twist}, not twistd)."""
    reactor = [f"--reactor={REACTOR}"] if REACTOR else []
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", *reactor, plugin, *args]


def raise_fd_limit() -> int:
    """
    Raise this process's soft limit on open files to its hard limit (the
    scale scenarios hold tens of thousands of sockets); returns the limit
    now in force.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Where C{--profile DIR} puts each Python child's py-spy profile (None: off).
PROFILE_DIR: str | None = None


def py_spy() -> str | None:
    """The py-spy program (C{pip install py-spy}), next to our interpreter or on PATH."""
    import shutil

    here = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return here if os.access(here, os.X_OK) else shutil.which("py-spy")


class ChildError(RuntimeError):
    """A child did not start, did not answer, or died."""


class Child:
    """
    A process.  With C{control=True} its stdin and stdout are a JSON-lines
    channel (read by a thread); otherwise stdout goes to the log too.
    """

    def __init__(self, name: str, argv: list[str], logdir: str, control: bool = True) -> None:
        self.name = name
        self.log_path = os.path.join(logdir, f"{name}.log")
        self._log = open(self.log_path, "wb")
        self.control = control
        self.proc = subprocess.Popen(
            argv, cwd=logdir, env=child_env(), stderr=self._log,
            stdin=subprocess.PIPE if control else subprocess.DEVNULL,
            stdout=subprocess.PIPE if control else self._log,
        )
        self.pid = self.proc.pid
        self.spy = None
        if PROFILE_DIR and argv[0] == sys.executable and py_spy():
            # Attached from outside: the child runs as it always does, and
            # py-spy writes its collapsed stacks when the child exits.
            self.spy = subprocess.Popen(
                [py_spy(), "record", "--pid", str(self.pid), "--rate", "200", "--format", "raw",
                 "--nonblocking", "--output", os.path.join(PROFILE_DIR, f"{name}-{self.pid}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.terminated = False
        self.killed = False
        self.stopped = False
        self._lines: queue.Queue = queue.Queue()
        self._next_id = 0
        if control:
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                self._lines.put(json.loads(line))
            except ValueError:
                pass
        self._lines.put(None)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise ChildError(f"{self.name} exited with {self.proc.returncode}; log tail: {self.log_tail()!r}")

    def recv(self, timeout: float) -> dict:
        try:
            msg = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise ChildError(f"{self.name}: no answer within {timeout:.0f} s (log {self.log_path})") from None
        if msg is None:
            self.proc.wait(timeout=5)
            self.check_alive()
            raise ChildError(f"{self.name} closed its stdout")
        return msg

    def ready(self, timeout: float = 20.0) -> dict:
        """The readiness line."""
        msg = self.recv(timeout)
        if not msg.get("ready"):
            raise ChildError(f"{self.name}: not ready: {msg} (log tail: {self.log_tail()!r})")
        return msg

    def request(self, cmd: dict, timeout: float) -> dict:
        self._next_id += 1
        cmd = dict(cmd, id=self._next_id)
        try:
            self.proc.stdin.write(json.dumps(cmd).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError as e:
            raise ChildError(f"{self.name}: cannot send a command: {e}") from None
        while True:
            msg = self.recv(timeout)
            if msg.get("id") == self._next_id:
                return msg

    def status(self) -> dict:
        return proc_status(self.pid)

    def log_tail(self, n: int = 800) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self, grace: float = 5.0) -> None:
        """Close stdin (our children stop on EOF), then SIGTERM, then SIGKILL."""
        if self.stopped:
            return
        self.stopped = True
        if self.control and self.alive():
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        if self.alive():
            self.terminated = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.proc.kill()
                self.proc.wait()
        if self.spy is not None:
            try:
                self.spy.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.spy.kill()
                self.spy.wait()
        self._log.close()

    @property
    def clean_exit(self) -> bool:
        """Exit status 0, or death by the SIGTERM we sent (twistd re-raises
        the signal after its clean shutdown, so that is its normal end)."""
        code = self.proc.returncode
        return code == 0 or (self.terminated and not self.killed and code == -signal.SIGTERM)


class Rig:
    """
    The children of one scenario, as a context manager: stopped in reverse
    order on exit; L{problems} lists those that died before they were
    stopped, exited non-zero, or had to be killed.
    """

    def __init__(self, logdir: str) -> None:
        self.logdir = logdir
        self.children: list[Child] = []
        self.problems: list[str] = []

    def start(self, name: str, argv: list[str], control: bool = True) -> Child:
        child = Child(name, argv, self.logdir, control=control)
        self.children.append(child)
        return child

    def check_alive(self) -> None:
        for child in self.children:
            if not child.stopped:
                child.check_alive()

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, *exc) -> None:
        died = [c for c in self.children if not c.stopped and not c.alive()]
        for child in reversed(self.children):
            child.stop()
        for child in self.children:
            code, tail = child.proc.returncode, child.log_tail()
            if child in died:
                self.problems.append(f"{child.name} died early (exit {code}): {tail!r}")
            elif child.killed:
                self.problems.append(f"{child.name} ignored SIGTERM and was killed")
            elif not child.clean_exit:
                self.problems.append(f"{child.name} exited with {code}: {tail!r}")


def wait_for(what: str, attempt, timeout: float, rig: Rig, interval: float = 0.05):
    """Call C{attempt()} until it returns something true; fail after C{timeout}
    or when a child of C{rig} dies."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        rig.check_alive()
        try:
            result = attempt()
            if result:
                return result
        except OSError as e:
            last = e
        if time.monotonic() > deadline:
            raise ChildError(f"{what}: not within {timeout:.0f} s (last: {last})")
        time.sleep(interval)


def port_open(port: int) -> bool:
    socket.create_connection(("127.0.0.1", port), timeout=1).close()
    return True


# ---------------------------------------------------------------------------
# /proc.


def proc_status(pid: int) -> dict:
    """VmRSS and VmHWM in bytes (None when unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}
    except (OSError, KeyError, ValueError):
        return {"VmRSS": None, "VmHWM": None}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time the process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def reset_hwm(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, our own processes)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class MemoryWatch:
    """
    Peak RSS growth of some children over one measurement: RSS at the start,
    the peak of VmRSS sampled every C{interval} s, and VmHWM (reset at the
    start, so spikes between samples count too, where the kernel allows).
    """

    def __init__(self, children: list[Child], interval: float = 0.02) -> None:
        self.children = children
        self.interval = interval
        self.start: dict[str, int] = {}
        self.peak: dict[str, int] = {}
        self.hwm: dict[str, int | None] = {}
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemoryWatch:
        self.hwm_reset = all(reset_hwm(c.pid) for c in self.children)
        for c in self.children:
            self.start[c.name] = c.status()["VmRSS"] or 0
            self.peak[c.name] = self.start[c.name]
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        for c in self.children:
            rss = c.status()["VmRSS"]
            if rss:
                self.peak[c.name] = max(self.peak[c.name], rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        for c in self.children:
            self.hwm[c.name] = c.status()["VmHWM"] if self.hwm_reset else None

    def growth(self, name: str) -> int:
        return max(self.peak[name], self.hwm.get(name) or 0) - self.start[name]

    def describe(self) -> dict:
        return {c.name: {"start": self.start[c.name], "peak_sampled": self.peak[c.name],
                         "VmHWM": self.hwm.get(c.name), "growth": self.growth(c.name)}
                for c in self.children} | {"hwm_reset": self.hwm_reset}


# ---------------------------------------------------------------------------
# Figures, checks, the report.


@dataclass
class Figure:
    """One measured quantity: its value in each run, and its baseline's key."""

    scenario: str
    name: str
    unit: str
    values: list[float] = field(default_factory=list)
    baseline: str | None = None  # the key of the baseline figure, in the same report
    higher_is_better: bool = True
    decimals: int = 1
    #: How the table compares it with its baseline: "ratio" (median /
    #: baseline median), or "difference" (median - baseline median) where
    #: the baseline is near zero and a ratio would be noise (memory growth).
    compare: str = "ratio"
    #: The key of the same figure measured on Go's programs (the "vs Go" column).
    reference: str | None = None

    @property
    def key(self) -> str:
        return f"{self.scenario}/{self.name}"

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    @property
    def spread(self) -> tuple[float, float] | None:
        return (min(self.values), max(self.values)) if self.values else None


class Report:
    def __init__(self, config: dict) -> None:
        self.config = config
        self.figures: dict[str, Figure] = {}
        self.checks: list[dict] = []
        self.problems: list[str] = []
        self.skipped: dict[str, str] = {}
        self.notes: dict[str, list[str]] = {}
        self.details: dict[str, list] = {}
        self.wall_seconds: dict[str, float] = {}

    def figure(self, scenario: str, name: str, unit: str, **kw) -> Figure:
        fig = Figure(scenario, name, unit, **kw)
        return self.figures.setdefault(fig.key, fig)

    def check(self, scenario: str, what: str, ok: bool, detail: str = "") -> bool:
        self.checks.append({"scenario": scenario, "check": what, "ok": bool(ok), "detail": detail})
        return bool(ok)

    def note(self, scenario: str, text: str) -> None:
        self.notes.setdefault(scenario, []).append(text)

    def detail(self, scenario: str, item) -> None:
        self.details.setdefault(scenario, []).append(item)

    @property
    def failed_checks(self) -> list[dict]:
        return [c for c in self.checks if not c["ok"]]

    @property
    def ok(self) -> bool:
        return not self.failed_checks and not self.problems

    def ratio(self, fig: Figure) -> float | None:
        base = self.figures.get(fig.baseline) if fig.baseline else None
        if base is None or fig.median is None or not base.median:
            return None
        return fig.median / base.median

    def difference(self, fig: Figure) -> float | None:
        base = self.figures.get(fig.baseline) if fig.baseline else None
        if base is None or fig.median is None or base.median is None:
            return None
        return fig.median - base.median

    def versus_reference(self, fig: Figure) -> str:
        ref = self.figures.get(fig.reference) if fig.reference else None
        if ref is None or fig.median is None or not ref.median:
            return ""
        return f"{fig.median / ref.median:.2f}x"

    def versus(self, fig: Figure) -> str:
        """The table's comparison cell."""
        if not fig.baseline:
            is_baseline = any(f.baseline == fig.key for f in self.figures.values())
            return "baseline" if is_baseline else "-"
        if fig.compare == "difference":
            d = self.difference(fig)
            return "-" if d is None else f"{d:+.{fig.decimals}f} {fig.unit}"
        r = self.ratio(fig)
        return "-" if r is None else f"{r:.2f}x"

    # Rendering.

    def table(self) -> str:
        def num(x, d):
            return "-" if x is None else f"{x:.{d}f}"

        go = any(f.reference for f in self.figures.values())
        rows = [("scenario", "figure", "median", "spread (min-max)", "runs", "vs baseline", "baseline")
                + (("vs Go",) if go else ())]
        for fig in self.figures.values():
            lo_hi = fig.spread
            base = self.figures.get(fig.baseline) if fig.baseline else None
            rows.append((
                fig.scenario,
                fig.name,
                f"{num(fig.median, fig.decimals)} {fig.unit}",
                f"{num(lo_hi[0], fig.decimals)}-{num(lo_hi[1], fig.decimals)}" if lo_hi else "-",
                str(len(fig.values)),
                self.versus(fig),
                base.name if base is not None else "",
            ) + ((self.versus_reference(fig),) if go else ()))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        out = []
        for i, row in enumerate(rows):
            out.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)

    def render(self) -> str:
        c = self.config
        out = [f"remotedialer benchmarks ({c['mode']}), 127.0.0.1, Python {c['python']}, {c['cpus']} CPUs "
               f"({c.get('machine', '?')}), {c['runs']} run(s) per figure; MB/s = 10^6 B/s of payload",
               "vs baseline: median / the baseline's median (Nx), or median - baseline median (+N unit) for "
               "memory growth, whose baseline is near zero",
               ""]
        out.append(self.table() if self.figures else "(no figures)")
        out.append("")
        for scenario, texts in self.notes.items():
            for text in texts:
                out.append(f"{scenario}: {text}")
        for scenario, why in self.skipped.items():
            out.append(f"{scenario}: SKIPPED: {why}")
        failed = self.failed_checks
        out.append(f"checks: {len(self.checks) - len(failed)}/{len(self.checks)} passed"
                   + ("" if not failed else "; FAILED: " + "; ".join(
                       f"{f['scenario']}: {f['check']} ({f['detail'][:300]})" for f in failed)))
        for p in self.problems:
            out.append("PROBLEM: " + p[:1500])
        out.append("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.wall_seconds.items()))
        out.append("PASS" if self.ok else "FAIL")
        return "\n".join(out)

    def to_json(self) -> dict:
        figures = []
        for fig in self.figures.values():
            lo_hi = fig.spread
            figures.append({
                "key": fig.key, "scenario": fig.scenario, "name": fig.name, "unit": fig.unit,
                "values": fig.values, "median": fig.median,
                "min": lo_hi[0] if lo_hi else None, "max": lo_hi[1] if lo_hi else None,
                "baseline": fig.baseline, "ratio": self.ratio(fig), "difference": self.difference(fig),
                "compare": fig.compare, "reference": fig.reference,
                "vs_reference": (fig.median / self.figures[fig.reference].median
                                 if fig.reference in self.figures and fig.median is not None
                                 and self.figures[fig.reference].median else None),
                "higher_is_better": fig.higher_is_better,
            })
        return {"config": self.config, "ok": self.ok, "figures": figures, "checks": self.checks,
                "problems": self.problems, "skipped": self.skipped, "notes": self.notes,
                "details": self.details, "wall_seconds": self.wall_seconds}


# ---------------------------------------------------------------------------
# The child side.


def serve_child(on_ready, on_line=None) -> None:
    """
    Run a child: Twisted logging to stderr (our stdout is the channel), a
    JSON-lines channel on stdin/stdout whose C{send(obj)} writes one line,
    and the reactor.  C{on_ready(channel)} is called once the channel is up
    and must eventually send the readiness line; C{on_line(channel, obj)}
    gets each command.  stdin EOF (the load generator closed it, or died)
    stops the reactor, as does SIGTERM.
    """
    from twisted.internet import reactor, stdio
    from twisted.logger import (
        FilteringLogObserver,
        LogLevel,
        LogLevelFilterPredicate,
        globalLogBeginner,
        textFileLogObserver,
    )
    from twisted.protocols.basic import LineReceiver

    raise_fd_limit()
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(sys.stderr),
                              [LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)])],
        redirectStandardIO=False,
    )

    class Channel(LineReceiver):
        delimiter = b"\n"
        MAX_LENGTH = 16 * MiB

        def connectionMade(self):
            on_ready(self)

        def send(self, obj):
            self.transport.write(json.dumps(obj).encode() + b"\n")

        def lineReceived(self, line):
            if on_line is not None and line.strip():
                on_line(self, json.loads(line))

        def connectionLost(self, reason=None):
            if reactor.running:
                reactor.stop()

    stdio.StandardIO(Channel())
    reactor.run()
