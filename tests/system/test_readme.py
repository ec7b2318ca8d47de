"""
Every Python block of README.md and docs/*.md is a complete program: each
runs here as it stands, in a scratch directory, with this interpreter, and
exits 0 within a minute, with no traceback.
"""

from __future__ import annotations

import os
import re
import sys

from twisted.internet import defer, reactor
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.trial.unittest import TestCase

from tests.system.test_programs import SOURCE_ROOT, program_env

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks() -> list[tuple[str, int, str]]:
    """(file, line, source) of every ```python block."""
    found = []
    paths = [os.path.join(SOURCE_ROOT, "README.md")]
    docs = os.path.join(SOURCE_ROOT, "docs")
    for directory, _, names in os.walk(docs):
        paths += [os.path.join(directory, n) for n in sorted(names) if n.endswith(".md")]
    for path in paths:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for match in BLOCK.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((os.path.relpath(path, SOURCE_ROOT), line, match.group(1)))
    return found


class _Run(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: defer.Deferred = defer.Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data

    errReceived = outReceived

    def processEnded(self, reason) -> None:
        code = 0 if reason.check(ProcessDone) else (
            reason.value.exitCode if reason.check(ProcessTerminated) else -1)
        self.ended.callback(code)


class ReadmeBlocksTests(TestCase):
    timeout = 240

    def test_found(self) -> None:
        """The README has its Python blocks (a changed fence would make the test below read none)."""
        self.assertGreaterEqual(len([b for b in python_blocks() if b[0] == "README.md"]), 3)

    async def execute(self, source: str) -> tuple[int, bytes]:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        script = os.path.join(directory, "block.py")
        with open(script, "w") as f:
            f.write(source)
        run = _Run()
        process = reactor.spawnProcess(run, sys.executable, [sys.executable, script], env=program_env(),
                                       path=directory)
        timer = reactor.callLater(60, process.signalProcess, "KILL")
        code = await run.ended
        if timer.active():
            timer.cancel()
        return code, run.output

    def test_every_block_runs(self):
        async def go() -> None:
            for path, line, source in python_blocks():
                code, output = await self.execute(source)
                where = f"{path}:{line}"
                self.assertEqual(code, 0, f"{where}:\n{output.decode(errors='replace')}")
                self.assertNotIn(b"Traceback", output, where)

        return defer.Deferred.fromCoroutine(go())
