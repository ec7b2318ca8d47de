"""
Which sessions a server holds, and the routing rule for dials.

Routing (docs/protocol.md sections 2 and 5): a client key is reached through
its newest live local session that is not replaced.  A new session of the
key's owner gets the dials at once; an older one that does not answer a
ping is replaced (a client that reconnected after a network blip leaves a
half-open session behind) and only drains, one that answers stays (two
processes of one client), so when the newest ends the next takes over.
Failing a local session, a peer session that announced the key -- the peer
with the lowest peer id, and of its sessions the oldest -- so every server
picks the same route for the same state.  Peer sessions' clients are never
offered as local ones, so a dial cannot loop between peers.
"""

from __future__ import annotations

from twisted.logger import Logger

from remotedialer.tunnel._interfaces import ISessionObserver
from remotedialer.tunnel._session import Session


class SessionRegistry:
    """Local client sessions and peer sessions, each in order of arrival."""

    log = Logger()

    def __init__(self) -> None:
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
        """The newest live session of C{client_key} not replaced by a newer one."""
        for session in reversed(self._clients.get(client_key, ())):
            if not session.closed and not session.superseded:
                return session
        return None

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
