"""The server's session registry: routing rule and observers."""

from __future__ import annotations

from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from remotedialer.server._registry import SessionRegistry
from remotedialer.tunnel._session import Session


def session(key: str, peer: bool = False, clock: Clock | None = None) -> Session:
    return Session(lambda data: None, client_key=key, is_peer=peer, clock=clock or Clock())


class RoutingTests(SynchronousTestCase):
    def test_newest_live_local_session(self):
        """The newest session wins; one already closed is passed over."""
        registry = SessionRegistry()
        first, second = session("foo"), session("foo")
        registry.add(first)
        registry.add(second)
        self.assertIs(registry.local_session("foo"), second)
        second.connection_lost(Failure(ConnectionLost()))
        self.assertIs(registry.local_session("foo"), first)

    def test_replaced_session_passed_over(self):
        """A session a newer one of its owner replaced gets no more dials (it only drains)."""
        registry = SessionRegistry()
        old, new = session("foo"), session("foo")
        registry.add(old)
        registry.add(new)
        old.open_stream("tcp", "127.0.0.1:1")  # something to drain: it stays open
        old.supersede()
        self.assertFalse(old.closed)
        self.assertIs(registry.local_session("foo"), new)

    def test_peer_lowest_id_then_oldest(self):
        """Through peers: the lowest peer id that announced the client, its oldest session."""
        registry = SessionRegistry()
        b, a1, a2 = session("B", peer=True), session("A", peer=True), session("A", peer=True)
        for s in (b, a1, a2):
            registry.add(s)
            s.remote_clients["foo"] = {1}
        self.assertIs(registry.peer_session_for("foo"), a1)
        a1.connection_lost(Failure(ConnectionLost()))
        self.assertIs(registry.peer_session_for("foo"), a2)
        self.assertIsNone(registry.local_session("foo"))
        self.assertEqual(registry.reachable_clients(), ["foo"])
        self.assertEqual(registry.clients(), [])

    def test_failing_observer_does_not_stop_others(self):
        """An observer that raises is logged; the others still hear, and the add stands."""
        registry = SessionRegistry()
        heard = []

        class Broken:
            def session_added(self, s):
                raise ValueError("boom")

        class Good:
            def session_added(self, s):
                heard.append(s)

        registry.observe(Broken())
        registry.observe(Good())
        s = session("foo")
        registry.add(s)
        self.assertEqual(heard, [s])
        self.assertIs(registry.local_session("foo"), s)
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
