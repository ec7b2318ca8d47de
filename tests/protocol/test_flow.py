"""
Tests for remotedialer.protocol._flow: receive-side flow accounting (PROTOCOL.md section 4).
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from remotedialer.protocol._flow import KIB, MIB, FlowLimits, ReceiveBuffer, ReceiveFlow, Verdict

PAUSE = 100
RESUME = 20
CAP = 400
LIMITS = FlowLimits(pause_threshold=PAUSE, resume_threshold=RESUME, hard_cap=CAP)


def paused_buffer(limits: FlowLimits = LIMITS) -> ReceiveBuffer:
    """A buffer whose reader has paused, so every chunk is held."""
    buffer = ReceiveBuffer(limits)
    buffer.reading = False
    return buffer


class FlowLimitsTests(SynchronousTestCase):
    def test_defaults(self) -> None:
        """The defaults are Go's 2 MiB / 256 KiB, with a 16 MiB hard cap."""
        limits = FlowLimits()
        self.assertEqual(
            (limits.pause_threshold, limits.resume_threshold, limits.hard_cap),
            (2 * MIB, 256 * KIB, 16 * MIB),
        )

    def test_valid_edges(self) -> None:
        """resume 0 is allowed, and each limit may be one above the one below."""
        FlowLimits(pause_threshold=1, resume_threshold=0, hard_cap=2)

    def test_invalid(self) -> None:
        """Limits out of order (or a negative resume threshold) are refused."""
        for pause, resume, cap in [
            (100, 100, 400),  # resume == pause
            (100, 200, 400),  # resume > pause
            (100, 20, 100),  # cap == pause
            (100, 20, 50),  # cap < pause
            (100, -1, 400),  # negative resume
        ]:
            with self.assertRaises(ValueError):
                FlowLimits(pause_threshold=pause, resume_threshold=resume, hard_cap=cap)

    def test_frozen(self) -> None:
        """Limits are shared by every stream of a session: they cannot change."""
        with self.assertRaises(AttributeError):
            LIMITS.hard_cap = 1  # type: ignore[misc]


class VerdictTests(SynchronousTestCase):
    def test_deliver_when_flowing(self) -> None:
        """A reading reader with no backlog gets each chunk at once; nothing is held."""
        buffer = ReceiveBuffer(LIMITS)
        self.assertIs(buffer.flow, ReceiveFlow.FLOWING)
        self.assertIs(buffer.arrived(b"x" * (CAP + 1)), Verdict.DELIVER)
        self.assertEqual(buffer.size, 0)
        self.assertFalse(buffer)

    def test_pause_threshold(self) -> None:
        """Pause is due only once the backlog passes the threshold (limit+1), not at it."""
        for total, verdict in [(PAUSE - 1, Verdict.HOLD), (PAUSE, Verdict.HOLD),
                               (PAUSE + 1, Verdict.SEND_PAUSE)]:
            buffer = paused_buffer()
            self.assertIs(buffer.arrived(b"x" * total), verdict, total)
            self.assertEqual(buffer.size, total)

    def test_pause_once(self) -> None:
        """SEND_PAUSE comes once; more chunks under the cap are just held."""
        buffer = paused_buffer()
        self.assertIs(buffer.arrived(b"x" * (PAUSE + 1)), Verdict.SEND_PAUSE)
        self.assertIs(buffer.flow, ReceiveFlow.PAUSE_SENT)
        self.assertIs(buffer.arrived(b"x"), Verdict.HOLD)

    def test_hard_cap(self) -> None:
        """OVER_CAP only past the cap (limit+1); at the cap the chunk is held."""
        for total, verdict in [(CAP - 1, Verdict.HOLD), (CAP, Verdict.HOLD),
                               (CAP + 1, Verdict.OVER_CAP)]:
            buffer = paused_buffer()
            buffer.arrived(b"x" * (PAUSE + 1))
            self.assertIs(buffer.arrived(b"x" * (total - PAUSE - 1)), verdict, total)

    def test_over_cap_in_one_chunk(self) -> None:
        """A single chunk past the cap is OVER_CAP (the cap is checked before Pause)."""
        self.assertIs(paused_buffer().arrived(b"x" * (CAP + 1)), Verdict.OVER_CAP)

    def test_backlog_holds_even_when_reading(self) -> None:
        """A reader that resumed but has a backlog gets new chunks after it, in order."""
        buffer = paused_buffer()
        buffer.arrived(b"a")
        buffer.reading = True
        self.assertIs(buffer.arrived(b"b"), Verdict.HOLD)
        self.assertEqual([buffer.take(), buffer.take(), buffer.take()], [b"a", b"b", None])


class TakeTests(SynchronousTestCase):
    def test_take_paused(self) -> None:
        """A paused reader is given nothing; the backlog stays."""
        buffer = paused_buffer()
        buffer.arrived(b"abc")
        self.assertIsNone(buffer.take())
        self.assertEqual(buffer.size, 3)
        self.assertIs(buffer.flow, ReceiveFlow.BUFFERING)

    def test_take_accounts(self) -> None:
        """take() returns chunks in arrival order and lowers size; empty is FLOWING again."""
        buffer = paused_buffer()
        buffer.arrived(b"ab")
        buffer.arrived(b"cde")
        buffer.reading = True
        self.assertEqual(buffer.take(), b"ab")
        self.assertEqual(buffer.size, 3)
        self.assertEqual(buffer.take(), b"cde")
        self.assertEqual(buffer.size, 0)
        self.assertIs(buffer.flow, ReceiveFlow.FLOWING)

    def test_storage_only_while_holding(self) -> None:
        """
        A buffer that holds nothing keeps no container (an empty deque is
        760 bytes; a session may carry 10,000 streams): one is made for the
        first held chunk and given back once the reader has taken them all.
        """
        buffer = ReceiveBuffer(LIMITS)
        self.assertIs(buffer.arrived(b"a"), Verdict.DELIVER)
        self.assertIsNone(buffer._chunks)
        buffer.reading = False
        buffer.arrived(b"bc")
        self.assertIsNotNone(buffer._chunks)
        buffer.reading = True
        self.assertEqual(buffer.take(), b"bc")
        self.assertIsNone(buffer._chunks)
        self.assertIs(buffer.arrived(b"d"), Verdict.DELIVER)

    def test_clear(self) -> None:
        """clear() drops the backlog."""
        buffer = paused_buffer()
        buffer.arrived(b"abc")
        buffer.clear()
        self.assertEqual(buffer.size, 0)
        buffer.reading = True
        self.assertIsNone(buffer.take())


