"""
Peer-supplied text made safe for a log line: control characters escaped,
length cut.  A client key, a peer id, a Connect target or an Error text
comes from whoever is at the other end; logged raw, an ESC or BEL would
reach the operator's terminal, and a 15 KB id would flood the log.

And why a dial failed, in words (L{dial_failure_text}): name resolution,
refused, timed out, TLS -- never an exception's repr.
"""

from __future__ import annotations

import ipaddress

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from remotedialer.protocol._text import printable
from remotedialer.tunnel._exceptions import ProxyError

__all__ = ["Throttle", "address", "dial_failure_text", "failure_text", "tls_failure_text"]

def address(addr: object) -> str:
    """C{host:port} of a Twisted address (IPv4Address/IPv6Address...), never its repr."""
    host, port = getattr(addr, "host", None), getattr(addr, "port", None)
    if host is None:
        return printable(str(addr)) if addr is not None else "?"
    if isinstance(host, bytes):
        host = host.decode("ascii", "replace")
    if ":" in host:
        try:  # the short form (a PROXY v2 header's address comes written out in full)
            host = str(ipaddress.IPv6Address(host))
        except ValueError:
            pass
        host = f"[{host}]"
    return f"{host}:{port}" if port is not None else host


def failure_text(failure: Failure) -> str:
    """A failure's message, or its exception's class name when the message is empty."""
    message = failure.getErrorMessage()
    if message or failure.type is None:  # (a Failure always has a type)
        return message
    return failure.type.__name__


def tls_failure_text(failure: Failure) -> str | None:
    """
    A failed TLS handshake or certificate check in words
    (C{TLS: certificate verify failed}); None if C{failure} is not one.
    """
    value = failure.value
    if isinstance(value, VerificationError):
        names = []
        for mismatch in value.errors:
            found = getattr(mismatch.mismatched_id, "hostname", None) or getattr(
                mismatch.mismatched_id, "ip", None)
            if found is not None:
                names.append(printable(found.decode("ascii", "replace") if isinstance(found, bytes)
                                       else str(found)))
        return "TLS: the server's certificate is not valid for " + (", ".join(names) or "its name")
    if isinstance(value, SSL.Error):
        reasons = [printable(str(item[-1])) for item in (value.args[0] if value.args else ())
                   if isinstance(item, tuple) and item and item[-1]]
        return "TLS: " + ("; ".join(reasons) or "handshake failed")
    return None


def dial_failure_text(failure: Failure, host: str = "", port: int | None = None) -> str:
    """
    Why dialing C{host}:C{port} failed, for a log line: C{name resolution
    failed for HOST}, C{connection to HOST:PORT refused}, C{... timed
    out}, a TLS failure, a proxy's refusal (L{ProxyError}'s own words), or
    the failure's message.  Printable, one line, never a repr.
    """
    where = host if port is None else f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    where = printable(where)
    if failure.check(ProxyError):
        return printable(str(failure.value))
    if failure.check(error.DNSLookupError):
        return f"name resolution failed for {printable(host)}" if host else "name resolution failed"
    if failure.check(error.ConnectionRefusedError):
        return f"connection to {where} refused" if host else "connection refused"
    if failure.check(error.TimeoutError, error.TCPTimedOutError):
        return f"connection to {where} timed out" if host else "connection timed out"
    if failure.check(error.NoRouteError):
        return f"no route to {where}" if host else "no route to host"
    tls = tls_failure_text(failure)
    if tls is not None:
        return tls
    os_error = getattr(failure.value, "osError", None) if failure.check(error.ConnectError) else None
    if isinstance(os_error, Failure):  # (an endpoint that wrapped the failure it got)
        return dial_failure_text(os_error, host, port)
    if isinstance(os_error, BaseException):
        return dial_failure_text(Failure(os_error), host, port)
    if os_error:
        return f"cannot connect to {where}: {printable(str(os_error))}"
    text = failure_text(failure)
    if "Failure instance" in text or "Traceback" in text:
        # A message that quotes a Failure's repr: say what we know, not that.
        kind = failure.type.__name__ if failure.type is not None else "error"
        return f"cannot connect to {where} ({kind})" if host else f"cannot connect ({kind})"
    return printable(text)


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
