"""
An HTTP C{Retry-After} (RFC 9110 section 10.2.3) in seconds: what a
server's 429 (its authentication limiter) or 503 (its drain) tells a
client about when to come back.  Pure functions, no clock of their own.
"""

from __future__ import annotations

import email.utils

__all__ = ["RETRY_AFTER_MAX", "retry_after_seconds"]

#: The longest wait a server can ask for: a value past it (a typo, a
#: hostile server) is cut to it rather than believed.
RETRY_AFTER_MAX = 300.0


def retry_after_seconds(value: str | bytes | None, now: float) -> float | None:
    """
    C{value}, delay-seconds (C{"3"}) or an HTTP-date, as seconds from
    C{now} (seconds since the epoch, for dates): 0 for a date past, at
    most L{RETRY_AFTER_MAX}; None when there is no value or it is neither.
    """
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    value = value.strip()
    if value.isdigit():  # (ASCII digits only: isdigit() of str takes others too)
        if not value.isascii():
            return None
        return min(float(int(value[:12])), RETRY_AFTER_MAX)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # (an HTTP-date is always GMT; one without a zone is not one)
    return min(max(when.timestamp() - now, 0.0), RETRY_AFTER_MAX)
