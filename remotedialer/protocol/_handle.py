"""
L{StreamHandle}: one stream as the multiplexer keeps it.  Events and the
adapter name streams by handle rather than by id: after the far side closes
a stream whose reader still has data buffered, its id is free on the wire,
yet the stream lives on until the reader is done.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from remotedialer.protocol import _codec
from remotedialer.protocol._flow import FlowLimits, ReceiveBuffer
from remotedialer.protocol._lifecycle import StreamState

__all__ = ["StreamHandle"]


class StreamHandle:
    """
    One stream as the multiplexer keeps it.  C{context} is the adapter's
    (its transport object); everything else is the multiplexer's to change.
    """

    __slots__ = ("conn_id", "data_header", "state", "inbound", "held", "remote_paused", "sync_epoch",
                 "context")

    def __init__(self, conn_id: int, limits: FlowLimits, sync_epoch: int, fences: bool = False) -> None:
        self.conn_id = conn_id
        #: What follows the message id in each of our Data messages on this stream.
        self.data_header = _codec.data_header(conn_id)
        self.state = StreamState.OPEN
        self.inbound = ReceiveBuffer(limits, fences)
        #: Writes held while the far side has paused us (None: none; made
        #: on first use, as an empty deque is 760 bytes).
        self.held: deque[bytes] | None = None
        self.remote_paused = False
        #: SyncConnections received before this stream existed (it is
        #: pruned only once it has missed a whole interval).
        self.sync_epoch = sync_epoch
        self.context: Any = None  # the adapter's own object: opaque here

    def __repr__(self) -> str:
        return f"<StreamHandle {self.conn_id} {self.state.value}>"

    @property
    def ended(self) -> bool:
        return self.state is StreamState.CLOSED
