"""
Peer-supplied text made safe for a log line: control characters escaped,
length cut.  A client key, a peer id, a Connect target or an Error text
comes from whoever is at the other end; logged raw, an ESC or BEL would
reach the operator's terminal, and a 15 KB id would flood the log.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["LOG_TEXT_LIMIT", "Throttle", "address", "cut", "duration", "failure_text", "printable"]

#: Longest piece of peer-supplied text put in a log line or error message.
LOG_TEXT_LIMIT = 128

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def _escape(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str | bytes, limit: int = LOG_TEXT_LIMIT) -> str:
    """C{text} with every non-printable character escaped, cut to C{limit} characters."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    more = len(text) - limit
    if more > 0:
        text = text[:limit]
    escaped = "".join(_escape(c) for c in text) if not text.isprintable() or "\\" in text else text
    return f"{escaped}...({more} more characters)" if more > 0 else escaped


def cut(text: str, limit: int = LOG_TEXT_LIMIT) -> str:
    """C{text} in double quotes, cut to C{limit} characters but not escaped:
    for messages that are escaped once, where they are logged."""
    more = len(text) - limit
    return f'"{text[:limit]}...({more} more characters)"' if more > 0 else f'"{text}"'


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
    flood of bad input makes a bounded amount of log.
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
        self._summary: IDelayedCall | None = None

    def warn(self, format: str, session: object = "", **fields: object) -> None:
        """Log C{format} (with C{session} and C{fields}), unless over the burst."""
        self._source = str(session)
        now = self._clock.seconds()
        if now >= self._window_end:
            self._window_end = now + self._window
            self._logged = 0
        if self._logged < self._burst:
            self._logged += 1
            self._log.warn(format, session=session, **fields)
            return
        self.suppressed += 1
        if self._summary is None:
            self._summary = self._clock.callLater(self._window_end - now, self.flush)

    def flush(self) -> None:
        """Log the summary of what was left out (also called at the end of the source)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        if self.suppressed:
            count, self.suppressed = self.suppressed, 0
            self._log.warn("{source}: {count} more {what} in the last {window:g} s, not logged one by one",
                           source=self._source, count=count, what=self._what, window=self._window)


def duration(seconds: float) -> str:
    """How long something lived, for a log line: C{0.4 s}, C{12 s}, C{5 min 3 s}, C{2 h 4 min}."""
    if seconds < 10:
        return f"{max(seconds, 0.0):.1f} s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def public_url(url: str) -> str:
    """C{url} without user information (a password) or query (it may carry a token): for logs and status."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(unparsable URL)"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))