class ResumeTests(SynchronousTestCase):
    def _paused_far_side(self) -> ReceiveBuffer:
        buffer = paused_buffer()
        buffer.arrived(b"x" * (PAUSE - RESUME))
        buffer.arrived(b"x" * RESUME)
        buffer.arrived(b"x")  # PAUSE + 1: SEND_PAUSE
        self.assertTrue(buffer.pause_sent)
        buffer.reading = True
        return buffer

    def test_no_resume_without_pause(self) -> None:
        """Nothing to lift if no Pause was sent."""
        self.assertFalse(ReceiveBuffer(LIMITS).should_resume())

    def test_resume_below_threshold_only(self) -> None:
        """Resume is due strictly below the resume threshold (at it, not yet)."""
        buffer = self._paused_far_side()
        buffer.take()  # size RESUME + 1
        self.assertFalse(buffer.should_resume())
        buffer.take()  # size 1
        self.assertEqual(buffer.size, 1)
        self.assertTrue(buffer.should_resume())

    def test_at_resume_threshold(self) -> None:
        """A backlog of exactly the resume threshold does not lift the Pause."""
        buffer = paused_buffer()
        buffer.arrived(b"x" * (PAUSE + 1 - RESUME))
        buffer.arrived(b"x" * RESUME)
        buffer.reading = True
        buffer.take()
        self.assertEqual(buffer.size, RESUME)
        self.assertFalse(buffer.should_resume())
        self.assertTrue(buffer.pause_sent)

    def test_resume_exactly_once(self) -> None:
        """should_resume is true once per Pause; a later Pause makes it due again."""
        buffer = self._paused_far_side()
        while buffer.take() is not None:
            pass
        self.assertEqual([buffer.should_resume(), buffer.should_resume()], [True, False])
        self.assertIs(buffer.flow, ReceiveFlow.FLOWING)
        buffer.reading = False
        self.assertIs(buffer.arrived(b"x" * (PAUSE + 1)), Verdict.SEND_PAUSE)
        buffer.clear()
        self.assertTrue(buffer.should_resume())


class FenceTests(SynchronousTestCase):
    """
    With fences, the hard cap judges only what arrives after the far side
    read our Pause: what was in flight when it left is not disobedience.
    """

    def paused(self) -> ReceiveBuffer:
        buffer = ReceiveBuffer(LIMITS, fences=True)
        buffer.reading = False
        self.assertEqual(buffer.arrived(b"x" * (PAUSE + 1)), Verdict.SEND_PAUSE)
        return buffer

    def test_in_flight_before_the_fence_is_held(self) -> None:
        """Ten times the cap arriving before the fence passes is held, not cut."""
        buffer = self.paused()
        for _ in range(10):
            self.assertEqual(buffer.arrived(b"x" * CAP), Verdict.HOLD)
        self.assertEqual(buffer.size, PAUSE + 1 + 10 * CAP)

    def test_after_the_fence_the_cap_counts(self) -> None:
        """After the fence, cap - pause threshold more bytes are held; one more ends the stream."""
        buffer = self.paused()
        buffer.arrived(b"x" * CAP)  # in flight
        buffer.fence_passed(buffer.pauses)
        self.assertEqual(buffer.arrived(b"x" * (CAP - PAUSE - 1)), Verdict.HOLD)
        self.assertEqual(buffer.arrived(b"x"), Verdict.HOLD)
        self.assertEqual(buffer.arrived(b"x"), Verdict.OVER_CAP)

    def test_fence_of_an_older_pause_does_not_count(self) -> None:
        """A fence started for a Pause that was since lifted and sent again does not judge the new one."""
        buffer = self.paused()
        old = buffer.pauses
        buffer.reading = True
        while buffer.take() is not None:
            pass
        self.assertTrue(buffer.should_resume())
        buffer.reading = False
        self.assertEqual(buffer.arrived(b"x" * (PAUSE + 1)), Verdict.SEND_PAUSE)
        buffer.fence_passed(old)
        self.assertEqual(buffer.arrived(b"x" * (5 * CAP)), Verdict.HOLD)
        buffer.fence_passed(buffer.pauses)
        self.assertEqual(buffer.arrived(b"x" * (CAP - PAUSE + 1)), Verdict.OVER_CAP)

    def test_without_fences_everything_held_counts(self) -> None:
        """Without fences (nobody observes round trips) the cap counts all that is held."""
        buffer = paused_buffer()
        buffer.arrived(b"x" * (PAUSE + 1))
        self.assertEqual(buffer.arrived(b"x" * (CAP - PAUSE - 1)), Verdict.HOLD)
        self.assertEqual(buffer.arrived(b"x"), Verdict.OVER_CAP)
