"""
The last line of defence of the programs' logs: whatever an event holds,
and whoever logged it, the line written has no control character (they
are escaped), holds no object's repr, and is at most L{MAX_LINE_BYTES}
long (cut, with a marker saying how much was left out).

Our own events carry peer-supplied text escaped and cut already
(L{remotedialer.protocol._text.printable}).  Others do not: Autobahn logs a
failed WebSocket handshake with the caller's header values in it ("failing
WebSocket opening handshake ('... "\\x9b" ...')", a 5 KB key making a 5 KB
line), and twisted.web a HEAD answered with a body with the request's repr
("<Request at 0x7f... uri=/...15 KB...>"), which for a URI with a byte that
is not ASCII fails to format at all ("MESSAGE LOST").  So, for every event:

  - a request among its fields (L{IRequest}) is replaced by its method and
    URI, escaped and cut, before anything formats it;
  - the string fields of Autobahn's and twisted.web's events are escaped
    and cut as ours are (128 characters);
  - its text is formatted once, reprs (C{<x.Y object at 0x...>}) become
    C{<x.Y>}, control characters (line breaks included: an event is one
    line) are escaped, and it is cut;
  - a line written (L{text_line}, L{remotedialer.ops._jsonlog}) is cut to
    L{MAX_LINE_BYTES}: a traceback's lines each, a JSON line whole (its
    longest values shortened, a traceback from its start).

L{SafeLogObserver} applies it in front of any observer;
L{safe_text_observer} is twistd's classic text format with it, which both
programs use (L{remotedialer._tap._logging}).
"""

from __future__ import annotations

import re
from typing import IO

from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    formatEvent,
    formatEventAsClassicLogText,
)
from twisted.web.iweb import IRequest
from zope.interface import implementer

from remotedialer.protocol._text import printable

__all__ = ["MAX_LINE_BYTES", "SafeLogObserver", "cut_bytes", "escape", "safe_event", "safe_text_observer",
           "text_line"]

#: Longest line written to a log (UTF-8 bytes, the newline not counted).
MAX_LINE_BYTES = 2048

#: Namespaces whose events carry what a caller sent, unescaped.
_FOREIGN = ("autobahn.", "twisted.web.", "txaio.")

#: An object's default repr (and twisted's safe_repr of one whose repr failed).
_REPR = re.compile(r"<((?:[\w.]|<locals>)+)(?: object| instance)? at 0x[0-9a-fA-F]+(?:[^<>]{0,2048}>)?")

_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(char: str) -> str:
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape(text: str) -> str:
    """C{text} with every character that is not printable escaped (C0, C1, line breaks, bidi controls)."""
    if text.isprintable():
        return text
    return "".join(_escape_char(c) for c in text)


def cut_bytes(text: str, limit: int, keep_end: bool = False) -> str:
    """C{text} in at most C{limit} UTF-8 bytes, with a marker saying how many more there were."""
    encoded = text.encode("utf-8", "replace")
    if len(encoded) <= limit:
        return text
    marker = f"...(cut: {len(encoded) - limit} more bytes)"
    room = max(0, limit - len(marker) - 8)  # (the count in the marker may grow a few digits)
    if keep_end:
        kept = encoded[len(encoded) - room:].decode("utf-8", "ignore")
        return f"(cut: {len(encoded) - len(kept.encode())} bytes before)..." + kept
    kept = encoded[:room].decode("utf-8", "ignore")
    return kept + f"...(cut: {len(encoded) - len(kept.encode())} more bytes)"


def _request_text(request: IRequest) -> str:
    """A request as its method and URI, escaped and cut: never its repr (which may fail)."""
    method, uri = (getattr(request, name, b"?") for name in ("method", "uri"))
    method, uri = (value.decode("latin-1") if isinstance(value, bytes) else str(value)
                   for value in (method, uri))
    return f"<{type(request).__name__} {printable(method, 16)} {printable(uri)}>"  # (each byte shown)


def _safe_value(value: object, foreign: bool) -> object:
    if IRequest.providedBy(value):
        return _request_text(value)
    if foreign and isinstance(value, str | bytes):
        return printable(value)
    return value


def safe_event(event: LogEvent) -> LogEvent:
    """
    A copy of C{event} whose text (C{log_format} C{{log_text}}) is safe to
    write: see the module docstring.  Its other fields are kept (requests
    replaced), and so is its failure, whose traceback is the writer's to bound.
    """
    namespace = str(event.get("log_namespace", ""))
    foreign = namespace.startswith(_FOREIGN)
    safe = dict(event)
    for key, value in event.items():
        if not key.startswith("log_"):
            replaced = _safe_value(value, foreign)
            if replaced is not value:
                safe[key] = replaced
    text = formatEvent(safe)
    if text.startswith(("Unable to format event", "MESSAGE LOST")):
        text = f"(an event that could not be formatted: {printable(str(event.get('log_format')))})"
    safe["log_format"] = "{log_text}"
    safe["log_text"] = cut_bytes(escape(_REPR.sub(r"<\1>", text)), MAX_LINE_BYTES)
    return safe


def _bounded_line(line: str) -> str:
    return cut_bytes(escape(_REPR.sub(r"<\1>", line)), MAX_LINE_BYTES)


def text_line(event: LogEvent) -> str | None:
    """
    C{event} as twistd's classic text format writes it (C{time [system]
    text}, a traceback's lines after it, each begun with a tab), safe
    (L{safe_event}), each line escaped and cut to L{MAX_LINE_BYTES}.
    """
    text = formatEventAsClassicLogText(safe_event(event))
    if text is None:
        return None
    first, *rest = text.rstrip("\n").split("\n")
    lines = [_bounded_line(first)]
    for line in rest:  # a traceback's (the event's own text is one line)
        line = escape(_REPR.sub(r"<\1>", line.removeprefix("\t")))
        lines.append("\t" + cut_bytes(line, MAX_LINE_BYTES - 1))
    return "\n".join(lines) + "\n"


def safe_text_observer(out: IO[str]) -> FileLogObserver:
    """twistd's text log (C{textFileLogObserver}) to C{out}, with every line made safe (L{text_line})."""
    return FileLogObserver(out, text_line)


@implementer(ILogObserver)
class SafeLogObserver:
    """Passes each event on to C{observer} made safe (L{safe_event}), for observers that format it."""

    def __init__(self, observer: ILogObserver) -> None:
        self._observer = observer

    def __call__(self, event: LogEvent) -> None:
        self._observer(safe_event(event))
