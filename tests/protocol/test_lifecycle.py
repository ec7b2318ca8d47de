"""
Property tests of the stream lifecycle (remotedialer.protocol._lifecycle) and of the
multiplexer that applies it (remotedialer.protocol._multiplexer): every (state, input) pair
of the table, random input paths, a stateful test of two multiplexers joined
back to back, and arbitrary bytes fed to receive().
"""

from __future__ import annotations

import itertools
import random
from collections import deque

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol import _codec
from remotedialer.protocol._codec import MessageType
from remotedialer.protocol._events import (
    ClientAnnounced,
    ConnectRequested,
    DataReceived,
    ProtocolViolation,
    SendBlocked,
    StreamEnded,
)
from remotedialer.protocol._exceptions import InvalidTransition, SessionClosed, TooManyStreams
from remotedialer.protocol._flow import KIB, FlowLimits
from remotedialer.protocol._handle import StreamHandle
from remotedialer.protocol._lifecycle import TRANSITIONS, StreamInput, StreamState, Wire, transition
from remotedialer.protocol._limits import SessionLimits
from remotedialer.protocol._multiplexer import Multiplexer

S, W = StreamState, Wire
ALL_PAIRS = list(itertools.product(StreamState, StreamInput))
EVENT_TYPES = (ConnectRequested, DataReceived, StreamEnded, SendBlocked, ClientAnnounced,
               ProtocolViolation)


class TableTests(SynchronousTestCase):
    """Every (state, input) pair, exhaustively."""

    def test_every_pair(self) -> None:
        """Each pair is in the table (and transition() returns it) or raises InvalidTransition."""
        for state, input in ALL_PAIRS:
            if (state, input) in TRANSITIONS:
                self.assertEqual(transition(state, input), TRANSITIONS[state, input])
            else:
                with self.assertRaises(InvalidTransition) as cm:
                    transition(state, input)
                self.assertEqual((cm.exception.state, cm.exception.input), (state, input))
                self.assertIn(input.value, str(cm.exception))

    def test_table_types(self) -> None:
        """Keys and values are the enums, nothing else."""
        for (state, input), (after, wire) in TRANSITIONS.items():
            self.assertIsInstance(state, StreamState)
            self.assertIsInstance(input, StreamInput)
            self.assertIsInstance(after, StreamState)
            self.assertIsInstance(wire, Wire)

    def test_closed_is_absorbing(self) -> None:
        """No transition leaves CLOSED, and none from CLOSED sends anything."""
        for (state, _), (after, wire) in TRANSITIONS.items():
            if state is S.CLOSED:
                self.assertEqual((after, wire), (S.CLOSED, W.NOTHING))

    def test_only_ending_sends(self) -> None:
        """EOF/ERROR go out only on a transition that ends the stream (into CLOSED)."""
        for (state, input), (after, wire) in TRANSITIONS.items():
            if wire is not W.NOTHING:
                self.assertIsNot(state, S.CLOSED, (state, input))
                self.assertIs(after, S.CLOSED, (state, input))

    def test_eof_sources(self) -> None:
        """A clean close (EOF) comes only from CLOSE when OPEN or FLUSHED when CLOSING."""
        eofs = {pair for pair, (_, wire) in TRANSITIONS.items() if wire is W.EOF}
        self.assertEqual(eofs, {(S.OPEN, StreamInput.CLOSE), (S.CLOSING, StreamInput.FLUSHED)})

    def test_draining_is_silent(self) -> None:
        """A DRAINING stream's id is free on the wire: nothing is ever sent from it."""
        for (state, _), (_, wire) in TRANSITIONS.items():
            if state is S.DRAINING:
                self.assertIs(wire, W.NOTHING)

    def test_session_lost_ends_everything(self) -> None:
        """From every state, SESSION_LOST leads to CLOSED and sends nothing."""
        for state in StreamState:
            self.assertEqual(transition(state, StreamInput.SESSION_LOST), (S.CLOSED, W.NOTHING))

    def test_all_states_reachable(self) -> None:
        """Every state is reachable from OPEN."""
        seen, todo = {S.OPEN}, [S.OPEN]
        while todo:
            state = todo.pop()
            for (source, _), (after, _) in TRANSITIONS.items():
                if source is state and after not in seen:
                    seen.add(after)
                    todo.append(after)
        self.assertEqual(seen, set(StreamState))

    @given(st.sampled_from(StreamState), st.sampled_from(StreamInput))
    def test_pair(self, state: StreamState, input: StreamInput) -> None:
        """The same invariants, one random pair at a time."""
        try:
            after, wire = transition(state, input)
        except InvalidTransition:
            self.assertNotIn((state, input), TRANSITIONS)
            return
        self.assertIn((state, input), TRANSITIONS)
        if state is S.CLOSED:
            self.assertIs(after, S.CLOSED)
        if wire is not W.NOTHING:
            self.assertIs(after, S.CLOSED)

    @given(st.lists(st.sampled_from(StreamInput), max_size=30))
    def test_paths(self, inputs: list[StreamInput]) -> None:
        """
        Along any path from OPEN (invalid inputs skipped, as the multiplexer
        refuses them), at most one EOF/ERROR goes out, and only as the
        stream ends; once CLOSED it stays CLOSED.
        """
        state, sent = S.OPEN, 0
        for input in inputs:
            try:
                after, wire = transition(state, input)
            except InvalidTransition:
                continue
            if wire is not W.NOTHING:
                sent += 1
                self.assertIs(after, S.CLOSED)
            if state is S.CLOSED:
                self.assertIs(after, S.CLOSED)
            state = after
        self.assertLessEqual(sent, 1)


