"""
Flow-control accounting for one stream's receive side: when to send Pause
and Resume, and when a far side that ignores Pause is cut off.

Pure bookkeeping, no I/O: the multiplexer asks it what to do and does it.
The receive side is in one of three named states (L{ReceiveFlow}):
FLOWING (every chunk goes straight to the reader), BUFFERING (the reader
is paused or has a backlog, under the pause threshold) and PAUSE_SENT (we
told the far side to stop; Resume follows once the backlog drains below
the resume threshold).

The hard cap judges the far side only for what it sent after it I{knew}
of our Pause.  What was in flight when the Pause left (socket buffers both
ways: tens of MiB on a host with large TCP buffers) is not disobedience.
Where a round trip can be observed (a WebSocket ping behind the Pause,
whose pong comes back after the far side has read the Pause), the stream
is I{fenced} at the pong, and only bytes arriving after that count
against the cap; until then the session's budget bounds it.  Without
fences the cap counts everything held, as before.
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
    The thresholds of docs/protocol.md section 4.  Go's are 2 MiB / 256 KiB.
    The hard cap is well above Pause: with fences it counts what arrives
    after the far side read our Pause (hard cap - Pause threshold more),
    without them everything held, in-flight data included.
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

    __slots__ = ("_chunks", "size", "reading", "pause_sent", "discarding", "_limits",
                 "fenced", "after_fence", "pauses")

    def __init__(self, limits: FlowLimits, fences: bool = False) -> None:
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
        #: None: no fences, the cap counts all that is held.  Else whether
        #: the far side is known to have read our latest Pause.
        self.fenced: bool | None = False if fences else None
        #: Bytes arrived since the fence passed.
        self.after_fence = 0
        #: Pauses sent so far (a fence is for one Pause only).
        self.pauses = 0

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
        fenced = self.fenced
        if fenced is None:
            if self.size > self._limits.hard_cap:
                return Verdict.OVER_CAP
        elif fenced:
            self.after_fence += len(data)
            if self.after_fence > self._limits.hard_cap - self._limits.pause_threshold:
                return Verdict.OVER_CAP
        if self.size > self._limits.pause_threshold and not self.pause_sent:
            self.paused()
            return Verdict.SEND_PAUSE
        return Verdict.HOLD

    def paused(self) -> None:
        """A Pause goes out: a new fence is needed before the cap applies."""
        self.pause_sent = True
        self.pauses += 1
        if self.fenced is not None:
            self.fenced = False
            self.after_fence = 0

    def fence_passed(self, pauses: int) -> None:
        """The far side has read our Pause number C{pauses}: from now on it is judged."""
        if self.fenced is False and self.pause_sent and self.pauses == pauses:
            self.fenced = True

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
            if self.fenced is not None:
                self.fenced = False
                self.after_fence = 0
            return True
        return False

    def clear(self) -> None:
        self._chunks = None
        self.size = 0
