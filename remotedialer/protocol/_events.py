"""
What the multiplexer tells its adapter, as plain frozen values (h2's
C{events.py}): L{Multiplexer.receive} returns a list of these.
"""

from __future__ import annotations

import attrs

from remotedialer.protocol._handle import StreamHandle

__all__ = [
    "ClientAnnounced",
    "ConnectRequested",
    "DataReceived",
    "Event",
    "ProtocolViolation",
    "SendBlocked",
    "StreamEnded",
]


@attrs.frozen(slots=True)
class ConnectRequested:
    """The far side opened C{stream} to C{proto}/C{address}: dial it (or abort)."""

    stream: StreamHandle
    proto: str
    address: str


@attrs.frozen(slots=True)
class DataReceived:
    """Bytes for a reading reader: deliver them now."""

    stream: StreamHandle
    data: bytes


@attrs.frozen(slots=True)
class StreamEnded:
    """
    C{stream} ended because of the far side or the session: C{error} is the
    reason, None for a clean close.
    """

    stream: StreamHandle
    error: str | None


@attrs.frozen(slots=True)
class SendBlocked:
    """The far side paused (True) or resumed (False) our writes on C{stream}."""

    stream: StreamHandle
    blocked: bool


@attrs.frozen(slots=True)
class ClientAnnounced:
    """A peer session announced (or withdrew) a client session behind it."""

    client_key: str
    session_key: int
    added: bool


@attrs.frozen(slots=True)
class ProtocolViolation:
    """
    The far side sent something wrong (for the log).  C{fatal}: the session
    cannot go on and must be dropped.
    """

    text: str
    conn_id: int | None = None
    fatal: bool = False


Event = ConnectRequested | DataReceived | StreamEnded | SendBlocked | ClientAnnounced | ProtocolViolation