# The stateful test: two multiplexers back to back.

SMALL = FlowLimits(pause_threshold=64 * KIB, resume_threshold=16 * KIB, hard_cap=256 * KIB)
#: Small enough that the session-wide receive budget (Pause all past half,
#: then end the largest) and the stream limit are reached too.
SMALL_SESSION = SessionLimits(max_streams=6, session_buffer=384 * KIB)
_SOURCE = random.Random(0).randbytes(1 << 20)
WRITE_SIZES = st.sampled_from([0, 1, 100, 16 * KIB, 64 * KIB, 64 * KIB + 1, 100 * KIB, 200 * KIB])
SIDES = st.sampled_from([0, 1])
PICK = st.integers(min_value=0, max_value=1 << 16)
#: Ending rules act on one draw in four, so streams live long enough to fill buffers.
RARELY = st.integers(min_value=0, max_value=3).map(lambda n: n == 0)


class _Side:
    """One multiplexer and what the test knows of it."""

    def __init__(self, mux: Multiplexer) -> None:
        self.mux = mux
        #: Every handle this side ever had, by stream id (ids are never reused in a pair).
        self.handles: dict[int, StreamHandle] = {}
        #: Bytes sent on each stream (written while OPEN), by id.
        self.written: dict[int, bytearray] = {}
        #: Bytes our reader got on each stream (DataReceived + read()), by id.
        self.got: dict[int, bytearray] = {}
        #: Streams whose reader was discarded (it may miss bytes).
        self.discarded: set[int] = set()
        #: Messages sent, not yet delivered to the other side.
        self.wire: deque[bytes] = deque()

    def known(self, handle: StreamHandle) -> None:
        previous = self.handles.setdefault(handle.conn_id, handle)
        assert previous is handle, f"two handles for stream {handle.conn_id}"
        self.written.setdefault(handle.conn_id, bytearray())
        self.got.setdefault(handle.conn_id, bytearray())


