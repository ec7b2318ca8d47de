"""
C{--log-format text|json} of both programs.

twistd sets up logging after the plugin has made its service, from its own
options: C{--logger NAME} names a log observer factory and takes precedence
over C{--logfile}/C{--syslog}.  So C{--log-format json} does just what
C{twistd --logger remotedialer.json_log_observer} does: it fills in that
option of twistd's (our options' C{parent}), which twistd then resolves.
JSON goes to standard output, so it needs C{-n} (a daemon has none) and no
C{--logfile}/C{--syslog}; the mistakes are one-line usage errors.
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

#: The name twistd's --logger resolves (remotedialer/ops/_jsonlog.py).
JSON_LOGGER = "remotedialer.json_log_observer"
LOG_FORMATS = ("text", "json")


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
            return  # text is twistd's own; no parent: not run by twistd (tests, makeService in code)
        if twistd.get("logger"):
            raise usage.UsageError("--log-format json and twistd's --logger exclude each other")
        if twistd.get("syslog") or twistd.get("logfile") not in (None, "", "-"):
            raise usage.UsageError("--log-format json writes to standard output: drop --logfile/--syslog")
        if "nodaemon" in twistd and not twistd["nodaemon"]:
            raise usage.UsageError("--log-format json writes to standard output: run twistd with -n")
        twistd["logger"] = JSON_LOGGER
