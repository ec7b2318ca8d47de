"""
The long fuzz run of the real programs, by hand:

    python -m benchmarks.fuzz --seconds 600 [--seed N]

runs the CI fuzz test (tests/system/test_fuzz.py: every listener of one
server program and a client program, fixed malformed inputs and seeded
random mutations, valid requests through every path every second) for as
long as asked, then prints its report: each listener with the inputs
tried and the answers they got, and every check (processes alive, valid
traffic answered, no traceback, no control character or line over 2 KiB in
any log, file descriptors and memory back near their start).  Exit status
1 when a check failed.  CI runs the same test for 20 s.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="how long to fuzz (default 600)")
    parser.add_argument("--seed", type=int, help="the random seed (default: a new one, printed)")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    work = tempfile.mkdtemp(prefix="remotedialer-fuzz-")
    env = dict(os.environ, REMOTEDIALER_FUZZ_SECONDS=f"{args.seconds:g}")
    if args.seed is not None:
        env["REMOTEDIALER_FUZZ_SEED"] = str(args.seed)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, "-m", "twisted.trial", "--temp-directory",
                           os.path.join(work, "trial"), "tests.system.test_fuzz"], cwd=root, env=env)
    for report in glob.glob(os.path.join(work, "**", "fuzz-report.txt"), recursive=True):
        with open(report, encoding="utf-8") as f:
            print(f.read())
        print(f"(report: {report})")
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
