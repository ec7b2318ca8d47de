"""
Which sessions a server holds, and the routing rule for dials.

Routing (docs/protocol.md sections 2 and 5): a client key is reached through
its oldest live local session, as Go does -- unless that session has gone
quiet: a client pings every 5 s, so a session not heard from for
C{fresh_for} seconds (C{FRESH_FOR}, three Go ping intervals, unless the
server says otherwise) while a newer one of the same key is heard from is
most likely half-open (the client reconnected after a network blip), and
the newer one gets the dials at once instead of after the idle timeout.
Failing a local session, a peer session that announced the key -- the peer
with the lowest peer id, and of its sessions the oldest -- so every server
picks the same route for the same state.  Peer sessions' clients are never
offered as local ones, so a dial cannot loop between peers.
"""

from __future__ import annotations

from twisted.logger import Logger

from remotedialer._interfaces import ISessionObserver
from remotedialer._session import Session

#: A session not heard from for this long, while another of its key is,
#: is passed over (three of Go's 5 s ping intervals).
FRESH_FOR = 15.0


class SessionRegistry:
    """Local client sessions and peer sessions, each in order of arrival."""

    log = Logger()

    def __init__(self, fresh_for: float = FRESH_FOR) -> None:
        self._fresh_for = fresh_for
        self._clients: dict[str, list[Session]] = {}
        self._peers: dict[str, list[Session]] = {}
        self._observers: list[ISessionObserver] = []

    def observe(self, observer: ISessionObserver) -> None:
        """Tell C{observer} of every local client session added or removed."""
        self._observers.append(observer)

    def unobserve(self, observer: ISessionObserver) -> None:
        self._observers.remove(observer)

    def add(self, session: Session) -> None:
        table = self._peers if session.is_peer else self._clients
        table.setdefault(session.client_key, []).append(session)
        if not session.is_peer:
            self._notify("session_added", session)

    def remove(self, session: Session) -> None:
        table = self._peers if session.is_peer else self._clients
        sessions = table.get(session.client_key, [])
        if session not in sessions:
            return
        sessions.remove(session)
        if not sessions:
            del table[session.client_key]
        if not session.is_peer:
            self._notify("session_removed", session)

    def _notify(self, event: str, session: Session) -> None:
        """One observer failing must not keep the others (or the caller) from their work."""
        for observer in list(self._observers):
            try:
                getattr(observer, event)(session)
            except Exception:
                self.log.failure("{observer} failed on {event}", observer=observer, event=event)

    def local_session(self, client_key: str) -> Session | None:
        """
        The oldest live session of C{client_key} that was heard from lately;
        if none was, the one heard from last (see module docstring).
        """
        live = [s for s in self._clients.get(client_key, ()) if not s.closed and not s.superseded]
        if len(live) <= 1:
            return live[0] if live else None
        now = live[0].clock.seconds()
        for session in live:
            if now - session.last_heard <= self._fresh_for:
                return session
        return max(live, key=lambda s: s.last_heard)

    def peer_session_for(self, client_key: str) -> Session | None:
        for peer_id in sorted(self._peers):
            for session in self._peers[peer_id]:
                if not session.closed and client_key in session.remote_clients:
                    return session
        return None

    def local_sessions_of(self, client_key: str) -> list[Session]:
        """The local sessions of C{client_key}, oldest first."""
        return list(self._clients.get(client_key, ()))

    def local_sessions(self) -> list[Session]:
        return [s for sessions in self._clients.values() for s in sessions]

    def peer_sessions(self) -> list[Session]:
        return [s for sessions in self._peers.values() for s in sessions]

    def clients(self) -> list[str]:
        """Client keys with a local session."""
        return sorted(self._clients)

    def reachable_clients(self) -> list[str]:
        """Client keys reachable from here, locally or through a peer."""
        keys = set(self._clients)
        for session in self.peer_sessions():
            keys.update(session.remote_clients)
        return sorted(keys)
