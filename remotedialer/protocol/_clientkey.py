"""
What a client key may be: the one rule, for the tunnel's authorizers and
for the proxies' callers who name a client (a front-door request for a key
no session can have finds no session, as in Go).

A key travels in AddClient as C{key/sessionKey}, of which Go reads 100
bytes, and a session key takes up to 19 digits; keys end up in logs,
metrics and URLs, so they are printable text.
"""

from __future__ import annotations

__all__ = ["MAX_CLIENT_KEY", "client_key_problem"]

#: Longest client key, in UTF-8 bytes.
MAX_CLIENT_KEY = 80


def client_key_problem(key: str) -> str | None:
    """Why C{key} cannot be a client key (one line), or None if it can."""
    if not key:
        return "client key is empty"
    if "/" in key or "::" in key:
        return "client key must not contain '/' or '::'"
    if not key.isprintable() or key != key.strip():
        return "client key must be printable text (no control characters)"
    if len(key.encode("utf-8")) > MAX_CLIENT_KEY:
        return f"client key longer than {MAX_CLIENT_KEY} bytes"
    return None
