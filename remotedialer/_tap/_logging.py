"""
C{--log-format text|json} of both programs, and the safety filter of
their logs in either format (L{remotedialer.ops._logfilter}: no line over
2 KiB, no control character, no repr).

twistd sets up logging after the plugin has made its service, from its own
options: C{--logger NAME} names a log observer factory and takes precedence
over C{--logfile}/C{--syslog}.  So the programs fill in that option of
twistd's (our options' C{parent}), which twistd then resolves:

  - C{--log-format json} does just what C{twistd --logger
    remotedialer.json_log_observer} does.  JSON goes to standard output,
    so it needs C{-n} (a daemon has none) and no C{--logfile}/C{--syslog};
    the mistakes are one-line usage errors.
  - C{text} (the default) names L{text_log_observer}: twistd's own text
    log, to where twistd's own options say (C{--logfile}, rotated at 1 MB
    and on SIGUSR1, standard output with C{-n}, or C{--syslog}), each line
    made safe.  A C{--logger} given to twistd is left as it is.

twistd resolves a factory by name and calls it with no argument, so
where twistd would have written is kept here when the options are parsed
(L{_TextLog}): one program runs in a twistd process.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.logger import ILogObserver, LegacyLogObserverWrapper
from twisted.python import logfile, usage

from remotedialer.ops._logfilter import SafeLogObserver, safe_text_observer

#: The name twistd's --logger resolves (remotedialer/ops/_jsonlog.py).
JSON_LOGGER = "remotedialer.json_log_observer"
#: The text log's factory, by the name twistd's --logger resolves.
TEXT_LOGGER = "remotedialer._tap._logging.text_log_observer"
LOG_FORMATS = ("text", "json")


class _TextLog:
    """Where twistd would write its text log, from its options (set as they are parsed)."""

    logfile: str | None = None
    syslog = False
    prefix = "twisted"
    nodaemon = False

    @classmethod
    def take(cls, twistd: Any) -> None:
        cls.logfile = twistd.get("logfile")
        cls.syslog = bool(twistd.get("syslog"))
        cls.prefix = twistd.get("prefix") or "twisted"
        cls.nodaemon = bool(twistd.get("nodaemon"))


def text_log_observer() -> ILogObserver:
    """
    twistd's text log observer, with every line made safe: a twistd
    C{--logger} factory, to where twistd's own options say (see the module
    docstring; as twistd's UnixAppLogger decides it).
    """
    if _TextLog.syslog:
        from twisted.python import syslog  # (Unix only: as twistd imports it)

        legacy: Any = syslog.SyslogObserver(_TextLog.prefix).emit  # (a legacy observer: twisted.python.log's)
        return SafeLogObserver(LegacyLogObserverWrapper(legacy))
    name = _TextLog.logfile
    if name == "-" or (not name and _TextLog.nodaemon):
        return safe_text_observer(sys.stdout)
    out = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):  # (as twistd: rotate on SIGUSR1 unless taken)

        def rotate(signum: int, frame: object) -> None:
            from twisted.internet import reactor

            reactor.callFromThread(out.rotate)  # type: ignore[attr-defined]  # the reactor is one

        signal.signal(signal.SIGUSR1, rotate)
    return safe_text_observer(out)


class LogFormatOption:
    """C{--log-format}, mixed into a program's L{usage.Options}."""

    parent: Any

    def opt_log_format(self, value: str) -> None:
        """Log format: text (default) or json (one JSON object per line, on standard output)."""
        if value not in LOG_FORMATS:
            raise usage.UsageError(f"--log-format must be text or json, not {value!r}")
        self["log-format"] = value  # type: ignore[index]  # mixed into usage.Options, a dict
        twistd = self.parent
        if value != "json" or twistd is None:
            return  # text: see parseOptions; no parent: not run by twistd (tests, makeService in code)
        if twistd.get("logger"):
            raise usage.UsageError("--log-format json and twistd's --logger exclude each other")
        if twistd.get("syslog") or twistd.get("logfile") not in (None, "", "-"):
            raise usage.UsageError("--log-format json writes to standard output: drop --logfile/--syslog")
        if "nodaemon" in twistd and not twistd["nodaemon"]:
            raise usage.UsageError("--log-format json writes to standard output: run twistd with -n")
        twistd["logger"] = JSON_LOGGER

    def parseOptions(self, options: list[str] | None = None) -> None:
        super().parseOptions(options)  # type: ignore[misc]  # usage.Options's, later in the MRO
        twistd = self.parent
        if twistd is None or twistd.get("logger"):
            return  # not run by twistd, or JSON, or a --logger of twistd's own
        if twistd.get("logfile") == "-" and "nodaemon" in twistd and not twistd["nodaemon"]:
            raise usage.UsageError("a daemon cannot log to standard output: run twistd with -n")
        _TextLog.take(twistd)
        twistd["logger"] = TEXT_LOGGER
