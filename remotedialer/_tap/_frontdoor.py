"""
The server program's front-door tuning flags: kept-alive connections to
targets and the access log (remotedialer.frontdoor._pool, remotedialer.server._site).
"""

from __future__ import annotations

from typing import Any

from twisted.python import usage

from remotedialer.frontdoor._pool import IDLE_TIMEOUT, MAX_IDLE

PARAMETERS: list[list[Any]] = [
    ["frontdoor-idle-connections", None, MAX_IDLE,
     "Kept-alive front-door connections per client and target (0: a new tunnel stream per request).", int],
    ["frontdoor-idle-timeout", None, IDLE_TIMEOUT,
     "Seconds a kept-alive front-door connection may idle (Go: 90).", float],
]
FLAGS: list[list[Any]] = [
    ["access-log", None, "Log a line for every HTTP request (off: it costs a fifth of a small request)."],
]


def check(options: usage.Options) -> None:
    """One-line usage errors for the flags above."""
    if options["frontdoor-idle-connections"] < 0:
        raise usage.UsageError("--frontdoor-idle-connections: must be 0 or more")
    if not options["frontdoor-idle-timeout"] > 0:
        raise usage.UsageError("--frontdoor-idle-timeout: must be over 0 seconds")


def front_door_options(options: usage.Options) -> dict[str, Any]:
    """FrontDoor(...) keyword arguments from the flags."""
    return {"idle_connections": options["frontdoor-idle-connections"],
            "idle_timeout": options["frontdoor-idle-timeout"]}


def tune_gc() -> None:
    """
    Fewer, cheaper cyclic collections: the objects of start-up are frozen
    out of them, and the youngest generation is collected every 10,000
    allocations instead of 700.  Under many concurrent requests the
    collector otherwise scans every live request's objects over and over.
    """
    import gc

    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(10_000, middle, oldest)
