"""
Flow-control accounting for one stream's receive side: when to send Pause
and Resume, and when a far side that ignores Pause is cut off.

Pure bookkeeping, no I/O: the multiplexer asks it what to do and does it.
The receive side is in one of three named states (L{ReceiveFlow}):
FLOWING (every chunk goes straight to the reader), BUFFERING (the reader
is paused or has a backlog, under the pause threshold) and PAUSE_SENT (we
told the far side to stop; Resume follows once the backlog drains below
the resume threshold).
"""

from __future__ import annotations

import enum
from collections import deque

import attrs

__all__ = ["FlowLimits", "ReceiveBuffer", "ReceiveFlow", "Verdict"]

KIB = 1024
MIB = 1024 * KIB


@attrs.frozen
class FlowLimits:
    """
    The thresholds of docs/protocol.md section 4.  Go's are 2 MiB / 256 KiB; the
    hard cap is well above Pause because an obedient sender still has
    socket buffers' worth of data in flight when our Pause reaches it (up
    to ~6 MiB measured on loopback alone).
    """

    pause_threshold: int = 2 * MIB
    resume_threshold: int = 256 * KIB
    hard_cap: int = 16 * MIB

    def __attrs_post_init__(self) -> None:
        if not 0 <= self.resume_threshold < self.pause_threshold < self.hard_cap:
            raise ValueError(
                "flow limits must satisfy 0 <= resume threshold < pause threshold < hard cap"
            )


class ReceiveFlow(enum.Enum):
    FLOWING = "flowing"
    BUFFERING = "buffering"
    PAUSE_SENT = "pause sent"


class Verdict(enum.Enum):
    """What the multiplexer must do after a chunk arrives."""

    DELIVER = "deliver"  # hand it to the reader now
    DROP = "drop"  # nobody will read it
    HOLD = "hold"  # kept in the buffer
    SEND_PAUSE = "send pause"  # kept, and the far side must be told to stop
    OVER_CAP = "over cap"  # the far side ignored Pause: end the stream


class ReceiveBuffer:
    """Received bytes a paused reader has not taken yet, with their accounting."""

    __slots__ = ("_chunks", "size", "reading", "pause_sent", "discarding", "_limits")

    def __init__(self, limits: FlowLimits) -> None:
        # Made on first use: an empty deque is 760 bytes, and most streams
        # never hold anything (a session may carry 10,000 of them).
        self._chunks: deque[bytes] | None = None
        self._limits = limits
        #: Bytes held.
        self.size = 0
        #: The reader takes data (it has not paused us).
        self.reading = True
        self.pause_sent = False
        #: The reader is gone: what arrives is dropped, not held.
        self.discarding = False

    @property
    def flow(self) -> ReceiveFlow:
        if self.pause_sent:
            return ReceiveFlow.PAUSE_SENT
        if self.size or not self.reading:
            return ReceiveFlow.BUFFERING
        return ReceiveFlow.FLOWING

    def __bool__(self) -> bool:
        return self.size > 0

    def arrived(self, data: bytes) -> Verdict:
        """A chunk came from the far side."""
        if self.discarding:
            return Verdict.DROP
        chunks = self._chunks
        if not chunks:
            if self.reading:
                return Verdict.DELIVER
            if chunks is None:
                chunks = self._chunks = deque()
        chunks.append(data)
        self.size += len(data)
        if self.size > self._limits.hard_cap:
            return Verdict.OVER_CAP
        if self.size > self._limits.pause_threshold and not self.pause_sent:
            self.pause_sent = True
            return Verdict.SEND_PAUSE
        return Verdict.HOLD

    def take(self) -> bytes | None:
        """The next held chunk for a reading reader, or None."""
        chunks = self._chunks
        if not self.reading or not chunks:
            return None
        chunk = chunks.popleft()
        if not chunks:
            self._chunks = None  # drained: give the deque back
        self.size -= len(chunk)
        return chunk

    def should_resume(self) -> bool:
        """True once, when a Pause we sent may be lifted (backlog under the resume threshold)."""
        if self.pause_sent and self.size < self._limits.resume_threshold:
            self.pause_sent = False
            return True
        return False

    def clear(self) -> None:
        self._chunks = None
        self.size = 0
