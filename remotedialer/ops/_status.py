"""
What a server or a client is doing right now, as plain data (dicts, lists,
strings and numbers) for the admin endpoint's C{/status} JSON and its page.

Nothing secret is in it: no token, no header, and URLs lose any user
information and query.  Session keys are strings (they are 63-bit integers,
which JavaScript's numbers would round).  Times are the reactor's seconds
(Unix time on a real reactor), with C{now} to measure ages against.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from remotedialer.protocol._text import public_url
from remotedialer.tunnel._session import Session

if TYPE_CHECKING:
    from remotedialer.client._client import TunnelClient
    from remotedialer.client._link import WebSocketLink
    from remotedialer.server._server import Server

__all__ = ["client_status", "server_status", "session_status"]

#: Most announced client keys listed for one peer (the count is always there).
ANNOUNCED_LIMIT = 1000

Status = dict[str, Any]


def session_status(session: Session) -> Status:
    """One session: where from, since when, its streams and bytes."""
    flow = session.flow_summary()
    return {
        "session_key": str(session.session_key),
        "remote": session.remote_addr or None,
        "connected_since": session.opened_at,
        "streams": flow.streams,
        # We sent Pause: our reader is slow.  The far side paused our writes.
        "paused_streams": flow.paused_here,
        "paused_by_far_side": flow.paused_by_far_side,
        "buffered_bytes": flow.buffered_bytes,
        "pending_dials": session.pending_dials,
        "bytes_sent": session.bytes_sent,
        "bytes_received": session.bytes_received,
        "replaced": session.superseded,
    }


def _sum(sessions: list[Status], field: str) -> int:
    return sum(int(s[field]) for s in sessions)


def _client_entry(client_key: str, sessions: list[Session]) -> Status:
    statuses = [session_status(s) for s in sessions if not s.closed]
    return {
        "client_key": client_key,
        "sessions": statuses,
        "streams": _sum(statuses, "streams"),
        "paused_streams": _sum(statuses, "paused_streams"),
        "bytes_sent": _sum(statuses, "bytes_sent"),
        "bytes_received": _sum(statuses, "bytes_received"),
    }


def _link_state(link: WebSocketLink) -> str:
    if link.session is not None:
        return "up"
    return "connecting" if link.running else "stopped"


def server_status(server: Server, limit: int | None = None) -> Status:
    """
    C{server}'s clients (with their sessions) and peers (with their links
    and the clients they announced).  With C{limit}, only that many
    clients, the busiest first (most streams, then most bytes);
    C{client_count} always counts them all.
    """
    registry = server.sessions
    clients = [_client_entry(key, registry.local_sessions_of(key)) for key in registry.clients()]
    if limit is not None and len(clients) > limit:
        clients.sort(key=lambda c: (-c["streams"], -(c["bytes_sent"] + c["bytes_received"]), c["client_key"]))
        clients = sorted(clients[:limit], key=lambda c: str(c["client_key"]))
    incoming: dict[str, list[Session]] = {}
    for session in registry.peer_sessions():
        if not session.closed:
            incoming.setdefault(session.client_key, []).append(session)
    peers = []
    for peer_id in sorted(set(server.peers) | set(incoming)):
        link = server.peer_link(peer_id)
        sessions = incoming.get(peer_id, [])
        announced = sorted({key for s in sessions for key in s.remote_clients})
        peers.append({
            "peer_id": peer_id,
            "url": public_url(link.url) if link is not None else None,
            "link": _link_state(link) if link is not None else "not configured",
            "link_since": link.session.opened_at if link is not None and link.session is not None else None,
            "link_attempts": link.attempts if link is not None else 0,
            "link_session": session_status(link.session) if link is not None and link.session else None,
            "incoming_sessions": [session_status(s) for s in sessions],
            "announced_clients": announced[:ANNOUNCED_LIMIT],
            "announced_client_count": len(announced),
        })
    return {
        "role": "server",
        "now": server.reactor.seconds(),
        "peer_id": server.peer_id,
        "draining": server.draining,
        "client_count": len(registry.clients()),
        "clients": clients,
        "peers": peers,
    }


def client_status(client: TunnelClient) -> Status:
    """C{client}'s tunnel: its state, its server, since when, its streams."""
    session = client.session
    if client.ready:
        state = "connected"
    elif session is not None:
        state = "opening"
    else:
        state = "connecting" if client.running else "stopped"
    return {
        "role": "client",
        "now": client.reactor.seconds(),
        "client_key": session.client_key if session is not None else client.client_key,
        "tunnel": {
            "state": state,
            "url": public_url(client.url),
            "since": session.opened_at if session is not None else None,
            "attempts": client.attempts,
            "opened": client.opened,
            "session": session_status(session) if session is not None else None,
        },
    }