class MuxPair(RuleBasedStateMachine):
    """
    Random commands on either side and random deliveries between them.
    Messages travel in order per direction (one WebSocket), but the two
    directions interleave freely.
    """

    def __init__(self) -> None:
        super().__init__()
        server = Multiplexer(client_key="c", session_key=1, limits=SMALL,
                             session_limits=SMALL_SESSION)
        client = Multiplexer(client_key="c", session_key=1, limits=SMALL,
                             session_limits=SMALL_SESSION, dials_as_client=True)
        self.sides = (_Side(server), _Side(client))
        self.lost = False

    # Helpers.

    def _pick(self, side: int, pick: int) -> StreamHandle | None:
        """A live stream of that side if there is one (closed ones get their own rule)."""
        handles = [h for h in self.sides[side].handles.values() if not h.ended]
        if not handles:
            handles = list(self.sides[side].handles.values())
        return handles[pick % len(handles)] if handles else None

    def _pump(self) -> None:
        """Move queued output onto the wire, and check command-raised events."""
        for side in self.sides:
            side.wire.extend(side.mux.data_to_send())
            self._handle_events(side, side.mux.take_events())

    def _handle_events(self, side: _Side, events: list) -> None:
        for event in events:
            assert isinstance(event, EVENT_TYPES), event
            # Two correct multiplexers never see a protocol error from each
            # other, but a Connect over the stream limit is refused as one.
            if isinstance(event, ProtocolViolation):
                assert "too many streams" in event.text and not event.fatal, event
            if isinstance(event, ConnectRequested):
                side.known(event.stream)
            elif isinstance(event, DataReceived):
                side.got[event.stream.conn_id] += event.data

    def _deliver_one(self, source: int) -> None:
        sender, receiver = self.sides[source], self.sides[1 - source]
        message = sender.wire.popleft()
        decoded = _codec.decode(message)
        events = receiver.mux.receive(message)
        self._handle_events(receiver, events)
        for event in events:
            if (isinstance(event, StreamEnded) and event.error is None
                    and decoded.type is MessageType.ERROR):
                # A clean close from the far side, nothing buffered: we have it all.
                self._check_complete(1 - source, event.stream.conn_id)
        self._pump()

    def _check_complete(self, side: int, conn_id: int) -> None:
        if conn_id in self.sides[side].discarded:
            return
        got = self.sides[side].got[conn_id]
        written = self.sides[1 - side].written.get(conn_id, bytearray())
        assert got == written, (conn_id, len(got), len(written))

    def _read_all(self, side: int, handle: StreamHandle, limit: int) -> None:
        mux, got = self.sides[side].mux, self.sides[side].got[handle.conn_id]
        was_draining = handle.state is S.DRAINING
        for _ in range(limit):
            chunk = mux.read(handle)
            if chunk is None:
                break
            got += chunk
        if was_draining and handle.ended:
            self._check_complete(side, handle.conn_id)
        self._pump()

    # Rules.

    @initialize(server_streams=st.integers(1, 3), client_streams=st.integers(0, 2),
                paused=st.lists(st.booleans(), min_size=5, max_size=5))
    def start(self, server_streams: int, client_streams: int, paused: list[bool]) -> None:
        """Streams opened both ways and connected, some readers paused (buffering soon)."""
        for side, count in ((0, server_streams), (1, client_streams)):
            for _ in range(count):
                self.open(side)
        self.deliver_all()
        for flag, (side, handle) in zip(paused, self._all_handles(), strict=False):
            if flag:
                self.sides[side].mux.pause_reading(handle)

    def _all_handles(self) -> list[tuple[int, StreamHandle]]:
        return [(index, handle) for index, side in enumerate(self.sides)
                for handle in side.handles.values()]

    @rule(side=SIDES)
    def open(self, side: int) -> None:
        mux = self.sides[side].mux
        try:
            handle = mux.open_stream("tcp", "127.0.0.1:8125")
        except SessionClosed:
            assert mux.closed
            return
        except TooManyStreams:
            assert len(mux.all_streams) >= SMALL_SESSION.max_streams
            return
        assert not mux.closed
        self.sides[side].known(handle)
        self._pump()

    @rule(side=SIDES, pick=PICK, size=WRITE_SIZES)
    def write(self, side: int, pick: int, size: int) -> None:
        handle = self._pick(side, pick)
        if handle is None:
            return
        this = self.sides[side]
        written = this.written[handle.conn_id]
        if handle.state is S.OPEN and not this.mux.closed:
            start = (len(written) * 7 + handle.conn_id) % (len(_SOURCE) - size)
            data = _SOURCE[start : start + size]
            written += data
        else:
            data = b"ignored"
        this.mux.write(handle, data)
        self._pump()

    @rule(side=SIDES, pick=PICK, act=RARELY)
    def close(self, side: int, pick: int, act: bool) -> None:
        handle = self._pick(side, pick)
        if act and handle is not None:
            ended = self.sides[side].mux.close(handle)
            assert not ended or handle.ended
            self._pump()

    @rule(side=SIDES, pick=PICK, act=RARELY)
    def abort(self, side: int, pick: int, act: bool) -> None:
        handle = self._pick(side, pick)
        if act and handle is not None:
            was_closed = handle.ended
            ended = self.sides[side].mux.abort(handle, "aborted by test")
            assert ended is not was_closed
            assert handle.ended
            self._pump()

    @rule(side=SIDES, pick=PICK, sizes=st.lists(WRITE_SIZES, min_size=1, max_size=4))
    def write_burst(self, side: int, pick: int, sizes: list[int]) -> None:
        """Several writes in a row, before anything is delivered."""
        for size in sizes:
            self.write(side, pick, size)

    @rule(side=SIDES, pick=PICK, count=st.integers(min_value=1, max_value=8))
    def flood(self, side: int, pick: int, count: int) -> None:
        """The far reader pauses and we write past its Pause threshold: Pause comes back."""
        handle = self._pick(side, pick)
        if handle is None:
            return
        far = self.sides[1 - side]
        far_handle = far.handles.get(handle.conn_id)
        if far_handle is not None:
            far.mux.pause_reading(far_handle)
        for _ in range(count):
            self.write(side, pick, 40 * KIB)
        self.deliver_all()

    @rule(side=SIDES, pick=PICK)
    def close_under_backlog(self, side: int, pick: int) -> None:
        """We close cleanly a stream whose far reader has a backlog: it drains there."""
        far = self.sides[1 - side]
        backlogged = [h for h in far.mux.streams.values() if h.inbound
                      and self.sides[side].handles.get(h.conn_id) is not None]
        if backlogged:
            handle = self.sides[side].handles[backlogged[pick % len(backlogged)].conn_id]
            self.sides[side].mux.close(handle)
            self._pump()
            self.deliver_all()

    @rule(side=SIDES, pick=PICK)
    def pause_reading(self, side: int, pick: int) -> None:
        handle = self._pick(side, pick)
        if handle is not None:
            self.sides[side].mux.pause_reading(handle)

    @rule(side=SIDES, pick=PICK, limit=st.integers(min_value=1, max_value=20))
    def resume_and_read(self, side: int, pick: int, limit: int) -> None:
        handle = self._pick(side, pick)
        if handle is not None:
            self.sides[side].mux.resume_reading(handle)
            self._read_all(side, handle, limit)

    @rule(side=SIDES, pick=PICK)
    def read_once(self, side: int, pick: int) -> None:
        handle = self._pick(side, pick)
        if handle is not None:
            self._read_all(side, handle, 1)

    @rule(side=SIDES, pick=PICK, act=RARELY)
    def reader_gone(self, side: int, pick: int, act: bool) -> None:
        """What TunnelStream.stopProducing does: discard the backlog, then close."""
        handle = self._pick(side, pick)
        if act and handle is not None:
            self.sides[side].discarded.add(handle.conn_id)
            self.sides[side].mux.discard_inbound(handle)
            self.sides[side].mux.close(handle)
            self._pump()

    @rule(side=SIDES, pick=PICK)
    def poke_closed(self, side: int, pick: int) -> None:
        """Every command on an ended stream is ignored: nothing sent, nothing raised."""
        this = self.sides[side]
        closed = [h for h in this.handles.values() if h.ended]
        if not closed:
            return
        handle = closed[pick % len(closed)]
        mux = this.mux
        mux.write(handle, b"late")
        assert mux.close(handle) is False
        assert mux.abort(handle, "late") is False
        mux.pause_reading(handle)
        mux.resume_reading(handle)
        assert mux.read(handle) is None
        mux.discard_inbound(handle)
        assert mux.data_to_send() == []
        assert mux.take_events() == []
        assert handle.ended

    @rule(side=SIDES, act=RARELY)
    def sync(self, side: int, act: bool) -> None:
        if act:
            self.sides[side].mux.sync()
        self._pump()

    @precondition(lambda self: self.sides[0].wire or self.sides[1].wire)
    @rule(source=SIDES, count=st.integers(min_value=1, max_value=8))
    def deliver(self, source: int, count: int) -> None:
        for _ in range(count):
            if not self.sides[source].wire:
                break
            self._deliver_one(source)

    @precondition(lambda self: self.sides[0].wire or self.sides[1].wire)
    @rule()
    def deliver_all(self) -> None:
        for _ in range(200):
            if not (self.sides[0].wire or self.sides[1].wire):
                break
            for source in (0, 1):
                if self.sides[source].wire:
                    self._deliver_one(source)

    @rule(side=SIDES)
    def settle(self, side: int) -> None:
        """That side's readers all take their backlog, and everything in flight arrives."""
        this = self.sides[side]
        for _ in range(3):
            for handle in list(this.mux.all_streams):
                if handle.conn_id in this.discarded:
                    continue  # a gone reader never resumes (TunnelStream.resumeProducing)
                this.mux.resume_reading(handle)
                self._read_all(side, handle, 1000)
            self.deliver_all()

    @precondition(lambda self: not self.lost)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        # Rare: most runs should exercise live sessions.
        if not data.draw(st.integers(0, 9), label="lose roll") == 0:
            return
        self.lost = True
        for side in self.sides:
            alive = set(side.mux.all_streams)
            ended = side.mux.lose()
            assert set(ended) == alive
            assert all(handle.ended for handle in ended)
            assert side.mux.data_to_send() == []
            side.wire.clear()

    # Invariants, after every step.

    @invariant()
    def streams_consistent(self) -> None:
        for side in self.sides:
            mux = side.mux
            live = mux.all_streams
            assert len(set(live)) == len(live)
            for conn_id, handle in mux.streams.items():
                assert handle.conn_id == conn_id
                assert handle.state is not S.CLOSED, handle
                assert handle.state is not S.DRAINING, handle
            for handle in live:
                assert handle.state is not S.CLOSED, handle
                if handle.state is S.DRAINING:
                    assert mux.streams.get(handle.conn_id) is not handle
            for handle in side.handles.values():
                assert isinstance(handle.state, StreamState)
                # No stream is lost track of: alive means listed.
                assert (handle.state is S.CLOSED) == (handle not in live), handle
                if handle.state is S.CLOSED:
                    assert handle.inbound.size == 0 and not handle.held
                if handle.held:
                    assert handle.remote_paused and handle.state in (S.OPEN, S.CLOSING)
            if self.lost:
                assert mux.closed and not mux.streams and not mux.all_streams

    @invariant()
    def buffers_bounded(self) -> None:
        for side in self.sides:
            for handle in side.handles.values():
                assert 0 <= handle.inbound.size <= SMALL.hard_cap, handle.inbound.size
            mux = side.mux
            assert mux.buffered == sum(h.inbound.size for h in mux.all_streams), mux.buffered
            assert mux.buffered <= SMALL_SESSION.session_buffer, mux.buffered
            assert len(mux.all_streams) <= SMALL_SESSION.max_streams

    @invariant()
    def readers_get_a_prefix(self) -> None:
        """What a reader got is exactly the start of what the far side wrote: in order, no duplicates."""
        for index, side in enumerate(self.sides):
            other = self.sides[1 - index]
            for conn_id, got in side.got.items():
                written = other.written.get(conn_id, bytearray())
                assert len(got) <= len(written), (conn_id, len(got), len(written))
                assert written[: len(got)] == got, conn_id


