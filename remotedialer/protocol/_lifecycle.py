"""
The lifecycle of one tunnel stream as an explicit state machine: one table
of C{(state, input) -> (next state, what to tell the far side)}, in the
manner of h2's stream state machine.

There is no half-close on the wire (docs/protocol.md section 4): a stream is
OPEN until one side sends Error (C{EOF} for a clean close).  Two states
exist only on our side:

  - CLOSING: our protocol asked for a clean close while the far side had
    paused us; the writes it made before are held, and EOF follows them
    once the far side resumes (FLUSHED).
  - DRAINING: the far side closed cleanly while our reader was paused with
    data still buffered; the wire id is free again, and the stream ends
    once the reader has taken the rest (DRAINED), or with the session.

A pair missing from the table is a protocol error for that stream (see
L{transition}); the multiplexer handles it in one place.
"""

from __future__ import annotations

import enum

from remotedialer.protocol._exceptions import InvalidTransition

__all__ = ["StreamInput", "StreamState", "TRANSITIONS", "Wire", "transition"]


class StreamState(enum.Enum):
    OPEN = "open"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


class StreamInput(enum.Enum):
    # From our protocol.
    WRITE = "write"
    CLOSE = "close"  # clean close, nothing held
    CLOSE_HELD = "close with writes held"  # clean close while the far side paused us
    ABORT = "abort"  # close at once with an error
    # From the far side.
    RECEIVE = "receive data"
    REMOTE_EOF = "remote EOF"  # nothing buffered for our reader
    REMOTE_EOF_BUFFERED = "remote EOF with data buffered"
    REMOTE_ERROR = "remote error"
    REMOTE_PAUSE = "remote pause"
    REMOTE_RESUME = "remote resume"
    PRUNE = "pruned by SyncConnections"
    OVER_CAP = "receive buffer over the hard cap"
    # Progress.
    FLUSHED = "held writes sent"
    DRAINED = "buffered data taken"
    SESSION_LOST = "session lost"


class Wire(enum.Enum):
    """What the transition sends the far side."""

    NOTHING = "nothing"
    EOF = "Error EOF"
    ERROR = "Error with the reason"


S, I, W = StreamState, StreamInput, Wire

TRANSITIONS: dict[tuple[StreamState, StreamInput], tuple[StreamState, Wire]] = {
    # OPEN: data both ways; any close ends it.
    (S.OPEN, I.WRITE): (S.OPEN, W.NOTHING),
    (S.OPEN, I.RECEIVE): (S.OPEN, W.NOTHING),
    (S.OPEN, I.REMOTE_PAUSE): (S.OPEN, W.NOTHING),
    (S.OPEN, I.REMOTE_RESUME): (S.OPEN, W.NOTHING),
    (S.OPEN, I.CLOSE): (S.CLOSED, W.EOF),
    (S.OPEN, I.CLOSE_HELD): (S.CLOSING, W.NOTHING),
    (S.OPEN, I.ABORT): (S.CLOSED, W.ERROR),
    (S.OPEN, I.OVER_CAP): (S.CLOSED, W.ERROR),
    (S.OPEN, I.REMOTE_EOF): (S.CLOSED, W.NOTHING),
    (S.OPEN, I.REMOTE_EOF_BUFFERED): (S.DRAINING, W.NOTHING),
    (S.OPEN, I.REMOTE_ERROR): (S.CLOSED, W.NOTHING),
    (S.OPEN, I.PRUNE): (S.CLOSED, W.NOTHING),
    (S.OPEN, I.SESSION_LOST): (S.CLOSED, W.NOTHING),
    # CLOSING: new writes are refused; reading goes on; EOF after the held writes.
    (S.CLOSING, I.WRITE): (S.CLOSING, W.NOTHING),
    (S.CLOSING, I.RECEIVE): (S.CLOSING, W.NOTHING),
    (S.CLOSING, I.REMOTE_PAUSE): (S.CLOSING, W.NOTHING),
    (S.CLOSING, I.REMOTE_RESUME): (S.CLOSING, W.NOTHING),
    (S.CLOSING, I.CLOSE): (S.CLOSING, W.NOTHING),
    (S.CLOSING, I.CLOSE_HELD): (S.CLOSING, W.NOTHING),
    (S.CLOSING, I.FLUSHED): (S.CLOSED, W.EOF),
    (S.CLOSING, I.ABORT): (S.CLOSED, W.ERROR),
    (S.CLOSING, I.OVER_CAP): (S.CLOSED, W.ERROR),
    (S.CLOSING, I.REMOTE_EOF): (S.CLOSED, W.NOTHING),
    (S.CLOSING, I.REMOTE_EOF_BUFFERED): (S.DRAINING, W.NOTHING),
    (S.CLOSING, I.REMOTE_ERROR): (S.CLOSED, W.NOTHING),
    (S.CLOSING, I.PRUNE): (S.CLOSED, W.NOTHING),
    (S.CLOSING, I.SESSION_LOST): (S.CLOSED, W.NOTHING),
    # DRAINING: the far side is gone from the wire; only our reader and the session remain.
    (S.DRAINING, I.WRITE): (S.DRAINING, W.NOTHING),
    (S.DRAINING, I.CLOSE): (S.CLOSED, W.NOTHING),
    (S.DRAINING, I.CLOSE_HELD): (S.CLOSED, W.NOTHING),
    (S.DRAINING, I.ABORT): (S.CLOSED, W.NOTHING),
    (S.DRAINING, I.DRAINED): (S.CLOSED, W.NOTHING),
    (S.DRAINING, I.SESSION_LOST): (S.CLOSED, W.NOTHING),
    # CLOSED: what our protocol may still call is ignored, as on a closed TCP transport.
    (S.CLOSED, I.WRITE): (S.CLOSED, W.NOTHING),
    (S.CLOSED, I.CLOSE): (S.CLOSED, W.NOTHING),
    (S.CLOSED, I.CLOSE_HELD): (S.CLOSED, W.NOTHING),
    (S.CLOSED, I.ABORT): (S.CLOSED, W.NOTHING),
    (S.CLOSED, I.SESSION_LOST): (S.CLOSED, W.NOTHING),
}

del S, I, W


def transition(state: StreamState, input: StreamInput) -> tuple[StreamState, Wire]:
    """The next state and what to send; L{InvalidTransition} if not allowed."""
    try:
        return TRANSITIONS[state, input]
    except KeyError:
        raise InvalidTransition(state, input) from None
