"""
Every exception of the sans-IO core, and every other public one of the
library's that needs no Twisted base class: one home, as h2's
C{exceptions.py}.  Those built on Twisted's error types (a stream's
C{ConnectionLost}, a dial's C{ConnectError}) live in
L{remotedialer.tunnel._exceptions}.  The front door's upstream client keeps
its own (a target's answer that is not HTTP, a request h11 will not write,
a head over the limits) beside it: they never leave that subpackage.
"""

from __future__ import annotations

import enum
import math

__all__ = [
    "AuthorizationError",
    "DialRefused",
    "InvalidTransition",
    "MalformedMessage",
    "SessionClosed",
    "TooManyAttempts",
    "TooManyDials",
    "TooManyStreams",
]


class MalformedMessage(ValueError):
    """
    The one exception for any message that does not decode.  ``conn_id`` is
    the stream id when the header got that far (None otherwise), so the
    receiver can close that stream and nothing more; ``message_type`` the
    type when the header got that far (a bad Connect is not about the data
    of a live stream with its id).
    """

    conn_id: int | None = None
    message_type: int | None = None  # a MessageType


class InvalidTransition(Exception):
    """An input that the stream's state does not allow."""

    def __init__(self, state: enum.Enum, input: enum.Enum) -> None:
        super().__init__(f"{input.value} in state {state.value}")
        self.state = state
        self.input = input


class SessionClosed(Exception):
    """The session is over: no stream can be opened on it."""


class TooManyStreams(Exception):
    """The session already carries as many streams as its limits allow."""


class TooManyDials(Exception):
    """A Connect refused because the session has its limit of dials in progress."""


class DialRefused(PermissionError):
    """A dial no rule allows: C{connect to proto/address not allowed: why}."""

    def __init__(self, proto: str, address: str, why: str) -> None:
        super().__init__(f"connect to {proto}/{address} not allowed: {why}")


class AuthorizationError(Exception):
    """Raise from an authorizer to refuse with HTTP 400 and this text."""


class TooManyAttempts(Exception):
    """
    An attempt refused by the limiter before it was judged: answer HTTP 429
    with C{Retry-After: ceil(retry_after)}.

    @ivar retry_after: seconds after which an attempt from the same address
        is expected to be admitted again.
    """

    def __init__(self, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"too many authentication attempts; retry in {math.ceil(retry_after)} s")