class MuxPairTests(SynchronousTestCase):
    def test_pair(self) -> None:
        """Random commands and deliveries between two multiplexers keep every invariant."""
        run_state_machine_as_test(
            MuxPair, settings=settings(max_examples=200, stateful_step_count=40, deadline=None))


# Arbitrary input.

def _varint(n: int) -> bytes:
    return _codec.encode_varint(n)


_header_messages = st.builds(
    lambda id, conn_id, type, deadline, payload: b"".join(
        (_varint(id), _varint(conn_id), _varint(type),
         _varint(deadline) if type in (1, 2) else b"", payload)),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, 2, 3, -1, 2**48]),
    st.integers(min_value=-1, max_value=10),
    st.just(15000) | st.integers(-(2**63), 2**63 - 1),
    st.binary(max_size=64) | st.sampled_from([b"EOF", b"tcp/h:1", b"foo/42", b"\x02" + b"\0" * 7]),
)


def _mux_with_streams(is_peer: bool) -> Multiplexer:
    mux = Multiplexer(client_key="c", session_key=1, is_peer=is_peer,
                      limits=FlowLimits(pause_threshold=4, resume_threshold=1, hard_cap=8))
    mux.open_stream("tcp", "h:1")  # stream 2
    mux.pause_reading(mux.open_stream("tcp", "h:2"))  # stream 3, buffering
    return mux


class ArbitraryInputTests(SynchronousTestCase):
    @given(st.binary())
    def test_any_bytes(self, data: bytes) -> None:
        """Any bytes at all give events (maybe a ProtocolViolation), never an exception."""
        for events in (Multiplexer().receive(data), _mux_with_streams(True).receive(data)):
            for event in events:
                self.assertIsInstance(event, EVENT_TYPES)

    @given(st.lists(_header_messages | st.binary(max_size=16), max_size=20), st.booleans())
    def test_any_message_sequence(self, messages: list[bytes], is_peer: bool) -> None:
        """Sequences of well-framed (and not) messages of every type never raise."""
        mux = _mux_with_streams(is_peer)
        for message in messages:
            for event in mux.receive(message):
                self.assertIsInstance(event, EVENT_TYPES)
            mux.data_to_send()
            for handle in mux.streams.values():
                self.assertIsNot(handle.state, S.CLOSED)
                self.assertLessEqual(handle.inbound.size, mux.limits.hard_cap)
        mux.lose()
        self.assertEqual(mux.all_streams, [])
