"""
The two lines a tunnel makes in the log: one when it comes up, one when it
drops (with the reason and how long it lived) -- on the server for each
client session and peer link, on the client for each tunnel.  And on the
dialing side, one line for each attempt that failed: why, and when the
next one is (L{link_retry}).

Each is a twisted.logger event with fields, so that C{--log-format json}
gives collectors C{client_key} (or C{peer}), C{session_id},
C{remote_addr}/C{url}, C{reason} and C{lived} (seconds) to query, and the
text log a sentence.  Peer-supplied text is escaped and cut
(L{remotedialer.tunnel._logtext}); secrets never reach these lines.
"""

from __future__ import annotations

from twisted.logger import Logger

from remotedialer.protocol._text import duration, printable, public_url
from remotedialer.tunnel._session import Session

__all__ = ["link_down", "link_retry", "link_up", "tunnel_down", "tunnel_up"]


def _who(session: Session) -> dict[str, object]:
    """C{kind}, and the far end's name as C{peer} (a peer server) or C{client_key}."""
    if session.is_peer:
        return {"kind": "peer", "peer": printable(session.client_key)}
    return {"kind": "client", "client_key": printable(session.client_key)}


def _lived(session: Session) -> float:
    return round(max(session.clock.seconds() - session.opened_at, 0.0), 3)


def tunnel_up(log: Logger, session: Session) -> None:
    """The server accepted a tunnel (a client's, or a peer's link in)."""
    fields = _who(session)
    key = "peer" if session.is_peer else "client_key"
    log.info(f"{{kind}} {{{key}}} session {{session_id}} up from {{remote_addr}}",
             session_id=session.session_key, remote_addr=session.remote_addr or "?", **fields)


def tunnel_down(log: Logger, session: Session) -> None:
    """A tunnel the server accepted is gone."""
    fields = _who(session)
    key = "peer" if session.is_peer else "client_key"
    lived = _lived(session)
    log.info(f"{{kind}} {{{key}}} session {{session_id}} from {{remote_addr}} down after {{lived_text}}: "
             "{reason}", session_id=session.session_key, remote_addr=session.remote_addr or "?",
             lived=lived, lived_text=duration(lived), reason=session.end_reason or "closed", **fields)


def link_up(log: Logger, session: Session, url: str, peer: str | None = None) -> None:
    """
    Our dialed tunnel (a client's, or a server's link to a peer) opened.
    No session id: the dialing side's is its own, not the one the far
    side logs, and would only mislead a reader matching the two logs.
    """
    if peer is None:
        log.info("tunnel to {url} up (client {client_key})", url=public_url(url),
                 client_key=printable(session.client_key))
    else:
        log.info("peer {peer}: link to {url} up", url=public_url(url), peer=peer)


def link_down(log: Logger, session: Session, url: str, peer: str | None = None) -> None:
    """Our dialed tunnel is gone (it is redialed while the service runs)."""
    lived = _lived(session)
    reason = session.end_reason or "closed"
    if peer is None:
        log.info("tunnel to {url} down after {lived_text}: {reason}", url=public_url(url), lived=lived,
                 lived_text=duration(lived), reason=reason, client_key=printable(session.client_key))
    else:
        log.info("peer {peer}: link to {url} down after {lived_text}: {reason}", url=public_url(url),
                 peer=peer, lived=lived, lived_text=duration(lived), reason=reason)


def link_retry(log: Logger, url: str, reason: str, wait: float, *, peer: str | None = None,
               client_key: str | None = None, next_url: str | None = None) -> None:
    """
    An attempt to open our dialed tunnel to C{url} failed for C{reason} (one
    printable line); the next is in C{wait} seconds (to C{next_url}, when
    failing over to another server).
    """
    fields = {"url": public_url(url), "reason": reason, "retry_in": round(wait, 1),
              "wait_text": duration(wait)}
    if next_url is not None and next_url != url:
        fields["next_url"] = public_url(next_url)
        then = "trying {next_url} in {wait_text}"
    else:
        then = "retrying in {wait_text}"
    if peer is None:
        log.warn("tunnel to {url} failed: {reason}; " + then, client_key=printable(client_key or ""),
                 **fields)
    else:
        log.warn("peer {peer}: link to {url} failed: {reason}; " + then, peer=peer, **fields)
