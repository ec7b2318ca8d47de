"""
Peer-supplied text made safe for a log line: control characters escaped,
length cut.  A client key, a peer id, a Connect target or an Error text
comes from whoever is at the other end; logged raw, an ESC or BEL would
reach the operator's terminal, and a 15 KB id would flood the log.
"""

from __future__ import annotations

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from remotedialer.protocol._text import printable

__all__ = ["Throttle", "address", "failure_text"]


def address(addr: object) -> str:
    """C{host:port} of a Twisted address (IPv4Address/IPv6Address...), never its repr."""
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    if host is None:
        return printable(str(addr)) if addr is not None else "?"
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port is not None else host


def failure_text(failure: Failure) -> str:
    """A failure's message, or its exception's class name when the message is empty."""
    message = failure.getErrorMessage()
    if message or failure.type is None:  # (a Failure always has a type)
        return message
    return failure.type.__name__


class Throttle:
    """
    At most C{burst} log lines per C{window} seconds for one source (a
    session), and then one summary line saying how many were left out: a
    flood of bad input makes a bounded amount of log.  L{warn} and L{info}
    share the burst; the summary has the level of the last line left out.
    """

    def __init__(
        self, clock: IReactorTime, log: Logger, what: str, *, burst: int = 5, window: float = 10.0
    ) -> None:
        self._clock = clock
        self._log = log
        self._what = what
        self._burst = burst
        self._window = window
        #: What the last line was about, as text (no reference to the source).
        self._source = ""
        self._window_end = 0.0
        self._logged = 0
        self.suppressed = 0
        self._summary_level = LogLevel.warn
        self._summary: IDelayedCall | None = None

    def warn(self, format: str, session: object = "", **fields: object) -> None:
        """Log C{format} (with C{session} and C{fields}) as a warning, unless over the burst."""
        self._emit(LogLevel.warn, format, session, fields)

    def info(self, format: str, session: object = "", **fields: object) -> None:
        """Log C{format} (with C{session} and C{fields}) as information, unless over the burst."""
        self._emit(LogLevel.info, format, session, fields)

    def _emit(self, level: LogLevel, format: str, session: object, fields: dict[str, object]) -> None:
        self._source = str(session)
        now = self._clock.seconds()
        if now >= self._window_end:
            self._window_end = now + self._window
            self._logged = 0
        if self._logged < self._burst:
            self._logged += 1
            self._log.emit(level, format, session=session, **fields)
            return
        self.suppressed += 1
        self._summary_level = level
        if self._summary is None:
            self._summary = self._clock.callLater(self._window_end - now, self.flush)

    def flush(self) -> None:
        """Log the summary of what was left out (also called at the end of the source)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            self._log.emit(self._summary_level,
                           "{source}: {count} more {what} in the last {window:g} s, not logged one by one",
                           source=self._source, count=count, what=self._what, window=self._window)
