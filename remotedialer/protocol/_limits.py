"""
What one tunnel session may cost us, whatever the far side sends.

A server faces the internet and every agent can send it anything; a client
faces whatever its server sends.  Each number here bounds memory, file
descriptors or work that a single peer could otherwise grow without end
(docs/protocol.md, "Where we do better than Go"); going over one ends the offending
stream or session with a clear error, and the rest keep working.

Per-stream flow control (Pause/Resume thresholds and the per-stream hard
cap) is L{remotedialer.protocol._flow.FlowLimits}.
"""

from __future__ import annotations

from typing import TypeVar

import attrs

from remotedialer.protocol._codec import MAX_CONNECT_PAYLOAD

__all__ = ["SessionLimits", "UpgradeLimits"]

KIB = 1024
MIB = 1024 * KIB


_Number = TypeVar("_Number", bound=float)


def _positive(instance: object, attribute: attrs.Attribute[_Number], value: _Number) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be over 0, not {value!r}")


def _at_most_gos(instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value > MAX_CONNECT_PAYLOAD:
        raise ValueError(
            f"{attribute.name} must be at most {MAX_CONNECT_PAYLOAD} (what Go reads), not {value!r}")


@attrs.frozen
class SessionLimits:
    """
    Limits of one tunnel session (a client's tunnel, or a peer link).

    @ivar max_message_size: largest WebSocket message (and frame) accepted;
        a bigger one closes the WebSocket with 1009.  Data messages are at
        most 64 KiB from us and 32 KiB from Go's io.Copy.
    @ivar message_deadline: seconds a started WebSocket message (a frame
        header, or fragments) may take to complete before the WebSocket is
        dropped: a half-sent message pins its buffer.
    @ivar max_streams: streams open at once on the session, both
        directions; a Connect over it is refused with an Error for that
        stream, and opening one more locally raises.
    @ivar max_pending_dials: Connects from the far side still dialing their
        target; one over it is refused with an Error.
    @ivar session_buffer: memory the session may pin for slow readers.
        Its receive buffers (bytes received, not yet taken by readers, over
        all streams) hold at most 15/16 of it, the rest left for the message
        being assembled and the readers' own write buffers.  Past half of
        that every buffering stream is sent Pause; past all of it the
        streams holding the most are ended with an Error until it fits.
    @ivar max_connect_target: bytes of a Connect's target ("proto/host:port")
        accepted; a longer one is refused with an Error for that stream.
        Go reads at most 266 (the default, and the most allowed).
    @ivar send_high_water: bytes we may queue to a WebSocket whose TCP
        send buffer is full (the far side is not reading) before we stop
        reading from it too, so that a peer that sends without reading
        cannot make our replies pile up.
    """

    max_message_size: int = attrs.field(default=1 * MIB, validator=_positive)
    message_deadline: float = attrs.field(default=30.0, validator=_positive)
    max_streams: int = attrs.field(default=16384, validator=_positive)
    max_pending_dials: int = attrs.field(default=1024, validator=_positive)
    session_buffer: int = attrs.field(default=64 * MIB, validator=_positive)
    send_high_water: int = attrs.field(default=4 * MIB, validator=_positive)
    max_connect_target: int = attrs.field(default=MAX_CONNECT_PAYLOAD, validator=[_positive, _at_most_gos])


@attrs.frozen
class UpgradeLimits:
    """
    Limits of the HTTP requests a server accepts (tunnel upgrades and the
    front door) before they are authenticated.

    @ivar header_bytes: total size of a request's header lines.
    @ivar max_headers: header lines in one request.
    @ivar timeout: seconds a connection may take to deliver its request
        headers (a slowloris that sends a byte every few seconds is closed).
    @ivar max_pending: connections at once that have not yet delivered
        their headers; more are closed at once.
    """

    header_bytes: int = attrs.field(default=64 * KIB, validator=_positive)
    max_headers: int = attrs.field(default=100, validator=_positive)
    timeout: float = attrs.field(default=10.0, validator=_positive)
    max_pending: int = attrs.field(default=1024, validator=_positive)
