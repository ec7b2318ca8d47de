"""
Peer-supplied text made safe for a log line or an error message: control
characters escaped, length cut.  A client key, a peer id, a Connect target
or an Error text comes from whoever is at the other end; logged raw, an ESC
or BEL would reach the operator's terminal, and a 15 KB id would flood the
log.  Pure functions, so the core can use them without an event loop.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["LOG_TEXT_LIMIT", "cut", "duration", "printable", "public_url"]

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
